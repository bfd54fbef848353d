"""Ctrl+C (SIGINT) and SIGTERM save a checkpoint of the current step; ``--resume`` continues
from that exact step and ends bit-identical to a run that was never interrupted.

Modelled on the kill -9 test (tests/engine/test_resume.py): training runs in a child process
(``pspnet train``, with a DataLoader worker), which is held inside step 5 while the signal is
sent to its whole process group (as a terminal's Ctrl+C is); steps 3 and 4 are regular
checkpoints, 5 is not, so a checkpoint at 5 can only come from the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _engine_tiny import tiny_config
from pspnet.checkpoint.training import find_checkpoint
from pspnet.config import Config, ConfigError
from pspnet.engine.safety import LOCK_FILE
from pspnet.engine.train import train

MAX_ITER = 10
# batch 2 of 8 images: 4 steps an epoch; regular checkpoints at 3, 4, 6, 8, 9, 10.
OPTS = dict(max_iter=MAX_ITER, batch_size=2, checkpoint_interval=3)
HELD_STEP = 5


def _cfg(tiny_data: dict, work: Path, **extra: object) -> Config:
    cfg = tiny_config(tiny_data, work, **{**OPTS, **extra})
    return cfg.with_overrides(["data.num_workers=1", "data.persistent_workers=true"])


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return load_file(work / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    work = tmp_path_factory.mktemp("reference")
    assert train(_cfg(tiny_data, work), progress=False).iterations == MAX_ITER
    return work


# The child: `pspnet train --config CFG`, held inside step HELD_STEP (its loss) until the
# test creates the release file; the numbers it computes are untouched.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pspnet.cli import main
    from pspnet.engine import losses

    cfg, hold, marker, release = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    original = losses.PSPLoss.forward
    calls = [0]

    def gated(self, outputs, target):
        calls[0] += 1
        if calls[0] == hold:
            marker.write_text("held")
            deadline = time.time() + 120
            while not release.exists() and time.time() < deadline:
                time.sleep(0.05)
        return original(self, outputs, target)

    losses.PSPLoss.forward = gated
    sys.exit(main(["train", "--config", cfg, "-q"]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_and_resume_is_bit_identical(
    sig: signal.Signals, reference: Path, tiny_data: dict, tmp_path: Path
) -> None:
    work = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(_cfg(tiny_data, work).to_yaml())
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    marker, release = tmp_path / "held", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg_file), str(HELD_STEP), str(marker), str(release)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, f"the training never reached step {HELD_STEP}"
            time.sleep(0.05)
        # While it runs, a second training into the same work directory is refused.
        with pytest.raises(ConfigError, match=f"in use by training process {proc.pid}"):
            train(_cfg(tiny_data, work), progress=False)
        os.killpg(proc.pid, sig)  # the whole group, DataLoader worker included
        time.sleep(0.5)  # the handler runs in the held step
        release.touch()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    last = err.strip().splitlines()[-1]
    ckpt = work / "checkpoints" / "last.pt"
    assert last == (f"interrupted at iteration {HELD_STEP}: checkpoint saved to {ckpt}; continue "
                    f"with --resume auto --work-dir {work} (the same options)"), err
    path, state = find_checkpoint(work)  # type: ignore[misc]
    assert path == ckpt and state["iteration"] == HELD_STEP  # not 4: the step it was in
    assert not (work / "final").exists() and not (work / LOCK_FILE).exists()
    events = [json.loads(x)["event"] for x in (work / "log.jsonl").read_text().splitlines()]
    assert events[-1] == "interrupted"

    result = train(_cfg(tiny_data, work, resume="auto"), progress=False)
    assert result.resumed_from == ckpt and result.iterations == MAX_ITER
    a, b = _weights(work), _weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
