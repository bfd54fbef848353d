"""A tiny weight directory to damage, and the CLI run in-process or in a memory-limited child.

Used by test_validation.py and test_bounds.py: each test copies the directory, changes one
value of its ``config.json`` or one tensor of its ``model.safetensors``, and checks that the
change is refused with one line naming the file, the key and the value.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from pspnet.checkpoint import WeightsMeta, save_weights
from pspnet.cli import main
from pspnet.models.registry import create_model

#: The tiny model: ResNet-18 at output stride 32 with a 16-channel head (45 MB of weights).
TINY = {"head_channels": 16, "ppm_channels": 8, "aux": False, "output_stride": 32}
NUM_CLASSES = 4


def make_weights(directory: Path) -> Path:
    """Write the tiny PSPNet-R18's weight directory (4 classes) and a 64x64 photo beside it."""
    model = create_model("pspnet_r18", NUM_CLASSES, **TINY).eval()
    save_weights(model, directory / "w", WeightsMeta(model=model.config))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(directory / "photo.png")
    return directory / "w"


def copy_weights(src: Path, dst: Path) -> Path:
    """A copy of weight directory ``src`` at ``dst`` (to damage)."""
    shutil.copytree(src, dst)
    return dst


def edit_config(directory: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Apply ``change`` to ``directory/config.json`` (parsed) and write it back."""
    p = directory / "config.json"
    doc = json.loads(p.read_text())
    change(doc)
    p.write_text(json.dumps(doc))  # json writes NaN / Infinity as the tokens Python reads back
    return p


def edit_tensors(directory: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Apply ``change`` to the tensors of ``directory/model.safetensors`` and write them back."""
    p = directory / "model.safetensors"
    sd = load_file(p)
    change(sd)
    save_file(sd, p, metadata={"format": "pspnet"})
    return p


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``pspnet ARGV`` in this process: its exit code and its stderr."""
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The CLI in a child process under an address-space limit

GiB = 1 << 30
#: What a memory case may use on top of the baseline of loading torch, the model and an image.
HEADROOM = 2 * GiB

_CHILD = """
import atexit, sys
def _peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmPeak:'):
            print('VMPEAK', int(line.split()[1]) * 1024, file=sys.stderr)
atexit.register(_peak)
from pspnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def child_env() -> dict[str, str]:
    """One thread (thread stacks count against the address space), the tree's sources first."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def cli_child(argv: list[str], cwd: Path, limit: int | None = None,
              timeout: float = 300) -> tuple[int, str, int]:
    """``pspnet ARGV`` in a child process, under RLIMIT_AS = ``limit`` bytes when given.

    Returns:
        (exit code, stderr without the peak line, the child's peak virtual size in bytes;
        0 when it died before reporting it).
    """
    def _limit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], cwd=cwd, env=child_env(), capture_output=True,
        text=True, timeout=timeout, preexec_fn=_limit,
    )  # fmt: skip
    peak, lines = 0, []
    for line in proc.stderr.splitlines():
        if line.startswith("VMPEAK "):
            peak = int(line.split()[1])
        else:
            lines.append(line)
    return proc.returncode, "\n".join(lines), peak


def memory_limit(weights: Path, cwd: Path) -> int:
    """The address-space limit of the memory cases: the peak virtual size of predicting the
    64x64 photo with the tiny weights (torch, the model, one small image), plus
    :data:`HEADROOM`."""
    rc, err, peak = cli_child(["predict", "photo.png", "--weights", str(weights), "--out",
                               str(cwd / "baseline_out"), "-q"], cwd)
    assert rc == 0 and peak > 0, err
    return peak + HEADROOM
