"""bench/plain_loop.py: the plain baseline trains for its budget and evaluates on a list file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from camvid_fake import make_fake_camvid

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "plain_loop.py"


@pytest.mark.slow
def test_trains_for_the_budget_and_reports(tmp_path: Path) -> None:
    root = make_fake_camvid(tmp_path / "camvid", n_test=3, size=(40, 48))
    out = tmp_path / "plain.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), "--train-list", "test.txt",
         "--eval-list", "test.txt", "--classes", str(root / "classes.txt"), "--minutes", "0.05",
         "--crop", "32", "--batch-size", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["steps"] >= 1 and result["train_s"] >= 3.0  # it used the 3-second budget
    assert 0.0 <= result["mIoU"] <= 1.0 and 0.0 <= result["pixel_acc"] <= 1.0
    assert len(result["iou"]) == 11
    assert result["precision"] in ("fp32", "bf16")
