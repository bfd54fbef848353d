"""The state of a training run, in one place: the parts built once (:class:`Run`), what the
loop changes (:class:`TrainState`), what a checkpoint saves of them (:func:`checkpoint_state`)
and what the run returns (:class:`TrainResult`, :class:`TrainingDiverged`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.training import TRAIN_CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_VERSION, to_cpu
from pspnet.config import Config
from pspnet.data.training import TrainData
from pspnet.engine.budget import Budget
from pspnet.engine.distributed import DistInfo, TrainBatchSampler
from pspnet.engine.losses import PSPLoss
from pspnet.engine.metrics import SegMetrics
from pspnet.engine.optim import PolySchedule
from pspnet.engine.run_log import RunLog

__all__ = ["Run", "TrainResult", "TrainState", "TrainingDiverged", "checkpoint_state"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped before updating the weights.

    Attributes:
        iteration: The 1-based optimizer step whose loss was not finite.
        main_loss, aux_loss: The two parts of that loss.
        checkpoint: The last good checkpoint (left untouched), or None.
    """

    def __init__(
        self, message: str, iteration: int, main_loss: float, aux_loss: float,
        checkpoint: Path | None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.iteration = iteration
        self.main_loss = main_loss
        self.aux_loss = aux_loss
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        work_dir: The run's folder.
        final_dir: Weight directory of the final model.
        best_dir: Weight directory of the best validation model (None without validation).
        iterations: Optimizer steps done in total (including before a resume).
        max_iter: Planned total steps (the poly schedule's end).
        epochs: Iterations in epochs (fractional).
        best_miou: Best validation mIoU (fraction), or None.
        best_iteration: Iteration of the best model, or None.
        last_metrics: The last validation's :class:`SegMetrics`, or None.
        final_loss: Mean training loss of the last logged interval.
        elapsed_s: Training wall time in seconds, summed over resumes.
        stop_reason: ``"completed"`` (schedule ended; with a time budget, on budget) or
            ``"time_budget"`` (the budget ran out before the schedule ended).
        resumed_from: The checkpoint this run continued from, or None.
        config: The effective configuration.
    """

    work_dir: Path
    final_dir: Path
    best_dir: Path | None
    iterations: int
    max_iter: int
    epochs: float
    best_miou: float | None
    best_iteration: int | None
    last_metrics: SegMetrics | None
    final_loss: float | None
    elapsed_s: float
    stop_reason: str
    resumed_from: Path | None
    config: Config



@dataclass
class TrainState:
    """What the loop changes: a checkpoint saves it (:func:`_checkpoint`), a resume restores it
    (:func:`_restore`)."""

    it: int = 0
    """Optimizer steps done (the loop's clock)."""
    elapsed_before: float = 0.0
    """Training seconds of the runs this one resumes."""
    val_every: int | None = None
    """Steps between validations (None: decided by the first budget plan; 0: none)."""
    next_replan: int = -1
    """Step at which the budget plan is refreshed next (-1: none pending)."""
    best_miou: float = -1.0
    best_iter: int = -1
    last_val_iter: int = -1
    last_metrics: SegMetrics | None = None
    last_ckpt_path: Path | None = None
    last_ckpt_iter: int = -1
    last_ckpt_time: float = dataclasses.field(default_factory=time.perf_counter)
    final_loss: float | None = None
    """Mean loss of the last logged interval."""
    sums: dict[str, float] = dataclasses.field(default_factory=lambda: _zero_sums())
    """Loss sums since the last ``train`` record."""
    t_log: float = dataclasses.field(default_factory=time.perf_counter)
    """When the current logging interval began."""

    def new_log_interval(self, now: float) -> None:
        """Start the sums of the next ``train`` record at ``now``."""
        self.sums = _zero_sums()
        self.t_log = now


def _zero_sums() -> dict[str, float]:
    return {"loss": 0.0, "main": 0.0, "aux": 0.0, "n": 0}


@dataclass
class Run:
    """The parts of a training process, built once by :func:`pspnet.engine.train._setup`, and
    its :class:`TrainState`."""

    cfg: Config
    """The resolved config (crop, precision, workers filled in; what config.yaml holds)."""
    info: DistInfo
    log: RunLog
    t_start: float
    data: TrainData
    net: nn.Module
    """The network: its weights are checkpointed, validated and saved."""
    model: nn.Module
    """What a step calls: ``net``, or its DistributedDataParallel wrapper."""
    optimizer: torch.optim.Optimizer
    scaler: Any
    """A CUDA GradScaler for fp16, else None."""
    schedule: PolySchedule
    budget: Budget | None
    sampler: TrainBatchSampler
    criterion: PSPLoss
    spe: int
    """Optimizer steps per epoch."""
    val_enabled: bool
    ckpt_every: int
    """Steps between checkpoints (the budget plan counts their cost)."""
    resumed_from: Path | None
    state: TrainState
    loader: Any = None
    val_images: int = 0
    """Validation images of this process (for the budget's estimate)."""
    val_pixels_factor: float = 1.0
    """Pixels of a validation image over pixels of a crop (for the budget's estimate)."""

    @property
    def work_dir(self) -> Path:
        return Path(self.cfg.train.work_dir)

    @property
    def precision(self) -> str:
        return self.cfg.train.precision

    def elapsed(self) -> float:
        """Training seconds so far, the resumed runs included."""
        return self.state.elapsed_before + (time.perf_counter() - self.t_start)

    def weights_meta(self, what: str) -> WeightsMeta:
        """The metadata saved beside ``best/`` and ``final/`` weights."""
        return WeightsMeta(
            model=self.cfg.model,
            classes=self.data.class_names,
            palette=self.data.palette,
            preprocess=self.cfg.preprocess,
            ignore_index=self.cfg.data.ignore_index,
            source=f"pspnet train {self.work_dir} ({what})",
        )


def checkpoint_state(run: Run, rng: list[Any]) -> dict[str, Any]:
    """Everything an exact resume needs, as a training checkpoint holds it
    (:mod:`pspnet.checkpoint.training`); ``rng`` is every rank's RNG state."""
    st, it, spe = run.state, run.state.it, run.spe
    return {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "version": TRAIN_CHECKPOINT_VERSION,
        "iteration": it,
        "epoch": it // spe,
        "epoch_step": it % spe,
        "steps_per_epoch": spe,
        "model": {k: v.detach().cpu() for k, v in run.net.state_dict().items()},
        "optimizer": to_cpu(run.optimizer.state_dict()),
        "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        "schedule": run.schedule.state_dict(),
        "plan": {"next_replan": int(st.next_replan),
                 "val_every": -1 if st.val_every is None else int(st.val_every)},
        "rng": rng,
        "elapsed_s": run.elapsed(),
        "best_miou": float(st.best_miou),
        "best_iter": int(st.best_iter),
        "last_val_iter": int(st.last_val_iter),
        "world_size": run.info.world_size,
        "config": run.cfg.to_dict(),
    }  # fmt: skip
