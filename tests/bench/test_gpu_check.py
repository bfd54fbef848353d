"""bench/gpu_check.sh parses, checks its options and runs every path on the CPU (--dry-run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
PATHS = ("train-bf16", "train-fp16", "train-channels-last", "ddp-syncbn", "resume",
         "compile-inference", "benchmark", "onnxruntime-cuda")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_script_parses_and_checks_its_options() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    helped = _run("--help")
    assert helped.returncode == 0
    for name in PATHS:
        assert name in helped.stdout
    bad = _run("--dry-run", "--fast")
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr
    bad = _run("--dry-run", "--only", "train-bf16,warp-drive")
    assert bad.returncode == 2 and "warp-drive" in bad.stderr and "train-fp16" in bad.stderr
    assert _run("--out").returncode == 2


@pytest.mark.slow
@pytest.mark.timeout(3000)
@pytest.mark.skipif(os.environ.get("PSPNET_GPU_CHECK_DRY_RUN") != "1",
                    reason="the whole dry run takes 10-25 min on 2 CPU cores, more than CI allows; "
                    "run it with PSPNET_GPU_CHECK_DRY_RUN=1")
def test_dry_run_runs_every_path_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    done = _run("--dry-run", "--out", str(out), timeout=2900)
    assert done.returncode == 0, done.stdout + done.stderr
    md = out.read_text()
    assert "dry run on the CPU" in md and "| path | result | seconds | last line |" in md
    for name in PATHS:
        line = next(ln for ln in done.stdout.splitlines() if ln.split()[1:2] == [name])
        assert line.split()[0] in ("PASS", "SKIP"), line
        assert f"| {name} |" in md
    assert "PASS compile-inference" in done.stdout and "PASS benchmark" in done.stdout
    assert "pspnet_r18 inference 65x65 b1" in md  # the benchmark's own table is included
