"""What a training run tells the world: ``log.jsonl`` events, TensorBoard scalars, the progress
bar and messages. Only rank 0 writes; on the other ranks every call does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

from pspnet.checkpoint import atomic_write_bytes

__all__ = ["RunLog"]

log = logging.getLogger("pspnet.train")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _tensorboard(log_dir: Path) -> Any:
    """A SummaryWriter, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn(
            "train.tensorboard is on but the tensorboard package is not installed "
            "(pip install 'pspnet[tensorboard]'); logging to log.jsonl only",
            stacklevel=3,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


class RunLog:
    """The outputs of one training process that are not weights.

    Attributes:
        is_main: Whether this process writes (rank 0).
        file: The open ``log.jsonl`` (after :meth:`open`), else None.
        tb: The TensorBoard writer, or None.
        bar: The progress bar (after :meth:`start_bar`), or None.
    """

    def __init__(self, is_main: bool) -> None:
        self.is_main = is_main
        self.file: Any = None
        self.tb: Any = None
        self.bar: Any = None
        self._pending: list[str] = []  # events before open(): what the set-up loaded

    def open(self, work_dir: Path, config_yaml: str, tensorboard: bool) -> None:
        """Write ``config.yaml`` and open ``log.jsonl`` (appending) and TensorBoard (rank 0)."""
        if not self.is_main:
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(work_dir / "config.yaml", config_yaml.encode())
        self.file = open(work_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            self.tb = _tensorboard(work_dir / "tb")

    def start_bar(self, total: int | None, initial: int) -> None:
        """Show a progress bar of optimizer steps (rank 0)."""
        if not self.is_main:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="training", unit="it",
                        dynamic_ncols=True)  # fmt: skip

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        """Close the bar, TensorBoard and ``log.jsonl``."""
        self.close_bar()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()

    def event(self, kind: str, **fields: Any) -> None:
        """One ``log.jsonl`` record: ``{"event": kind, "time": ..., **fields}``.

        Records made before :meth:`open` (the set-up's, e.g. ``init_weights``) are written
        right after the first record made after it (``start``), so that a run's records follow
        its ``start`` as readers of the log expect.
        """
        if not self.is_main:
            return
        rec = {"event": kind, "time": round(time.time(), 3), **fields}
        line = json.dumps(_json_safe(rec)) + "\n"
        if self.file is None:
            self._pending.append(line)
            return
        self.file.write(line)
        self.file.writelines(self._pending)
        self._pending.clear()
        self.file.flush()

    def scalars(self, it: int, values: dict[str, float]) -> None:
        """TensorBoard scalars at step ``it``, e.g. ``{"train/loss": 0.7}``."""
        if self.tb is None:
            return
        for name, value in values.items():
            self.tb.add_scalar(name, value, it)

    def say(self, msg: str) -> None:
        """A message above the progress bar (or through logging without one), rank 0."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            log.info(msg)

    def progress(self, loss: float, lr: float) -> None:
        """Advance the bar by one step, showing the loss and learning rate."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def set_total(self, total: int) -> None:
        """A new planned total of steps (the time budget re-planned)."""
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()
