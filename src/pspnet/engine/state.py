"""The state of a training run, in one place: the parts built once (:class:`Run`), what the
loop changes (:class:`TrainState`), what a checkpoint saves of them (:func:`checkpoint_state`)
and what the run returns (:class:`TrainResult`, :class:`TrainingDiverged`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.training import (
    TRAIN_CHECKPOINT_FORMAT,
    TRAIN_CHECKPOINT_VERSION,
    restore_rng,
    to_cpu,
)
from pspnet.config import Config, ModelConfig
from pspnet.data.training import TrainData
from pspnet.engine.budget import Budget
from pspnet.engine.distributed import DistInfo, TrainBatchSampler
from pspnet.engine.losses import PSPLoss
from pspnet.engine.metrics import SegMetrics
from pspnet.engine.optim import PolySchedule
from pspnet.engine.run_log import RunLog
from pspnet.engine.safety import StopSignals, first_non_finite

__all__ = ["Run", "TrainResult", "TrainState", "TrainingDiverged", "check_saved_weights",
           "checkpoint_state", "raise_diverged", "restore_state"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped before updating the weights.

    Also raised when the weights became non-finite with a finite loss (nothing non-finite is
    ever saved: :func:`check_saved_weights`); the losses are then NaN.

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
    finish_at: int = -1
    """Step at which the run's last share begins on ``data.finish_crop_size`` (-1: none, or
    not planned yet)."""
    finish_from: int = -1
    """Step at which that share began (-1: not yet)."""
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
    """The parts of a training process, built once by :func:`pspnet.engine.setup.build_run`, and
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
    data_iter: Any = None
    """The iterator over ``loader`` the loop is reading (to stop its workers after an error)."""
    stop: StopSignals = dataclasses.field(default_factory=StopSignals)
    """Whether SIGINT / SIGTERM asked the loop to stop (handlers installed during the loop)."""
    val_images: int = 0
    """Validation images of this process (for the budget's estimate)."""
    val_pixels_factor: float = 1.0
    """Pixels of a validation image over pixels of a crop (for the budget's estimate)."""
    setup_choices: list[Any] = dataclasses.field(default_factory=list)
    """Values chosen while setting up (the time budget's crop), as
    :class:`pspnet.engine.defaults.Choice`; announced with the others."""

    @property
    def work_dir(self) -> Path:
        return Path(self.cfg.train.work_dir)

    @property
    def precision(self) -> str:
        return self.cfg.train.precision

    @property
    def model_config(self) -> ModelConfig:
        """The network's config now: at ``data.finish_output_stride`` once the run's last share
        has begun (:func:`pspnet.engine.setup.switch_network`), else ``cfg.model``."""
        return self.cfg.finish_model() if self.state.finish_from >= 0 else self.cfg.model

    def elapsed(self) -> float:
        """Training seconds so far, the resumed runs included."""
        return self.state.elapsed_before + (time.perf_counter() - self.t_start)

    def weights_meta(self, what: str) -> WeightsMeta:
        """The metadata saved beside ``best/`` and ``final/`` weights."""
        return WeightsMeta(
            model=self.model_config,
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
                 "val_every": -1 if st.val_every is None else int(st.val_every),
                 "finish_at": int(st.finish_at), "finish_from": int(st.finish_from)},
        "rng": rng,
        "elapsed_s": run.elapsed(),
        "best_miou": float(st.best_miou),
        "best_iter": int(st.best_iter),
        "last_val_iter": int(st.last_val_iter),
        "world_size": run.info.world_size,
        "config": run.cfg.to_dict(),
    }  # fmt: skip


def restore_state(run: Run, path: Path, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's weights, optimiser, schedule, plan, scores and RNG states."""
    st = run.state
    run.net.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.schedule.load_state_dict(ckpt["schedule"])
    st.it = int(ckpt["iteration"])
    plan = ckpt.get("plan", {})
    st.next_replan = int(plan.get("next_replan", -1))
    st.finish_at = int(plan.get("finish_at", st.finish_at))
    st.finish_from = int(plan.get("finish_from", st.finish_from))
    if run.budget is not None and st.finish_from >= 0:
        run.budget.finishing = True  # its steps are timed afresh in this process anyway
    if run.val_enabled and int(plan.get("val_every", -1)) >= 0:
        st.val_every = int(plan["val_every"])  # 0: switched off by the budget
    st.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
    st.best_miou = float(ckpt.get("best_miou", -1.0))
    st.best_iter = int(ckpt.get("best_iter", -1))
    st.last_val_iter = int(ckpt.get("last_val_iter", -1))
    if int(ckpt.get("steps_per_epoch", run.spe)) != run.spe:
        warnings.warn(
            f"the training set changed size since {path}: an epoch was "
            f"{ckpt.get('steps_per_epoch')} steps, now {run.spe}; the data order after "
            "resuming differs from an uninterrupted run",
            stacklevel=2,
        )
    rng = ckpt["rng"]
    restore_rng(rng[run.info.rank] if isinstance(rng, list) else rng)
    st.last_ckpt_path = path
    st.last_ckpt_iter = st.it


def raise_diverged(run: Run, epoch: int, main: float, aux: float, loss: Tensor) -> None:
    """Log and raise :class:`TrainingDiverged` for a non-finite loss at step ``it + 1``."""
    it, ck = run.state.it, run.state.last_ckpt_path
    where = (
        f"The last good checkpoint {ck} (iteration {run.state.last_ckpt_iter}) was kept."
        if ck is not None else "No checkpoint had been written yet."
    )  # fmt: skip
    msg = (
        f"training diverged: the loss is {float(loss.detach()):.6g} at iteration {it + 1} "
        f"(epoch {epoch}; main loss {main:.6g}, aux loss {aux:.6g}). {where} Lower the "
        "learning rate (optim.lr), check the data, or train in fp32 (train.precision=fp32)."
    )
    run.log.event("diverged", iter=it + 1, loss_main=main, loss_aux=aux,
                  checkpoint=str(ck) if ck else None)  # fmt: skip
    raise TrainingDiverged(msg, it + 1, main, aux, ck)


def check_saved_weights(run: Run, what: str) -> None:
    """Refuse to save weights holding a NaN or an infinity (``what``: ``checkpoint``,
    ``best/``, ``final/``); a finite loss does not guarantee finite weights (an infinite
    learning rate, a running statistic gone bad).

    Raises:
        TrainingDiverged: Naming the first bad tensor; nothing is written.
    """
    bad = first_non_finite(run.net.state_dict())
    if bad is None:
        return
    st, ck = run.state, run.state.last_ckpt_path
    kept = (f"The last good checkpoint {ck} (iteration {st.last_ckpt_iter}) was kept."
            if ck is not None else "No checkpoint had been written yet.")  # fmt: skip
    msg = (
        f"training produced non-finite weights at iteration {st.it}: {bad} holds NaN or infinite "
        f"values, so the {what} was not written. {kept} Lower the learning rate (optim.lr is "
        f"{run.cfg.optim.lr:g}), check the data, or train in fp32 (train.precision=fp32)."
    )
    run.log.event("diverged", iter=st.it, tensor=bad, checkpoint=str(ck) if ck else None)
    raise TrainingDiverged(msg, st.it, math.nan, math.nan, ck)
