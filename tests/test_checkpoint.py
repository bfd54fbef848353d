"""Weights: our format round trip, every foreign layout, and files that must be refused."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

import pspnet
from golden import deterministic_images, fill_deterministic, to_semseg_layout
from layouts import to_mit, to_mmseg, to_torchvision_backbone
from pspnet.checkpoint import (
    CheckpointError,
    WeightsMeta,
    detect_layout,
    load_backbone_weights,
    load_model,
    save_weights,
)

X = deterministic_images((1, 3, 41, 57), seed=3)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)["out"]


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


def test_semseg_layout(tmp_path: Path) -> None:
    model = pspnet.create_model("pspnet50", 4)
    sd = fill_deterministic(model, 2)
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": to_semseg_layout(sd), "optimizer": {}}, path)
    assert detect_layout(torch.load(path, weights_only=True)["state_dict"]) == "semseg"
    _roundtrip_foreign(tmp_path, path, model)


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
    with pytest.raises(CheckpointError, match="does not exist"):
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
