"""Weights: our format round trip, every foreign layout, and files that must be refused."""

from __future__ import annotations

import json
import pickle
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

import pspnet
from golden import deterministic_images, fill_deterministic, to_semseg_layout
from layouts import to_mit, to_mmseg, to_torchvision_backbone
from pspnet.checkpoint.training import TRAIN_CHECKPOINT_FORMAT
from pspnet.checkpoint import (
    CheckpointError,
    WeightsMeta,
    detect_file_kind,
    detect_layout,
    load_backbone_weights,
    load_model,
    save_weights,
)
from pspnet.config import Config, Preprocessing

X = deterministic_images((1, 3, 41, 57), seed=3)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)["out"]


@pytest.mark.slow
def test_create_save_load_same_logits(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 3, output_stride=16, bins=(1, 3), head_channels=64)
    fill_deterministic(model, 1)
    meta = WeightsMeta(model.config, classes=("a", "b", "c"), palette=((1, 2, 3),) * 3)
    save_weights(model, tmp_path / "w", meta)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "w")
    assert not loaded.training
    assert loaded.meta.classes == ("a", "b", "c")
    assert torch.equal(_logits(model), _logits(loaded))
    # a path to the .safetensors file itself works too
    assert torch.equal(_logits(loaded), _logits(load_model(tmp_path / "w" / "model.safetensors")))


def test_weight_dir_checks_shapes_and_names_the_key(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 3)
    save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["model"]["num_classes"] = 4
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"head.classifier.weight \(file \(3, 512, 1, 1\), model \(4"):
        load_model(tmp_path / "w")
    with pytest.raises(CheckpointError, match="--num-classes"):
        load_model(tmp_path / "w", num_classes=7)


def test_class_list_must_fit(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 3)
    with pytest.raises(ValueError, match="lists 2 names but the model has 3"):
        WeightsMeta(model.config, classes=("a", "b"))


def _roundtrip_foreign(tmp_path: Path, foreign: Path, model: torch.nn.Module) -> None:
    direct = load_model(foreign)
    assert torch.equal(_logits(direct), _logits(model))
    out = pspnet.convert(foreign, tmp_path / "converted")
    assert torch.equal(_logits(load_model(out)), _logits(direct))


