"""bench/recipe.py: pspnet train's defaults and the plain loop, trained and scored alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import load_bench_script
from camvid_fake import make_fake_camvid


@pytest.fixture(scope="module")
def recipe():
    yield from load_bench_script("recipe.py", "bench_recipe")


def test_variant_names_and_overrides(recipe) -> None:
    assert recipe._split_sets("model.output_stride=8,data.scale=[0.75,1.5]") == [
        "model.output_stride=8", "data.scale=[0.75,1.5]"]
    name = recipe.run_name("cli:model.output_stride=8,data.scale=[0.75,1.5]", 15, 2)
    assert name == "cli_output_stride=8_scale=0.75_1.5_15min_s2"
    train, score = recipe.commands("cli:optim.lr=0.02", Path("D"), Path("W/x"), 15, 1)
    assert train[train.index("--time-budget") + 1] == "15"
    assert train[-2:] == ["train.seed=1", "optim.lr=0.02"]  # the seed, then the sweep point
    assert score[score.index("--weights") + 1] == str(Path("W/x/run/final"))
    with pytest.raises(SystemExit, match="unknown variant"):
        recipe.commands("nope", Path("D"), Path("W/x"), 15, 1)


def test_what_ran_reads_the_runs_config(recipe, tmp_path: Path) -> None:
    import yaml

    run = tmp_path / "cli_x_30min_s0" / "run"
    run.mkdir(parents=True)
    cfg = {"model": {"output_stride": 16}, "data": {"crop_size": [360, 480], "scale": [0.75, 1.5],
           "rotate": [0, 0], "blur": False}, "optim": {"lr": 0.02, "head_lr_mult": 1.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rec = {"variant": "cli:x", "name": "cli_x_30min_s0"}
    assert recipe.recipe_of(rec, tmp_path) == ("stride 16, crop 360x480, lr 0.02, scale 0.75-1.5, "
                                               "head lr x1, no rotation or blur")
    cfg["optim"]["head_lr_mult"], cfg["data"]["blur"] = 10.0, True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert recipe.recipe_of(rec, tmp_path) == "stride 16, crop 360x480, lr 0.02, scale 0.75-1.5"
    cfg["data"].update(crop_size=[320, 320], finish_crop_size=[360, 480], finish_share=0.33)
    cfg["optim"]["weight_decay"] = 0.0005
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert recipe.recipe_of(rec, tmp_path) == (
        "stride 16, crop 320x320, lr 0.02, scale 0.75-1.5, weight decay 0.0005, "
        "the last 33% on 360x480")
    cfg["data"]["finish_output_stride"] = 8
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert recipe.recipe_of(rec, tmp_path).endswith("the last 33% on 360x480 at stride 8")
    cfg["train"] = {"batch_size": 4}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert recipe.recipe_of(rec, tmp_path).startswith("stride 16, crop 320x320, batch 4, lr 0.02,")
    assert recipe.recipe_of({"variant": "plain", "name": "p"}, tmp_path) == "plain loop"


@pytest.mark.slow
def test_runs_both_recipes_and_reports(recipe, tmp_path: Path) -> None:
    data = make_fake_camvid(tmp_path / "camvid", n_test=4, size=(40, 48))
    for sub in ("images", "labels"):  # a train split: the test images again
        shutil.copytree(data / sub / "test", data / sub / "train")
    work = tmp_path / "work"
    argv = ["run", "--minutes", "0.05", "--variants", "plain", "cli:train.batch_size=2",
            "--data", str(data), "--work-dir", str(work), "--parallel", "1"]
    assert recipe.main(argv) == 0
    recs = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in recs] == ["plain", "cli:train.batch_size=2"]
    for r in recs:
        assert 0 <= r["mIoU"] <= 1 and 0 <= r["pixel_acc"] <= 1 and r["steps"] >= 1
    assert any(c.startswith("data.crop_size") for c in recs[1]["chosen"])
    assert recipe.main(argv) == 0  # finished runs are not run again
    assert len((work / "results.jsonl").read_text().splitlines()) == 2
    assert recipe.main(["report", "--work-dir", str(work), "--out", str(tmp_path / "doc")]) == 0
    md = (tmp_path / "doc" / "sweep.md").read_text()
    assert "| `plain` | plain loop | 0.05 | 0 |" in md
    assert "| seed | test mIoU |" in md  # the column names the split scored
    assert (tmp_path / "doc" / "sweep.png").stat().st_size
    crop = next(c for c in recs[1]["chosen"] if c.startswith("data.crop_size"))
    h, w = crop.split("= ")[1].strip("[]").split(", ")  # what the run's own config says it ran
    ran = f"stride 16, crop {h}x{w}, batch 2, lr 0.02, scale 0.75-1.5"  # lr 0.02 below batch 8
    finish = next((c for c in recs[1]["chosen"] if c.startswith("data.finish_crop_size")), None)
    if finish is not None:  # the square crop, then the budget's last third on whole images
        fh, fw = finish.split("= ")[1].strip("[]").split(", ")
        ran += f", the last 33% on {fh}x{fw} at stride 8"  # the stride was chosen: 16 then 8
    assert f"| `cli:train.batch_size=2` | {ran} |" in md
