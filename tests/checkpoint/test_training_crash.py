"""A crash while a training checkpoint is being written loses nothing already saved."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pspnet.checkpoint import training as train_mod
from pspnet.checkpoint.training import (
    TRAIN_CHECKPOINT_FORMAT,
    TRAIN_CHECKPOINT_VERSION,
    find_checkpoint,
    write_checkpoint,
)


def _state(iteration: int) -> dict:
    """The fields load_checkpoint checks, with a tensor that tells the iterations apart."""
    return {"format": TRAIN_CHECKPOINT_FORMAT, "version": TRAIN_CHECKPOINT_VERSION,
            "iteration": iteration, "model": {"w": torch.full((4,), float(iteration))},
            "optimizer": {}, "schedule": {}, "rng": {}, "config": {}}


def test_crash_during_save_keeps_last_and_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path, _state(1))
    write_checkpoint(tmp_path, _state(2))
    d = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        f.truncate(10)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, _state(3))
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in d.iterdir()}
    assert after == before  # last.pt, prev.pt and the latest pointer untouched, no temp left
    path, state = find_checkpoint(tmp_path)
    assert path.name == "last.pt" and state["iteration"] == 2
    assert json.loads((d / "latest").read_text())["iteration"] == 2


def test_crash_between_renames_resumes_from_prev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path, _state(1))
    write_checkpoint(tmp_path, _state(2))
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # last.pt already moved to prev.pt, new file not yet in place
            raise KeyboardInterrupt("killed between renames")
        return real_replace(src, dst)

    monkeypatch.setattr(train_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, _state(3))
    monkeypatch.undo()
    path, state = find_checkpoint(tmp_path)
    assert path.name == "prev.pt" and state["iteration"] == 2  # the newest good one survives
