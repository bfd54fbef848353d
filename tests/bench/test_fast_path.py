"""bench/fast_path.py: every inference variant scored against fp32 on a tiny model and data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_bench_script, one_torch_thread
import torch
from camvid_fake import CLASSES, COLOURS, make_fake_camvid

from pspnet.checkpoint import WeightsMeta, load_model, save_weights
from pspnet.data.datasets import SegmentationDataset, camvid_samples
from pspnet.engine.evaluate import evaluate_model
from pspnet.models.registry import create_model



@pytest.fixture(scope="module")
def fp_mod():
    for _ in one_torch_thread():
        yield from load_bench_script("fast_path.py", "bench_fast_path")


@pytest.fixture()
def setup(fp_mod, tmp_path, monkeypatch):
    monkeypatch.setattr(fp_mod, "git_commit", lambda *_: "abc1234")
    data = make_fake_camvid(tmp_path / "camvid", n_test=3)
    monkeypatch.setenv("PSPNET_CAMVID", str(data))
    torch.manual_seed(0)
    model = create_model("pspnet_r18", len(CLASSES), head_channels=16, aux_channels=16,
                         ppm_channels=8, output_stride=16)
    with torch.no_grad():  # trained-looking BN statistics, so folding has work to do
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "best"
    save_weights(model.eval(), weights, WeightsMeta(model=model.config, classes=CLASSES,
                                                    palette=COLOURS, source="tiny test model"))
    return data, weights


@pytest.mark.slow
def test_variants_scored_against_fp32_on_camvid_test(fp_mod, setup, tmp_path, capsys):
    data, weights = setup
    out = tmp_path / "out" / "fast_path"
    assert fp_mod.main(["--weights", str(weights), "--out", str(out), "-q"]) == 0
    doc = json.loads(Path(f"{out}.json").read_text())
    md = Path(f"{out}.md").read_text()
    assert doc["images"] == doc["split_images"] == 3 and doc["limit"] is None
    assert list(doc["variants"]) == ["fp32-eager", "fp32-folded-cl", "bf16"]
    ref = doc["variants"]["fp32-eager"]
    assert ref["delta_points"] == 0 and ref["agreement"] == 1.0
    # The reference is exactly what `pspnet evaluate` computes on the same images.
    ds = SegmentationDataset(camvid_samples(data, "test"), len(CLASSES))
    expected = evaluate_model(load_model(weights), ds, num_classes=len(CLASSES), progress=False)
    assert ref["miou"] == pytest.approx(float(expected.miou))
    for name, r in doc["variants"].items():
        assert 0 <= r["miou"] <= 1 and 0 <= r["agreement"] <= 1 and r["sec_per_image"] > 0
        assert r["delta_points"] == pytest.approx(100 * (r["miou"] - ref["miou"]))
        assert r["meets_target"] == (abs(r["delta_points"]) <= 0.3)
        assert f"`{name}`" in md and f"{100 * r['miou']:.2f}" in md
    # Folding is exact up to float rounding: (nearly) every pixel keeps its label.
    assert doc["variants"]["fp32-folded-cl"]["agreement"] > 0.99
    native = doc["machine"]["native_bf16"]
    assert doc["variants"]["bf16"]["bf16_emulated"] is (not native)
    assert ("not a speed claim" in md) is (not native)
    assert doc["verdict"] in md and "abc1234" in md and "python bench/fast_path.py" in md
    assert "Smoke test" not in md
    assert "verdict:" in capsys.readouterr().out


def test_list_file_limit_and_errors(fp_mod, setup, tmp_path, capsys):
    data, weights = setup
    lst = tmp_path / "pairs.txt"
    names = (data / "test.txt").read_text().split()
    lst.write_text("".join(f"images/test/{n}.png labels/test/{n}.png\n" for n in names))
    out = tmp_path / "smoke"
    rc = fp_mod.main(["--weights", str(weights), "--data-root", str(data), "--list", str(lst),
                      "--variants", "fp32-folded-cl", "--limit", "2", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(Path(f"{out}.json").read_text())
    assert doc["images"] == 2 and doc["split_images"] == 3
    assert list(doc["variants"]) == ["fp32-eager", "fp32-folded-cl"]
    assert "Smoke test on 2 of 3 images" in Path(f"{out}.md").read_text()

    capsys.readouterr()
    assert fp_mod.main(["--weights", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert fp_mod.main(["--weights", str(weights), "--list", str(lst), "--out", str(out)]) == 2
    assert "--data-root and --list" in capsys.readouterr().err
    assert fp_mod.main(["--weights", str(weights), "--variants", "int8", "--out", str(out)]) == 2
    assert "int8" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_speed_mode_times_each_path_in_the_asked_precision(fp_mod, tmp_path, monkeypatch,
                                                           precision):
    # The wiring, not the speed: torch.compile is the identity here (compiling costs minutes).
    monkeypatch.setattr(fp_mod, "git_commit", lambda *_: "abc1234")
    monkeypatch.setattr(torch, "compile", lambda m, **_: m)
    fns = fp_mod.speed_fns("pspnet_r18", 33, 3, tmp_path / "w", precision)
    with torch.inference_mode():
        labels, logits, network = fns["labels"](), fns["logits"](), fns["network"]()
    assert logits.dtype == torch.float32 and logits.is_contiguous()
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert network.dtype == want  # the network alone runs in the asked precision
    assert torch.equal(labels, fns["before"]())  # the labels path gives the old path's labels
    assert torch.equal(labels, fns["full_labels"]())
    out = tmp_path / "speed"
    argv = ["--speed", "--arch", "pspnet_r18", "--size", "33", "--classes", "3", "--repeats",
            "1", "--precision", precision, "--out", str(out)]
    assert fp_mod.main(argv) == 0
    doc = json.loads(Path(f"{out}.json").read_text())
    assert doc["precision"] == precision and set(doc["variants"]) == set(fns)
    assert f"batch 1, {precision} (eager: fp32)" in Path(f"{out}.md").read_text()
