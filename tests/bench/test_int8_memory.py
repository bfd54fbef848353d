"""bench/int8_memory.py: each variant runs in a fresh process and reports its own peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "int8_memory.py"


@pytest.mark.slow
def test_each_variant_reports_its_own_peak(tmp_path: Path) -> None:
    out = tmp_path / "mem.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "33", "--classes", "3",
         "--only", "fp32 eager", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert list(result["results"]) == ["fp32 eager"]
    r = result["results"]["fp32 eager"]
    # the peak includes the model and one prediction on top of the imports
    assert r["peak_mib"] > r["baseline_mib"] > 50 and r["last_run_s"] > 0
    assert "fp32 eager" in run.stdout and "peak" in run.stdout



@pytest.mark.slow
def test_labels_mode_predicts_labels(tmp_path: Path) -> None:
    out = tmp_path / "mem.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "33", "--classes", "3", "--labels",
         "--only", "fp32 eager", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["labels"] is True and list(result["results"]) == ["fp32 eager"]
