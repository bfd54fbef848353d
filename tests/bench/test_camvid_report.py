"""bench/camvid.py: the report on a fake work dir and a fake CamVid-layout data set (no
training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from camvid_fake import CLASSES, COLOURS, make_fake_camvid
from helpers import load_bench_script
from PIL import Image

from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.models.registry import create_model


@pytest.fixture(scope="module")
def camvid_mod():
    yield from load_bench_script("camvid.py", "bench_camvid")


def make_fake_work_dir(work: Path) -> Path:
    """A tiny pspnet_r18 saved as best/, a synthetic log.jsonl with a resume, a config.yaml."""
    model = create_model("pspnet_r18", len(CLASSES), head_channels=16, aux_channels=16,
                         ppm_channels=8)  # fmt: skip
    save_weights(model.eval(), work / "best",
                 WeightsMeta(model=model.config, classes=CLASSES, palette=COLOURS,
                             source="fake run for the test"))  # fmt: skip
    t0 = 1_700_000_000.0
    ev = [{"event": "start", "time": t0, "iteration": 0, "max_iter": 0, "steps_per_epoch": 45,
           "precision": "fp32", "crop_size": [320, 320], "train_images": 367, "val_images": 101},
          {"event": "plan", "time": t0 + 30, "iter": 20, "max_iter": 400, "first": True}]
    for it in range(10, 201, 10):
        ev.append({"event": "train", "time": t0 + 6 * it, "iter": it, "epoch": it / 45,
                   "lr": 0.01, "loss": 3.0 - it / 100, "loss_main": 2.4 - it / 120,
                   "loss_aux": 1.5, "sec_per_iter": 6.0, "elapsed_s": 6.0 * it})
        if it in (100, 200):
            ev.append({"event": "val", "time": t0 + 6 * it + 40, "iter": it, "epoch": it / 45,
                       "mIoU": 0.1 + it / 1000, "mAcc": 0.3, "allAcc": 0.6,
                       "iou": [0.2] * 11, "seconds": 40.0, "best": True})
    ev.append({"event": "checkpoint", "time": t0 + 1300, "iter": 200, "path": "x", "seconds": 1})
    # Interrupted after iteration 210, resumed from the checkpoint at 200: 210 is redone.
    ev.append({"event": "train", "time": t0 + 1320, "iter": 210, "epoch": 4.6, "lr": 0.01,
               "loss": 9.9, "loss_main": 9.9, "loss_aux": 9.9, "sec_per_iter": 6.0,
               "elapsed_s": 1320.0})
    t1 = t0 + 5000
    ev.append({"event": "resume", "time": t1, "iteration": 200, "max_iter": 400,
               "steps_per_epoch": 45, "precision": "fp32", "crop_size": [320, 320],
               "train_images": 367, "val_images": 101})
    for it in range(210, 401, 10):
        ev.append({"event": "train", "time": t1 + 6 * (it - 200), "iter": it, "epoch": it / 45,
                   "lr": 0.01 * (1 - it / 400) ** 0.9, "loss": 1.0 - it / 1000,
                   "loss_main": 0.8 - it / 1000, "loss_aux": 0.5, "sec_per_iter": 6.0,
                   "elapsed_s": 1240.0 + 6.0 * (it - 200)})
    ev.append({"event": "val", "time": t1 + 1240, "iter": 400, "epoch": 400 / 45, "mIoU": 0.412,
               "mAcc": 0.5, "allAcc": 0.8, "iou": [0.4] * 11, "seconds": 40.0, "best": True})
    ev.append({"event": "end", "time": t1 + 1250, "iteration": 400, "reason": "max_iter",
               "elapsed_s": 2490.0, "best_mIoU": 0.412, "best_iter": 400})
    lines = [json.dumps(e) for e in ev] + ['{"event": "train", "iter": 41']  # a torn last line
    (work / "log.jsonl").write_text("\n".join(lines) + "\n")
    (work / "config.yaml").write_text(
        "model: {arch: pspnet_r18, num_classes: 11, output_stride: 8, head_channels: 16}\n"
        "data: {crop_size: [320, 320], scale: [0.5, 2.0], rotate: [-10, 10]}\n"
        "optim: {lr: 0.01, momentum: 0.9, weight_decay: 0.0001, power: 0.9, head_lr_mult: 10}\n"
        "train: {batch_size: 8, time_budget: 42, precision: auto, seed: 0}\n"
    )
    return work


def test_read_log_handles_resume_and_torn_lines(camvid_mod, tmp_path):
    log = camvid_mod.read_log(make_fake_work_dir(tmp_path / "work") / "log.jsonl")
    assert log.sessions == 2 and log.finished and log.stop_reason == "max_iter"
    assert log.iterations == 400 and log.epochs == pytest.approx(400 / 45)
    assert log.minutes == pytest.approx(2490 / 60)
    assert log.bad_lines == 1
    assert [t.iter for t in log.train].count(210) == 1  # the redone interval replaced
    assert max(t.loss for t in log.train) < 9  # the discarded 9.9 point is gone
    assert [v.iter for v in log.val] == [100, 200, 400]
    # Validation time = the train event's elapsed time (the val's own duration subtracted).
    assert [round(v.minutes, 3) for v in log.val] == [10.0, 20.0, round(2440 / 60, 3)]


def test_report_on_fake_work_dir(camvid_mod, tmp_path, monkeypatch):
    data = make_fake_camvid(tmp_path / "camvid")
    work = make_fake_work_dir(tmp_path / "work")
    monkeypatch.setenv("PSPNET_CAMVID", str(data))
    out = tmp_path / "docs" / "results"
    files = camvid_mod.build_report(work, out, progress=False)

    for name in ("test_metrics.json", "confusion.png", "loss.png", "val_miou.png",
                 "test_overlays.png"):  # fmt: skip
        assert (out / name).is_file(), name
    for name in ("loss.png", "val_miou.png", "test_overlays.png", "confusion.png"):
        with Image.open(out / name) as im:
            assert im.width > 200 and im.height > 100
    md_path = tmp_path / "docs" / "results.md"
    assert files["markdown"] == md_path and md_path.is_file()
    assert len(list((work / "test_predictions").glob("*.png"))) == 3

    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["split"] == "test"
    assert [c["name"] for c in metrics["per_class"]] == list(CLASSES)
    md = md_path.read_text()
    assert f"{100 * metrics['mIoU']:.2f}" in md
    assert f"{100 * metrics['mAcc']:.2f}" in md and f"{100 * metrics['allAcc']:.2f}" in md
    for row in ("SegNet", "60.1", "Dilation8", "65.3", "FC-DenseNet103", "66.9", "PSPNet50",
                "69.1", "ICNet", "67.1", "this repository"):  # fmt: skip
        assert row in md, row
    assert "| Pedestrian |" in md  # the per-class table
    assert "60 mIoU reached: no" in md
    assert "## What each extra hour buys" in md
    assert "| 41.5 |" not in md  # minutes of the val points are measured, not the end time
    assert "| 10.0 | 0.17 | 100 |" in md and "41.20" in md  # val points from the log
    assert "python bench/camvid.py report" in md and "Commit:" in md
    for img in ("results/loss.png", "results/val_miou.png", "results/test_overlays.png",
                "results/confusion.png"):  # fmt: skip
        assert f"({img})" in md
    assert "Smoke test" not in md


def test_missing_data_names_both_places(camvid_mod, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PSPNET_CAMVID", str(tmp_path / "nowhere"))
    rc = camvid_mod.main(["report", "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "PSPNET_CAMVID" in err and str(tmp_path / "nowhere") in err
    assert str(camvid_mod.DEFAULT_CAMVID) in err


def test_train_dry_run_command(camvid_mod, tmp_path, monkeypatch, capsys):
    data = make_fake_camvid(tmp_path / "camvid")
    monkeypatch.setenv("PSPNET_CAMVID", str(data))
    rc = camvid_mod.main(["train", "--minutes", "7", "--work-dir", str(tmp_path / "w"),
                          "--set", "train.threads=2", "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    for part in (f"data.root={data.resolve()}", "classes.txt", "train.time_budget=7",
                 "train.resume=auto", f"train.work_dir={tmp_path / 'w'}", "train.threads=2",
                 "--config configs/camvid_cpu.yaml"):  # fmt: skip
        assert part in out, part
    assert not (tmp_path / "w").exists()


def test_train_refuses_to_extend_a_finished_run(camvid_mod, tmp_path, monkeypatch, capsys):
    data = make_fake_camvid(tmp_path / "camvid")
    work = tmp_path / "work"
    work.mkdir()
    (work / "log.jsonl").write_text(
        '{"event": "start", "iteration": 0, "steps_per_epoch": 45}\n'
        '{"event": "end", "iteration": 90, "reason": "time_budget", "elapsed_s": 60.0}\n'
    )
    monkeypatch.setenv("PSPNET_CAMVID", str(data))
    rc = camvid_mod.main(["train", "--minutes", "5", "--work-dir", str(work)])
    assert rc == 2
    assert "finished run" in capsys.readouterr().err
    assert not (work / camvid_mod.RUNS_FILE).exists()  # nothing was launched


@pytest.mark.slow
def test_report_with_budget_runs(camvid_mod, tmp_path, monkeypatch):
    """--budget-runs: each run scored on test, tabulated against its training time, plotted."""
    data = make_fake_camvid(tmp_path / "camvid")
    monkeypatch.setenv("PSPNET_CAMVID", str(data))
    main = make_fake_work_dir(tmp_path / "work")  # 41.5 min (elapsed_s 2490)
    short = make_fake_work_dir(tmp_path / "work_short")
    log = (short / "log.jsonl").read_text().replace('"elapsed_s": 2490.0', '"elapsed_s": 1245.0')
    (short / "log.jsonl").write_text(log)
    cfg = (short / "config.yaml").read_text()
    (short / "config.yaml").write_text(
        cfg.replace("time_budget: 42", "time_budget: 21").replace("batch_size: 8", "batch_size: 4"))
    out = tmp_path / "docs" / "results"
    notes = tmp_path / "notes.md"
    notes.write_text("The 21-minute run shared the machine with a test suite.\n")
    files = camvid_mod.build_report(main, out, progress=False, budget_runs=[short, main],
                                    notes=notes)

    with Image.open(files["budget_curve"]) as im:
        assert im.width > 200 and im.height > 100
    short_metrics = json.loads((out / "budgets" / "work_short" / "test_metrics.json").read_text())
    assert not (out / "budgets" / "work_short" / "test_overlays.png").exists()
    md = files["markdown"].read_text()
    assert "### Test mIoU against the training budget" in md
    assert "(results/budget_curve.png)" in md
    # One row per run, in order of training time, with the change per extra hour.
    main_metrics = json.loads((out / "test_metrics.json").read_text())
    short_row = next(line for line in md.splitlines() if line.startswith("| 21 | 20.8 |"))
    main_row = next(line for line in md.splitlines() if line.startswith("| 42 | 41.5 |"))
    assert f"| {100 * short_metrics['mIoU']:.2f} |" in short_row
    change = 100 * (main_metrics["mIoU"] - short_metrics["mIoU"])
    per_hour = change / ((41.5 - 20.75) / 60)
    assert f"| {100 * main_metrics['mIoU']:.2f} | {change:+.2f} | {per_hour:+.2f} |" in main_row
    assert md.index(short_row) < md.index(main_row)
    assert "differs from the main run in `train.batch_size`" in md
    assert "--budget-runs" in md and "--notes" in md
    assert ("### Conditions and observations (written by hand, not by the script)\n\n"
            "The 21-minute run shared the machine with a test suite.") in md
    with pytest.raises(camvid_mod.BenchError, match="--notes"):
        camvid_mod.build_report(main, out, progress=False, notes=tmp_path / "missing.md")


def test_budget_runs_refuse_an_unfinished_run(camvid_mod, tmp_path, monkeypatch):
    data = make_fake_camvid(tmp_path / "camvid")
    monkeypatch.setenv("PSPNET_CAMVID", str(data))
    main = make_fake_work_dir(tmp_path / "work")
    other = make_fake_work_dir(tmp_path / "other")
    lines = [ln for ln in (other / "log.jsonl").read_text().splitlines() if '"end"' not in ln]
    (other / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(camvid_mod.BenchError, match="unfinished run"):
        camvid_mod.build_report(main, tmp_path / "out", progress=False, budget_runs=[other])
