"""Short CPU training runs: the loss falls, outputs are written, errors stop the run early."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _engine_tiny import NUM_CLASSES, make_tiny_dataset, tiny_config
from procs import own_children
from pspnet.checkpoint import load_model
from pspnet.config import ConfigError
from pspnet.data.io import DataError
from pspnet.engine import losses
from pspnet.checkpoint.training import load_checkpoint
from pspnet.engine.train import TrainingDiverged, train


def _events(work: Path, kind: str) -> list[dict]:
    lines = (work / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


@pytest.mark.slow
def test_short_run_loss_falls_and_writes_outputs(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    names = tmp_path / "names.txt"
    names.write_text("background\nred\nblue\n")
    cfg = tiny_config(
        tiny_data, work, max_iter=16, val_interval=8, val_unit="iter"
    ).with_overrides([f"data.class_names={names}", "data.scale=null", "data.rotate=null"])
    result = train(cfg, progress=False)
    losses_ = [r["loss"] for r in _events(work, "train")]
    assert len(losses_) == 16 and all(np.isfinite(losses_))
    assert np.mean(losses_[-4:]) < 0.8 * np.mean(losses_[:4]), losses_
    assert result.iterations == 16 and result.stop_reason == "completed"
    # Outputs: config, log, checkpoints, final and best weights in our format.
    assert (work / "config.yaml").is_file()
    assert (work / "checkpoints" / "last.pt").is_file()
    assert (work / "checkpoints" / "latest").is_file()
    model = load_model(work / "final")
    assert model.meta.classes == ("background", "red", "blue")
    assert model.meta.palette is not None and len(model.meta.palette) == NUM_CLASSES
    assert result.best_dir is not None and (result.best_dir / "model.safetensors").is_file()
    vals = _events(work, "val")
    assert [v["iter"] for v in vals] == [8, 16]
    assert result.best_miou == max(v["mIoU"] for v in vals)
    # The checkpoint is plain data: it loads with weights_only=True.
    state = torch.load(work / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 16 and state["config"]["model"]["num_classes"] == NUM_CLASSES


def test_class_weights_computed_from_the_training_labels(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "weighted"
    cfg = tiny_config(tiny_data, work, max_iter=2, val_interval=0).with_overrides(
        ["train.class_weights=enet"]
    )
    train(cfg, progress=False)
    (start,) = _events(work, "start")
    weights = start["class_weights"]
    assert len(weights) == NUM_CLASSES
    # Background (most pixels) gets the smallest weight: rare classes weigh more.
    assert weights[0] == min(weights) and all(w > 1 for w in weights)
    # A list of the wrong length is refused naming the key.
    with pytest.raises(ConfigError, match="train.class_weights.*one weight per class"):
        tiny_config(tiny_data, work).with_overrides(["train.class_weights=[1, 2]"])


def test_bad_label_fails_before_any_step(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", n_train=4, n_val=1)
    bad = data["root"] / "labels" / "train_002.png"
    lab = np.asarray(Image.open(bad)).copy()
    lab[10, 10] = 7  # not a class of 3 and not 255
    Image.fromarray(lab).save(bad)
    work = tmp_path / "run"
    with pytest.raises(DataError, match="train_002.png") as info:
        train(tiny_config(data, work), progress=False)
    assert "7" in str(info.value)
    assert not (work / "log.jsonl").exists() and not (work / "checkpoints").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = losses.PSPLoss.forward

    def poisoned(self, outputs, target):  # type: ignore[no-untyped-def]
        total, parts = original(self, outputs, target)
        calls["n"] += 1
        if calls["n"] >= 4:  # the 4th optimizer step's loss is NaN
            total = total * float("nan")
            parts = {"main": parts["main"] * float("nan"), "aux": parts["aux"]}
        return total, parts

    monkeypatch.setattr(losses.PSPLoss, "forward", poisoned)
    work = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(tiny_data, work, max_iter=8, checkpoint_interval=1), progress=False)
    msg = str(info.value)
    assert "iteration 4" in msg and "main loss nan" in msg and "aux loss" in msg
    assert info.value.iteration == 4
    last = load_checkpoint(work / "checkpoints" / "last.pt")
    assert last["iteration"] == 3  # the last good one, not overwritten
    assert load_checkpoint(work / "checkpoints" / "prev.pt")["iteration"] == 2
    assert not (work / "final").exists()
    assert _events(work, "diverged")[0]["iter"] == 4


@pytest.mark.slow
def test_time_budget_plans_the_schedule_and_writes_final(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    budget_min = 0.25  # long enough for > warm-up + measured steps on a loaded machine
    # Pay torch's one-off optimizer import (torch._dynamo, seconds) outside the budget.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cfg = tiny_config(
        tiny_data, work, max_iter=None, time_budget=budget_min, budget_warmup_iters=1,
        budget_measure_iters=3, val_interval=None,
    )  # fmt: skip
    result = train(cfg, progress=False)
    assert (work / "final" / "model.safetensors").is_file()
    plans = _events(work, "plan")
    assert plans and plans[0]["first"]
    train_recs = _events(work, "train")
    log = (work / "log.jsonl").read_text()
    # The schedule was planned from the measured speed and ran to its end (LR reached 0) ...
    assert result.iterations > 4, log
    if result.stop_reason == "completed":
        assert result.iterations == result.max_iter == train_recs[-1]["max_iter"], log
        assert train_recs[-1]["progress"] == pytest.approx(1.0)
    else:  # a machine that suddenly got much slower: stopped on time, well into the schedule
        # (CI on a loaded 2-core host stopped at 8 of 10 planned steps: progress exactly 0.8;
        # the bug this guards against, a schedule planned far beyond the budget, stops near 0.1)
        assert result.stop_reason == "time_budget" and train_recs[-1]["progress"] >= 0.5, log
    # ... within the budget: a step is started only when it is expected to fit, so the run
    # may overrun by at most one step that was slower than expected (on a loaded machine a
    # step of this tiny model has taken 25 s instead of 0.5), plus slack for the final save.
    slowest = max(r["sec_per_iter"] for r in train_recs)
    assert result.elapsed_s < budget_min * 60 + slowest + 4.0, log
    assert _events(work, "val"), "the auto interval validates at least at the end"
    # A resumed budgeted run continues the clock from the checkpoint.
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    assert state["elapsed_s"] > 0 and state["schedule"]["max_iter"] == result.max_iter


def test_resume_refuses_a_different_model(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    train(tiny_config(tiny_data, work, max_iter=2, checkpoint_interval=1), progress=False)
    (work / "checkpoints" / "last.pt").unlink()  # resume from iteration 1 (prev.pt)
    snapshot = (work / "checkpoints" / "prev.pt").read_bytes()
    base = tiny_config(tiny_data, work, max_iter=2, resume="auto")
    from pspnet.config import ConfigError

    with pytest.raises(ConfigError, match="num_classes"):
        train(base.with_overrides(["model.num_classes=4"]), progress=False)
    with pytest.raises(ConfigError, match="arch"):
        train(base.with_overrides(["model.arch=pspnet_r34"]), progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        train(base.with_overrides(["train.batch_size=2"]), progress=False)
    assert (work / "checkpoints" / "prev.pt").read_bytes() == snapshot
    # A changed learning rate is not applied: the schedule continues from the checkpoint.
    with pytest.warns(UserWarning, match="optim"):
        result = train(base.with_overrides(["optim.lr=0.5"]), progress=False)
    assert result.iterations == 2 and result.config.optim.lr == 0.01
    state = load_checkpoint(work / "checkpoints" / "last.pt")
    assert state["schedule"]["base_lr"] == 0.01
    assert state["optimizer"]["param_groups"][0]["lr"] < 0.01
    shutil.rmtree(work / "final")


def test_resume_refuses_a_different_world_size(tiny_data: dict, tmp_path: Path) -> None:
    work = tmp_path / "run"
    train(tiny_config(tiny_data, work, max_iter=1), progress=False)
    ckpt = work / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    state["world_size"] = 2  # as if written by a two-process torchrun job
    torch.save(state, ckpt)
    with pytest.raises(ConfigError, match="2 processes, this run has 1"):
        train(tiny_config(tiny_data, work, max_iter=2, resume="auto"), progress=False)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_corrupt_image_fails_fast_by_default_and_skip_bad_leaves_it_out(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", n_train=6, n_val=2)
    root = data["root"]
    _truncate(root / "images" / "train_002.png")  # header intact, pixels cut off
    # A label value that is neither a class (K = 3) nor the ignore value.
    lab = np.array(Image.open(root / "labels" / "train_004.png"))
    lab[5, 5] = 7
    Image.fromarray(lab).save(root / "labels" / "train_004.png")

    # Default: the first bad file stops the run, named, before any step.
    with pytest.raises(DataError, match="train_004.png"):
        train(tiny_config(data, tmp_path / "strict", max_iter=2, val_interval=0), progress=False)
    assert not (tmp_path / "strict" / "checkpoints").exists()

    # --skip-bad 1: two bad samples are more than allowed; both are listed, nothing trains.
    with pytest.raises(DataError, match=r"2 bad training samples, more than the 1") as err:
        train(
            tiny_config(data, tmp_path / "limit", max_iter=2, val_interval=0).with_overrides(
                ["data.skip_bad=1"]
            ),
            progress=False,
        )
    assert "train_002.png" in str(err.value) and "train_004.png" in str(err.value)
    assert "--skip-bad" in str(err.value)
    assert not (tmp_path / "limit" / "checkpoints").exists()

    # --skip-bad 5: both are left out, reported in skipped.json, and training runs on the rest.
    work = tmp_path / "skip"
    cfg = tiny_config(data, work, max_iter=2, val_interval=0).with_overrides(["data.skip_bad=5"])
    result = train(cfg, progress=False)
    assert result.iterations == 2
    report = json.loads((work / "skipped.json").read_text())
    assert sorted(Path(r["image"]).name for r in report["train"]) == [
        "train_002.png", "train_004.png"
    ]
    assert report["val"] == [] and report["limit"] == 5
    (start,) = _events(work, "start")
    assert start["train_images"] == 4


def test_corrupt_image_found_while_training_names_the_file(tmp_path: Path) -> None:
    """Label scan off (headers only are cheap to skip): a truncated image found by a loader
    worker stops the run with the file's name and no worker traceback in the message."""
    data = make_tiny_dataset(tmp_path / "d", n_train=4, n_val=1)
    _truncate(data["root"] / "images" / "train_001.png")
    cfg = tiny_config(data, tmp_path / "w", max_iter=3, val_interval=0).with_overrides(
        ["data.scan_labels=false", "data.num_workers=1"]
    )
    with pytest.raises(DataError) as err:
        train(cfg, progress=False)
    msg = str(err.value)
    assert "train_001.png" in msg and "Traceback" not in msg and "--skip-bad" in msg
    # The traceback (still held here, as a notebook holds it) keeps the loader alive; its
    # worker must be stopped all the same.
    assert err.value.__traceback__ is not None and own_children() == {}


@pytest.mark.slow
def test_channels_last_auto_is_resolved_and_recorded(tiny_data: dict, tmp_path: Path) -> None:
    """auto: off for an fp32 step on a CPU (slower there), on for CUDA and bf16/fp16 steps;
    the checkpoint's config says what ran."""
    from pspnet.precision import resolve_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_channels_last("auto", cpu, "fp32") is False
    assert resolve_channels_last("auto", cpu, "bf16") is True
    assert resolve_channels_last("auto", cuda, "fp32") is True
    assert resolve_channels_last(True, cpu, "fp32") is True
    assert resolve_channels_last(False, cuda, "bf16") is False
    work = tmp_path / "auto"
    cfg = tiny_config(tiny_data, work, max_iter=1, val_interval=0, channels_last="auto")
    train(cfg, progress=False)
    state = torch.load(work / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["train"]["channels_last"] is False
    with pytest.raises(ConfigError, match="channels_last"):
        cfg.with_overrides(["train.channels_last=sometimes"])
