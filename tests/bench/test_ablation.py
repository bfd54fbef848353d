"""bench/ablation.py: a tiny end-to-end sweep (2 rows x 2 seeds, 1 iteration) and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ablation.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


@pytest.mark.slow
def test_sweep_resumes_and_reports(tmp_path: Path) -> None:
    work, out = tmp_path / "abl", tmp_path / "docs" / "ablation"
    tiny = ["--size", "48", "--iters", "1", "--batch-size", "2", "--n-train", "4",
            "--n-val", "2", "--output-stride", "16", "--work-dir", str(work)]  # fmt: skip
    first = _run("run", *tiny, "--rows", "fcn", "b1236_avg", "--seeds", "0")
    assert first.returncode == 0, first.stderr
    # A second call with one more seed only runs what is missing.
    second = _run("run", *tiny, "--rows", "fcn", "b1236_avg", "--seeds", "0", "1")
    assert second.returncode == 0, second.stderr
    assert "2 runs to do (2 done)" in second.stdout
    records = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert sorted((r["row"], r["seed"]) for r in records) == [
        ("b1236_avg", 0), ("b1236_avg", 1), ("fcn", 0), ("fcn", 1)
    ]
    assert all(0.0 <= r["mIoU"] <= 1.0 and r["iterations"] == 1 for r in records)
    # The same work dir refuses a different setup instead of mixing results.
    other = _run("run", *[t if t != "48" else "64" for t in tiny], "--rows", "fcn")
    assert other.returncode == 1 and "different setup" in other.stderr

    rep = _run("report", "--work-dir", str(work), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out.parent / "ablation.md").read_text()
    assert (out / "ablation_miou.png").is_file()
    assert "`fcn`" in md and "`b1236_avg`" in md
    # Only the comparisons whose rows ran are judged; the others say so.
    assert "not run" in md and ("holds" in md)
    for r in records:  # every measured number is in the per-run table
        assert f"{100 * r['mIoU']:.2f}" in md


@pytest.mark.slow
def test_context_scenes_sweep_reports_the_context_classes(tmp_path: Path) -> None:
    work, out = tmp_path / "abl", tmp_path / "docs" / "ablation_context"
    run = _run("run", "--data", "context", "--gap", "12", "--size", "48", "--iters", "1",
               "--batch-size", "2", "--n-train", "4", "--n-val", "2", "--output-stride", "16",
               "--work-dir", str(work), "--rows", "fcn", "b1236_nodr", "--seeds", "0",
               "--width", "16", "--min-scale", "1")
    assert run.returncode == 0, run.stderr
    setup = json.loads((work / "setup.json").read_text())
    assert setup["data"] == "context" and setup["gap"] == 12
    assert setup["width"] == 16 and setup["min_scale"] == 1.0
    cfg = (work / "runs" / "b1236_nodr_s0" / "config.yaml").read_text()
    # the no-reduction row's pyramid keeps stage 5's 8 x 16 channels; no scaling
    assert "base_width: 16" in cfg and "ppm_channels: 128" in cfg
    assert "scale:\n  - 1.0\n  - 1.0" in cfg
    manifest = json.loads((work / "context_48_gap12" / "manifest.json").read_text())
    assert manifest["mode"] == "context" and manifest["gap"] == 12
    records = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert all("vessel_acc" in r for r in records)
    rep = _run("report", "--work-dir", str(work), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out.parent / "ablation_context.md").read_text()
    assert "--data context" in md and "--gap 12 --width 16 --min-scale 1 " in md
    assert "On the context classes (mean of boat and car IoU, points):" in md
    assert "| row | seed | val mIoU | boat/car IoU | vessel acc. | iterations | train min |" in md
