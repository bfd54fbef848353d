"""Fault tolerance: kill -9 mid-training, resume, and get bit-identical weights on the CPU."""

from __future__ import annotations

import os
import shutil
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
from pspnet.config import Config
from pspnet.engine import state as state_mod
from pspnet.checkpoint.training import find_checkpoint, load_checkpoint
from pspnet.engine.train import train

MAX_ITER = 10
# batch 2 of 8 images: 4 steps an epoch; checkpoints at 3, 4, 6, 8, 9, 10 (mid-epoch too).
OPTS = dict(max_iter=MAX_ITER, batch_size=2, checkpoint_interval=3)


def _cfg(tiny_data: dict, work: Path, **extra: object) -> Config:
    cfg = tiny_config(tiny_data, work, **{**OPTS, **extra})
    # Exercise the worker path: data must not depend on the worker or the process.
    return cfg.with_overrides(["data.num_workers=1", "data.persistent_workers=true"])


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return load_file(work / "final" / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    work = tmp_path_factory.mktemp("reference")
    result = train(_cfg(tiny_data, work), progress=False)
    assert result.iterations == MAX_ITER
    return work


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pspnet.config import Config
    from pspnet.engine import losses
    from pspnet.engine.train import train

    cfg = Config.from_yaml(sys.argv[1])
    block_after, marker = int(sys.argv[2]), Path(sys.argv[3])
    original = losses.PSPLoss.forward
    calls = [0]

    def gated(self, outputs, target):
        calls[0] += 1
        if calls[0] > block_after:  # park inside step block_after + 1 until killed
            marker.write_text("blocked")
            time.sleep(600)
        return original(self, outputs, target)

    losses.PSPLoss.forward = gated
    train(cfg, progress=False)
    """
)


@pytest.mark.slow
def test_kill9_then_resume_is_bit_identical(
    reference: Path, tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "killed"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(_cfg(tiny_data, work).to_yaml())
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    marker = tmp_path / "blocked"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg_file), "7", str(marker)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            assert time.time() < deadline, "the training subprocess never reached step 8"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 in the middle of step 8
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Steps 1-7 ran; the newest checkpoint is from step 6, in the middle of epoch 1.
    path, state = find_checkpoint(work)  # type: ignore[misc]
    assert state["iteration"] == 6 and state["epoch"] == 1 and state["epoch_step"] == 2
    assert not (work / "final").exists()
    control = tmp_path / "control"
    shutil.copytree(work, control)

    result = train(_cfg(tiny_data, work, resume="auto"), progress=False)
    assert result.resumed_from == path and result.iterations == MAX_ITER
    assert _same(_weights(work), _weights(reference)), "resumed weights differ from the reference"

    # Negative control: resuming without restoring the RNG states (dropout masks) diverges.
    monkeypatch.setattr(state_mod, "restore_rng", lambda state: None)
    train(_cfg(tiny_data, control, resume="auto"), progress=False)
    assert not _same(_weights(control), _weights(reference))


def test_truncated_newest_checkpoint_falls_back_to_previous(
    reference: Path, tiny_data: dict, tmp_path: Path
) -> None:
    work = tmp_path / "truncated"
    shutil.copytree(reference / "checkpoints", work / "checkpoints")
    last = work / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["iteration"] == MAX_ITER
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a crash halfway through a copy
    with pytest.warns(UserWarning, match=r"last\.pt") as rec:
        result = train(_cfg(tiny_data, work, resume="auto"), progress=False)
    assert any("prev.pt" in str(w.message) for w in rec)
    assert result.resumed_from == work / "checkpoints" / "prev.pt"
    # Resumed from step 9 and replayed step 10 exactly.
    assert _same(_weights(work), _weights(reference))
