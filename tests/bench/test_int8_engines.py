"""bench/int8_engines.py: the table has a row per variant with its share of the measured peak."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "int8_engines.py"


def _load():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("int8_engines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_peak_is_a_positive_rate_or_absent() -> None:
    peak = _load().int8_peak(n=256)
    assert peak is None or peak > 0


@pytest.mark.slow
def test_rows_report_speed_up_and_share_of_peak() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "33", "--classes", "3", "--rounds", "2",
         "--only", "fp32 eager"],
        capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert re.search(r"GFLOP per image; measured GEMM peak fp32 \d+ GFLOP/s", run.stdout)
    row = re.search(r"^\| fp32 eager \| \d+ \| \d+ \| 1\.00x \| \d+ \| (\d+)% \|$", run.stdout,
                    re.MULTILINE)
    assert row and int(row.group(1)) <= 100, run.stdout


def test_onnx_runtime_gemm_rates_are_measured_for_both_arithmetics() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rates = _load().ort_gemm_peaks(threads=1, n=128, repeats=2)
    assert set(rates) == {"fp32", "int8"} and all(v > 0 for v in rates.values())
