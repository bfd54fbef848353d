"""Fine-tuning: a new model initialised from every layout pspnet reads, to another class count."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import pspnet
from golden import to_semseg_layout
from layouts import to_mit, to_mmseg, to_torchvision_backbone
from pspnet.checkpoint import CheckpointError, WeightsMeta, save_weights
from pspnet.checkpoint.init_weights import init_from, read_init_source, with_init_model
from pspnet.checkpoint.training import TRAIN_CHECKPOINT_FORMAT
from pspnet.config import Config, ConfigError

CLASSIFIERS = ("head.classifier.weight", "head.classifier.bias",
               "aux_head.classifier.weight", "aux_head.classifier.bias")
SMALL = {"head_channels": 16, "aux_channels": 8, "ppm_channels": 4}


def _source(arch: str = "pspnet_r18", num_classes: int = 5, **options: object):
    """A model whose every tensor is set apart from any fresh initialisation, and its tensors."""
    model = pspnet.create_model(arch, num_classes, **{**SMALL, **options})
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():  # in (0.5, 1.5): positive BN variances too
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r18() -> tuple[torch.nn.Module, dict]:
    return _source()


def _fresh(arch: str, num_classes: int, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return pspnet.create_model(arch, num_classes, **{**SMALL, **options})


def _write(layout: str, tmp_path: Path, model: torch.nn.Module, sd: dict) -> Path:
    """``sd`` saved as ``layout`` writes it (the real key names of each project)."""
    if layout == "weights":
        return save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    path = tmp_path / f"{layout}.pth"
    if layout == "train":
        cfg = Config.from_dict({"model": {"arch": model.config.arch, "num_classes": 5, **SMALL}})
        state = {"format": TRAIN_CHECKPOINT_FORMAT, "version": 1, "iteration": 3,
                 "model": sd, "config": cfg.to_dict(), "world_size": 1}
        # the fields a training checkpoint must have, as the engine writes them
        state.update({"epoch": 0, "epoch_step": 3, "steps_per_epoch": 4, "optimizer": {},
                      "scaler": {}, "schedule": {}, "plan": {}, "rng": [{}], "elapsed_s": 1.0,
                      "best_miou": -1.0, "best_iter": -1, "last_val_iter": -1})
        torch.save(state, path)
    elif layout == "semseg":
        torch.save({"epoch": 50, "state_dict": to_semseg_layout(sd), "optimizer": {}}, path)
    elif layout == "mmseg":
        torch.save({"meta": {}, "state_dict": to_mmseg(sd)}, path)
    else:
        raise AssertionError(layout)
    return path


def _assert_fine_tuned(model: torch.nn.Module, fresh: torch.nn.Module, sd: dict, report) -> None:
    """Every tensor is the source's except the classifiers, which are the fresh model's."""
    assert {k for k, _, _ in report.reset} == set(CLASSIFIERS)
    assert not report.missing and not report.unused
    assert len(report.loaded) == report.total - len(CLASSIFIERS)
    fresh_sd = fresh.state_dict()
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        want = fresh_sd[k] if k in CLASSIFIERS else sd[k]
        assert torch.equal(v, want), k


@pytest.mark.parametrize("layout", ["weights", "train", "semseg", "mmseg"])
def test_fine_tune_from_each_layout_to_another_class_count(
    tmp_path: Path, layout: str, r18: tuple[torch.nn.Module, dict]
) -> None:
    path = _write(layout, tmp_path, *r18)
    model = _fresh("pspnet_r18", 2)
    fresh = copy.deepcopy(model)
    report = init_from(model, path)
    assert report.layout == {"weights": "pspnet", "train": "pspnet-train"}.get(layout, layout)
    _assert_fine_tuned(model, fresh, r18[1], report)
    text = "\n".join(report.lines())
    assert f"loaded {report.total - 4} of {report.total} tensors" in text
    assert "head.classifier.weight (file 5x16x1x1, model 2x16x1x1)" in text
    assert "missing in the file (left as initialised): none" in text


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["mit-semseg", "mmseg-v1c"])
def test_fine_tune_from_deep_stem_layouts(tmp_path: Path, layout: str) -> None:
    opts = {"align_corners": False, "contract_dilation": True, "stem_width": 8}
    src_model, sd = _source("pspnet50", **opts)
    if layout == "mit-semseg":
        enc, dec = to_mit(sd)
        path = tmp_path / "ade20k-resnet50dilated-ppm_deepsup"
        path.mkdir()
        torch.save(enc, path / "encoder_epoch_20.pth")
        torch.save(dec, path / "decoder_epoch_20.pth")
    else:
        path = tmp_path / "pspnet_r50-d8.pth"
        torch.save({"state_dict": to_mmseg(sd)}, path)
    src = read_init_source(path)
    assert src.model["arch"] == "pspnet50" and src.model["stem_width"] == 8
    model = _fresh("pspnet50", 3, **opts)
    _assert_fine_tuned(model, copy.deepcopy(model), sd, init_from(model, path))


def test_an_imagenet_backbone_initialises_the_backbone_only(
    tmp_path: Path, r18: tuple[torch.nn.Module, dict]
) -> None:
    sd = r18[1]
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(to_torchvision_backbone(sd), path)
    model = _fresh("pspnet_r18", 2)
    report = init_from(model, path)
    assert report.layout == "resnet" and not report.reset and not report.unused  # fc dropped
    assert all(k.startswith("backbone.") for k in report.loaded)
    assert report.missing and all(k.startswith(("head.", "aux_head.")) for k in report.missing)
    assert "missing in the file (left as initialised): " in report.lines()[2]
    assert read_init_source(path).model == {"arch": "pspnet_r18"}  # nothing about the head


def test_another_architecture_is_refused_naming_what_the_file_holds(tmp_path: Path) -> None:
    src_model, sd = _source("pspnet_r50")
    path = _write("mmseg", tmp_path, src_model, sd)
    with pytest.raises(CheckpointError) as err:
        init_from(_fresh("pspnet_r18", 2), path)
    msg = str(err.value)
    assert msg.startswith(f"train.init_weights (--init-weights) {path}: only ")
    assert "backbone tensors of the model (pspnet_r18) fit" in msg and "arch=pspnet_r50" in msg
    assert "differ in shape, e.g. backbone.layer1.0.conv1.weight: file 64x64x1x1, model 64x64x3x3" in msg
    assert "Leave --arch and the model.* options out" in msg


def test_an_export_is_refused_with_what_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="torchscript export.*weight directory"):
        init_from(_fresh("pspnet_r18", 2), path)


def test_the_architecture_follows_the_file_unless_the_config_sets_it(
    tmp_path: Path, r18: tuple[torch.nn.Module, dict]
) -> None:
    from pspnet.engine.run_config import build_config

    path = _write("mmseg", tmp_path, *r18)  # mmseg's conventions: align_corners False ...
    tree = {"model": {"num_classes": 2, "dropout": 0.2}, "train": {"init_weights": str(path)}}
    model = with_init_model(tree)["model"]
    assert model == {"arch": "pspnet_r18", "num_classes": 2, "dropout": 0.2, "use_ppm": True,
                     "aux": True, "align_corners": False, "contract_dilation": True, **SMALL}
    # a config that names another architecture keeps its own model
    other = {**tree, "model": {"arch": "pspnet_r34", "num_classes": 2}}
    assert with_init_model(other)["model"] == other["model"]
    cfg = build_config(num_classes=2, init_weights=str(path),
                       overrides=["train.device=cpu", "model.align_corners=true"])
    assert (cfg.model.arch, cfg.model.head_channels, cfg.model.ppm_channels) == ("pspnet_r18", 16, 4)
    assert cfg.model.align_corners and cfg.model.contract_dilation  # --set still wins
    assert cfg.model.output_stride == 16 and cfg.train.init_weights == str(path)


def test_a_weight_directory_gives_its_preprocessing_too(
    tmp_path: Path, r18: tuple[torch.nn.Module, dict]
) -> None:
    from pspnet.config import Preprocessing

    model = r18[0]
    pre = Preprocessing(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), channel_order="BGR")
    path = save_weights(model, tmp_path / "w", WeightsMeta(model.config, preprocess=pre))
    cfg = Config.from_dict(with_init_model({"model": {"num_classes": 2},
                                            "train": {"init_weights": str(path)}}))
    assert cfg.preprocess == pre and cfg.model.head_channels == 16


def test_init_weights_and_resume_are_exclusive() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"model": {"num_classes": 2},
                          "train": {"init_weights": "w", "resume": "auto"}})
    msg = str(err.value)
    assert msg.startswith("`train.init_weights` ('w') starts a new run from other weights")
    assert "give one of them (--init-weights or --resume)" in msg
    assert "--set train.init_weights=null --resume auto" in msg


def test_cli_refuses_init_weights_with_resume(capsys: pytest.CaptureFixture[str]) -> None:
    from pspnet.cli import main

    code = main(["train", "--num-classes", "2", "--init-weights", "w", "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: `train.init_weights` ('w') starts a new run")