@pytest.mark.slow
def test_semseg_layout(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet50", 4)
    sd = fill_deterministic(model, 2)
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": to_semseg_layout(sd), "optimizer": {}}, path)
    assert detect_layout(torch.load(path, weights_only=True)["state_dict"]) == "semseg"
    _roundtrip_foreign(tmp_path, path, model)


@pytest.mark.slow
def test_mmseg_layout_v1c_stem_and_meta(tmp_path: Path) -> None:
    model = pspnet.create_model(
        "pspnet50", 3, stem_width=32, contract_dilation=True, align_corners=False
    )
    sd = fill_deterministic(model, 3)
    path = tmp_path / "pspnet_r50-d8.pth"
    mm = to_mmseg(sd)
    assert "backbone.stem.0.weight" in mm and "decode_head.conv_seg.weight" in mm
    torch.save({"meta": {"CLASSES": ["x", "y", "z"]}, "state_dict": mm}, path)
    _roundtrip_foreign(tmp_path, path, model)
    loaded = load_model(tmp_path / "converted")
    assert loaded.config.stem_width == 32 and loaded.config.contract_dilation
    assert not loaded.config.align_corners and loaded.meta.classes == ("x", "y", "z")


@pytest.mark.slow
def test_mit_semseg_encoder_decoder_pair(tmp_path: Path) -> None:
    model = pspnet.create_model(
        "pspnet50", 6, contract_dilation=True, align_corners=False, aux_channels=512
    )
    sd = fill_deterministic(model, 4)
    enc, dec = to_mit(sd)
    d = tmp_path / "ade20k-resnet50dilated-ppm_deepsup"
    d.mkdir()
    torch.save(enc, d / "encoder_epoch_20.pth")
    torch.save(dec, d / "decoder_epoch_20.pth")
    _roundtrip_foreign(tmp_path, d, model)
    assert torch.equal(_logits(load_model(d / "decoder_epoch_20.pth")), _logits(model))


def test_torchvision_backbone_init(tmp_path: Path) -> None:
    src = pspnet.create_model("pspnet_r18", 2)
    sd = fill_deterministic(src, 5)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(to_torchvision_backbone(sd), path)
    target = pspnet.create_model("pspnet_r18", 7)
    load_backbone_weights(target, path)
    for k, v in target.state_dict().items():
        if k.startswith("backbone.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(v, sd[k]), k
    with pytest.raises(CheckpointError, match="deep-stem"):
        load_backbone_weights(pspnet.create_model("pspnet50", 2), path)
    with pytest.raises(CheckpointError, match="ImageNet backbone"):
        load_model(path)


class _Evil:
    def __reduce__(self):  # noqa: D105
        return (subprocess.call, (["touch", str(Path("/tmp") / "pspnet-pwned")],))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = Path("/tmp/pspnet-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil()}}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


def test_truncated_and_empty_files(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 2)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": to_semseg_layout(model.state_dict())}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "cut.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match=r"nope.pth does not exist \(expected a pspnet"):
        load_model(tmp_path / "nope.pth")
    save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    st = tmp_path / "w" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "w")


def test_foreign_num_classes_mismatch_names_the_key(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 2)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": to_semseg_layout(model.state_dict())}, path)
    with pytest.raises(CheckpointError, match="head.classifier.weight"):
        load_model(path, num_classes=9)


def test_no_unsafe_torch_load_anywhere() -> None:
    needle = "weights_only" + "=False"  # spelled in two parts so this file does not match itself
    src = Path(pspnet.__file__).parent
    offenders = [str(p) for p in src.rglob("*.py") if needle in p.read_text().replace(" ", "")]
    assert not offenders


# --------------------------------------------------------------------------------------------
# Training checkpoints (WORK_DIR/checkpoints/last.pt)


def _train_checkpoint(path: Path, cfg: Config, model: torch.nn.Module, **extra: object) -> Path:
    """A checkpoint laid out as pspnet.engine.train's ``_checkpoint`` writes it."""
    state = {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "version": 1,
        "iteration": 7,
        "epoch": 1,
        "epoch_step": 2,
        "steps_per_epoch": 5,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "schedule": {"it": 7},
        "plan": {"next_replan": -1, "val_every": -1},
        "rng": [{"torch": torch.get_rng_state()}],
        "elapsed_s": 1.5,
        "best_miou": -1.0,
        "best_iter": -1,
        "last_val_iter": -1,
        "world_size": 1,
        "config": cfg.to_dict(),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _trained(cfg: Config) -> torch.nn.Module:
    model = pspnet.create_model(cfg.model.arch, cfg.model.num_classes, **{
        k: v for k, v in Config.to_dict(cfg)["model"].items() if k not in ("arch", "num_classes")
    })
    fill_deterministic(model, 7)
    return model


def test_training_checkpoint_is_rebuilt_from_its_stored_config(tmp_path: Path) -> None:
    from pspnet.checkpoint.training import load_checkpoint

    cfg = Config.from_dict({
        "model": {"arch": "pspnet_r18", "num_classes": 3, "output_stride": 16,
                  "head_channels": 48, "aux_channels": 40},
        "preprocess": {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]},
        "data": {"ignore_index": 250},
    })
    model = _trained(cfg)
    path = _train_checkpoint(tmp_path / "work" / "checkpoints" / "last.pt", cfg, model)
    load_checkpoint(path)  # the fixture is a valid training checkpoint for the engine too

    loaded = load_model(path)
    assert loaded.config == cfg.model
    assert loaded.config.output_stride == 16 and loaded.config.head_channels == 48
    assert torch.equal(_logits(loaded), _logits(model))
    meta = loaded.meta
    assert meta.model == cfg.model and meta.classes is None and meta.palette is None
    assert meta.preprocess == Preprocessing(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert meta.ignore_index == 250 and "iteration 7" in meta.source

    # the stored config is the model: contradicting flags and option overrides are refused
    with pytest.raises(CheckpointError, match="holds a pspnet_r18, not a pspnet50"):
        load_model(path, arch="pspnet50")
    with pytest.raises(CheckpointError, match="has 3 classes, not 5"):
        load_model(path, num_classes=5)
    with pytest.raises(CheckpointError, match=r"training checkpoint.*\(output_stride\)"):
        load_model(path, output_stride=8)

    # and convert turns it into a weight directory with the same model
    out = pspnet.convert(path, tmp_path / "converted")
    again = load_model(out)
    assert again.config == cfg.model and again.meta.ignore_index == 250
    assert torch.equal(_logits(again), _logits(model))


def test_training_checkpoint_class_names_when_recorded(tmp_path: Path) -> None:
    from pspnet.data.datasets import get_dataset_spec

    # a registered data set names the classes (training labels its weights with them)
    cfg = Config.from_dict({"model": {"arch": "pspnet_r18", "num_classes": 11,
                                      "output_stride": 16}, "data": {"dataset": "camvid"}})
    model = _trained(cfg)
    path = _train_checkpoint(tmp_path / "camvid.pt", cfg, model)
    assert load_model(path).meta.classes == get_dataset_spec("camvid").class_names

    # names and colours stored in the checkpoint itself win
    cfg3 = Config.from_dict({"model": {"arch": "pspnet_r18", "num_classes": 3,
                                       "output_stride": 16}})
    model3 = _trained(cfg3)
    path3 = _train_checkpoint(tmp_path / "named.pt", cfg3, model3, classes=["a", "b", "c"],
                              palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    meta = load_model(path3).meta
    assert meta.classes == ("a", "b", "c")
    assert meta.palette == ((1, 2, 3), (4, 5, 6), (7, 8, 9))

    # a class-names file is only referenced by path in the config: not stored, so no names
    cfg_file = Config.from_dict({"model": {"arch": "pspnet_r18", "num_classes": 3,
                                           "output_stride": 16},
                                 "data": {"class_names": str(tmp_path / "classes.txt")}})
    path_file = _train_checkpoint(tmp_path / "file.pt", cfg_file, model3)
    assert load_model(path_file).meta.classes is None


def test_training_checkpoint_from_a_newer_pspnet_is_refused(tmp_path: Path) -> None:
    cfg = Config.from_dict({"model": {"arch": "pspnet_r18", "num_classes": 3}})
    path = _train_checkpoint(tmp_path / "last.pt", cfg, _trained(cfg), version=99)
    with pytest.raises(CheckpointError, match="version 99; this pspnet reads up to 1"):
        load_model(path)


@pytest.mark.parametrize("damage", ["no_optimizer", "no_rng", "newer", "empty_model"])
def test_a_damaged_training_checkpoint_gives_one_error_through_resume_and_load_model(
        tmp_path: Path, damage: str) -> None:
    """Resume (load_checkpoint) and load_model share one validation: the same message."""
    from pspnet.checkpoint.training import load_checkpoint

    cfg = Config.from_dict({"model": {"arch": "pspnet_r18", "num_classes": 3}})
    path = _train_checkpoint(tmp_path / "last.pt", cfg, _trained(cfg))
    state = torch.load(path, weights_only=True)
    if damage == "no_optimizer":
        del state["optimizer"]
    elif damage == "no_rng":
        del state["rng"]
    elif damage == "newer":
        state["version"] = 99
    else:
        state["model"] = {}
    torch.save(state, path)
    with pytest.raises(CheckpointError) as via_resume:
        load_checkpoint(path)
    with pytest.raises(CheckpointError) as via_load:
        load_model(path)
    assert str(via_resume.value) == str(via_load.value)
    assert str(path) in str(via_load.value)


# --------------------------------------------------------------------------------------------
# Paths and file kinds


@pytest.mark.slow
def test_safetensors_path_gets_the_same_options_as_its_directory(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 3, output_stride=16, bins=(1, 3), head_channels=64)
    fill_deterministic(model, 8)
    save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    by_dir = load_model(tmp_path / "w", precision="bf16")
    by_file = load_model(tmp_path / "w" / "model.safetensors", precision="bf16")
    assert type(by_file) is type(by_dir)
    assert {p.dtype for p in by_dir.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in by_file.parameters()} == {torch.bfloat16}
    assert by_file.meta == by_dir.meta
    assert torch.equal(_logits(by_file), _logits(by_dir))
    # options and checks reach the file path too
    with pytest.raises(CheckpointError, match=r"cannot be overridden \(align_corners\)"):
        load_model(tmp_path / "w" / "model.safetensors", align_corners=False)
    with pytest.raises(CheckpointError, match="not 4 \\(--num-classes\\)"):
        load_model(tmp_path / "w" / "model.safetensors", num_classes=4)


def test_missing_weights_path_says_what_was_expected(tmp_path: Path) -> None:
    for missing in (tmp_path / "runs" / "best", tmp_path / "model.onnx"):
        with pytest.raises(CheckpointError) as err:
            load_model(missing)
        msg = str(err.value)
        assert msg.startswith(f"{missing} does not exist (expected a pspnet weight directory")
        assert "checkpoints/last.pt" in msg and ".pth/.pt checkpoint" in msg


def _onnx_bytes() -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return onnx.helper.make_model(graph, producer_name="pytorch").SerializeToString()


def test_non_checkpoint_files_say_what_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pspnet.cli import main

    data = _onnx_bytes()
    for name in ("model.onnx", "model.bin"):  # recognised by content, not only by suffix
        path = tmp_path / name
        path.write_bytes(data)
        assert detect_file_kind(path) == "onnx"
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        msg = str(err.value)
        assert msg.startswith(f"{path} is not a PyTorch checkpoint (it looks like an ONNX model")
        assert f"--weights {path}" in msg and "ONNX Runtime" in msg
        assert "refusing" not in msg and "unpickl" not in msg

    ts = tmp_path / "scripted.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        torch.jit.script(torch.nn.Conv2d(1, 1, 1)).save(str(ts))
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(it is a TorchScript"):
        load_model(ts)

    txt = tmp_path / "classes.txt"
    txt.write_text("0\tsky\t128 128 128\n1\troad\t128 64 128\n")
    assert detect_file_kind(txt) == "text"
    with pytest.raises(CheckpointError) as err:
        load_model(txt)
    msg = str(err.value)
    assert msg.startswith(f"{txt} is not a checkpoint or weight directory (it is a text file")
    assert "refusing" not in msg and "unpickl" not in msg

    # `pspnet info` goes through the same check and prints it as one error line
    assert main(["info", str(txt)]) == 2
    err_out = capsys.readouterr().err
    assert "is not a checkpoint or weight directory" in err_out and "Traceback" not in err_out

    # a real torch.save file is still recognised as one
    good = tmp_path / "good.pth"
    torch.save({"x": torch.ones(1)}, good)
    assert detect_file_kind(good) == "torch"


def test_convert_of_a_weight_directory_says_it_needs_none(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 3)
    save_weights(model, tmp_path / "w", WeightsMeta(model.config))
    for src in (tmp_path / "w", tmp_path / "w" / "model.safetensors"):
        with pytest.raises(CheckpointError, match="already a pspnet weight directory.*needs no "
                                                  "conversion"):
            pspnet.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_classes_file_keeps_camvid_colours(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet_r18", 3)
    src = tmp_path / "train_epoch_5.pth"
    torch.save({"state_dict": to_semseg_layout(model.state_dict())}, src)
    camvid = tmp_path / "classes.txt"
    camvid.write_text("# CamVid\n0\tSky\t128 128 128\n1\tRoad\t128 64 128\n2\tCar\t64 0 128\n"
                      "255\tVoid\t0 0 0\n")
    out = pspnet.convert(src, tmp_path / "w", classes_file=camvid)
    loaded = load_model(out)
    assert loaded.meta.classes == ("Sky", "Road", "Car")
    assert loaded.meta.palette == ((128, 128, 128), (128, 64, 128), (64, 0, 128))
    doc = json.loads((out / "config.json").read_text())
    assert doc["palette"] == [[128, 128, 128], [128, 64, 128], [64, 0, 128]]

    names = tmp_path / "names.txt"
    names.write_text("sky\nroad\ncar\n")
    meta = load_model(pspnet.convert(src, tmp_path / "w2", classes_file=names)).meta
    assert meta.classes == ("sky", "road", "car") and meta.palette is None

    names.write_text("sky\nroad\n")
    with pytest.raises(CheckpointError, match=r"names.txt lists 2 classes but the model"):
        pspnet.convert(src, tmp_path / "w3", classes_file=names)
