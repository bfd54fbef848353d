"""Training PSPNet: the paper's recipe, from a two-core laptop to ``torchrun`` on many GPUs.

The recipe (Zhao et al., CVPR 2017, and the authors' ``hszhao/semseg`` code): SGD with momentum
0.9 and weight decay 1e-4; a poly learning rate ``lr * (1 - iter / max_iter) ** 0.9`` updated
every iteration, 10x on the new layers (``model.head``, ``model.aux_head``); cross-entropy with
ignore label 255 on the final logits plus 0.4 x the auxiliary (stage-4) loss; random scale
0.5-2.0, rotation +-10 degrees, Gaussian blur, horizontal flip and crop; SyncBatchNorm over the
processes.

Entry points: :func:`train` (a :class:`~pspnet.config.Config`) and :func:`train_from_args`
(config file < flags < ``--set`` overrides, :func:`pspnet.engine.run_config.build_config`);
``pspnet train`` calls the latter, also under ``torchrun --nproc-per-node N -m pspnet train``.

This module is the loop; it reads top to bottom: :func:`train` sets up the process,
:func:`pspnet.engine.setup.build_run` builds a :class:`~pspnet.engine.state.Run` (the parts,
fixed for the run, and the :class:`TrainState` the loop changes), :func:`_loop` steps, logs,
plans the time budget (:mod:`pspnet.engine.budget`), validates and checkpoints, and
:func:`_finish` saves ``final/``. The data come from :mod:`pspnet.data.training`, the checks,
the network, the optimiser and the outputs from :mod:`pspnet.engine.setup`, the config from
:mod:`pspnet.engine.run_config`, the log from :mod:`pspnet.engine.run_log` and the checkpoint
file format from :mod:`pspnet.checkpoint.training`.

Outputs in ``WORK_DIR`` (rank 0 only writes):

* ``config.yaml``: the resolved configuration (crop, precision, workers filled in);
* ``log.jsonl``: one JSON object a line (``event``: start, plan, train, val, checkpoint,
  resume, diverged, end);
* ``checkpoints/last.pt``, ``checkpoints/prev.pt`` and ``checkpoints/latest``: see below;
* ``final/`` and ``best/`` (best validation mIoU): weight directories in our format
  (:func:`pspnet.checkpoint.save_weights`), loadable with ``pspnet.load_model``;
* ``tb/`` when TensorBoard logging is on; ``report/index.html``: :mod:`pspnet.engine.run_report`.

Checkpoints and resuming. A checkpoint is written with ``torch.save`` to a temporary file that
is flushed to disk and then renamed over ``last.pt`` (the previous ``last.pt`` is first renamed
to ``prev.pt``); the ``latest`` pointer is replaced atomically too. A crash at any moment
leaves at least one complete checkpoint. Checkpoints hold only tensors, numbers, strings, lists
and dicts, so they load with ``torch.load(..., weights_only=True)``: the model and optimizer
state, the GradScaler, the schedule position, the Python / numpy / torch (and CUDA) random
states of every process, the epoch and the step inside it, elapsed training time, the best
score so far and the config. ``resume="auto"`` loads the newest readable checkpoint of
``WORK_DIR`` (if the newest is truncated or corrupt it warns, naming the file, and takes the
previous one) and continues bit-exactly on the CPU: same batches, same augmentations, same
dropout masks, same weights as a run that was never interrupted. Resuming refuses a different
model (``num_classes``, ``arch``, any model option), world size or batch size; the learning
rate, schedule, seed and time budget come from the checkpoint (with a warning when the config
says otherwise).

The work directory is locked while a run uses it (``train.lock`` with the PID: a second run
there fails naming it; a dead process's lock is taken over with a warning), and a previous run
in it is not overwritten: a new run there needs ``--overwrite`` (``train.overwrite``), a
``--resume`` that finds no checkpoint is an error (``resume: auto`` starts a new run in an
empty work directory). SIGINT / SIGTERM stop the loop after the current step, which is
checkpointed; :class:`TrainingInterrupted` names the file, and ``--resume`` continues
bit-exactly from that step. Non-finite hyper-parameters are refused before anything runs, and
non-finite weights are never saved (:class:`TrainingDiverged` names the first bad tensor).
See :mod:`pspnet.engine.safety`.

Reproducible data: the order of epoch ``e`` is ``randperm`` from a ``torch.Generator`` seeded
by ``(seed, e)``, and sample ``i`` of epoch ``e`` is augmented with
:func:`pspnet.data.transforms.sample_rng` ``(seed, e, i)``; neither depends on the global RNGs,
the number of DataLoader workers, or where a previous run stopped.

Divergence: a NaN or infinite loss stops the run before the optimizer step with
:class:`TrainingDiverged`, naming the iteration and the main / auxiliary losses; no checkpoint
is written after it, so the last good one stays as it was.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pspnet.checkpoint import save_weights
from pspnet.checkpoint.training import rng_state, write_checkpoint
from pspnet.config import Config
from pspnet.data.training import next_batch, stop_workers
from pspnet.engine.budget import Plan
from pspnet.engine.defaults import Choice, announce_choices
from pspnet.engine.distributed import (DistInfo, all_gather_object, barrier, broadcast_object,
                                       cleanup, init_distributed, is_distributed)
from pspnet.engine.evaluate import evaluate_model
from pspnet.engine.run_config import build_config_explained, check_finite
from pspnet.engine.run_log import RunLog
from pspnet.engine.run_report import report_after_training
from pspnet.engine.setup import build_run, open_loader, switch_network
from pspnet.engine.safety import StopSignals, TrainingInterrupted, lock_work_dir, on_main
from pspnet.engine.state import (Run, TrainingDiverged, TrainResult, TrainState,
                                 check_saved_weights, checkpoint_state, raise_diverged)
from pspnet.precision import autocast

__all__ = ["TrainingDiverged", "TrainingInterrupted", "TrainResult", "TrainState", "train",
           "train_from_args"]


def train_from_args(*args: Any, progress: bool = True, **kwargs: Any) -> TrainResult:
    """``pspnet train``: build the config (file < flags < ``--set`` overrides) and train.

    Works the same under ``torchrun`` (each process calls this; see :func:`train`).

    Args:
        *args, **kwargs: What :func:`~pspnet.engine.run_config.build_config` takes: the flag
            values (``data_root``, ``train_list``, ``num_classes``, ``batch_size``, ...; the
            table :data:`pspnet.config.flags.TRAIN_FLAGS`), ``config_file`` and ``overrides``.
        progress: Show progress bars.
    """
    config, chosen = build_config_explained(*args, **kwargs)
    return train(config, progress=progress, chosen=chosen)


def train(config: Config, *, progress: bool = True, chosen: Sequence[Choice] = ()) -> TrainResult:
    """Train a PSPNet as configured; see the module docstring for the outputs.

    Distributed: under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment)
    the process group is initialised here (gloo on CPU, nccl on CUDA, with
    ``train.dist_timeout``), BatchNorm becomes synchronised (``train.sync_bn``), the model is
    wrapped in DistributedDataParallel, every process gets a disjoint slice of every batch, and
    only rank 0 writes files, logs and the progress bar.

    Time budget (``train.time_budget`` minutes): the clock runs from the start of this call
    (plus the training time of earlier runs when resuming). The first
    ``train.budget_warmup_iters`` steps are not timed; the mean time of the next
    ``train.budget_measure_iters`` steps (held at the base learning rate meanwhile) sets
    ``max_iter`` so that the steps, the expected validations and checkpoints, the final
    validation and the final save fit the remaining time (with the automatic validation
    interval, validations get at most a quarter of the time left, and none when a single pass
    over the validation set would take more). The plan is refreshed every ~5 % of
    the run and after every validation with the measured costs; a refresh only changes how
    fast the poly schedule advances from where it is, so the learning rate decays smoothly and
    reaches 0 when the budget is spent, not cut short. If the time runs out anyway (the
    machine got slower), the run stops early, cleanly, and still writes ``final/``.
    See :class:`~pspnet.engine.budget.Budget`.

    Args:
        config: The configuration (see :class:`~pspnet.config.Config`).
        progress: Show a progress bar (rank 0).
        chosen: Values :func:`build_config_explained` chose; announced with this run's own.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: Invalid or incompatible settings (e.g. resuming a different model).
        DataError: A bad data file (label values outside the classes fail before any step).
        CheckpointError: Unreadable checkpoints or backbone weights.
        TrainingDiverged: The loss became NaN or infinite.
    """
    info = init_distributed(config.train.device, config.train.dist_timeout)
    old_threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        with warnings.catch_warnings():
            if not info.is_main:
                warnings.simplefilter("ignore")
            return _train(config, info, progress, chosen)
    finally:
        if config.train.threads:
            torch.set_num_threads(old_threads)
        cleanup(info)


def _train(cfg: Config, info: DistInfo, progress: bool, chosen: Sequence[Choice]) -> TrainResult:
    t_start = time.perf_counter()
    check_finite(cfg)
    # One run at a time in a work directory: the lock is held from before anything is read
    # there until the end (rank 0 holds it for the job).
    lock = on_main(info, lambda: lock_work_dir(Path(cfg.train.work_dir)))
    log = RunLog(info.is_main)
    try:
        run = build_run(cfg, info, log, progress, t_start, {c.key for c in chosen})
        announce_choices(run, cfg, chosen)
        with StopSignals() as run.stop:
            stop_reason = _loop(run)
        return _finish(run, stop_reason)
    finally:
        log.close()
        if lock is not None:
            lock.release()


# --------------------------------------------------------------------------------------------
# The loop


def _loop(run: Run) -> str:
    """Train until the schedule ends or the budget is spent; returns the stop reason."""
    run.model.train()
    try:
        return _steps(run)
    finally:  # a traceback keeps the loader alive, and its workers ignore SIGTERM: stop them
        stop_workers(run.loader, run.data_iter)  # (or interpreter exit waits for them forever)


def _steps(run: Run) -> str:
    """The steps of :func:`_loop`, until the schedule ends or the budget is spent."""
    tc, st, schedule, budget = run.cfg.train, run.state, run.schedule, run.budget
    planned = schedule.max_iter  # the schedule the last step's learning rate was set for
    while schedule.max_iter is None or st.it < schedule.max_iter:
        t_step = time.perf_counter()
        epoch = st.it // run.spe
        if (st.finish_from < 0 and 0 <= st.finish_at <= st.it
                and run.cfg.data.finish_crop_size is not None):
            _start_finish(run)
        if run.data_iter is None or (st.it % run.spe == 0 and run.sampler.epoch != epoch):
            # The order of each epoch depends only on (seed, epoch): resuming mid-epoch
            # starts the same permutation at the step where the run stopped.
            run.sampler.set_epoch(epoch, st.it % run.spe)
            run.data_iter = iter(run.loader)
        lr = schedule.apply(run.optimizer, st.it)
        planned = schedule.max_iter
        main, aux, ckpt_now, stop_now, interrupted = _step(run, run.data_iter, epoch)
        st.it += 1
        if budget is not None:
            budget.record_step(time.perf_counter() - t_step)
        _log_step(run, lr, main, aux)

        # Time budget: plan / re-plan max_iter (rank 0 decides, everyone follows).
        if budget is not None and budget.due(st.it, schedule.max_iter, st.next_replan):
            _replan(run)
        if stop_now:
            run.log.say(
                f"time budget of {tc.time_budget} min spent at iteration {st.it}; "
                "stopping early and saving the final model"
            )
            return "time_budget"
        if run.val_enabled and st.val_every and (
                st.it % st.val_every == 0 or st.it == schedule.max_iter) and _val_fits(run):
            _validate(run)
            if budget is not None and schedule.max_iter is not None and st.it < schedule.max_iter:
                _replan(run)  # with the measured cost of a validation
        if (st.it % run.spe == 0 or (tc.checkpoint_interval and st.it % tc.checkpoint_interval == 0)
                or ckpt_now or st.it == schedule.max_iter or interrupted):
            _checkpoint(run)
        if interrupted:
            _interrupted(run)
    if planned is not None and schedule.max_iter is not None and schedule.max_iter < planned:
        # A re-plan ended the schedule at this step, before the end the last step's learning
        # rate was set for: the time budget stopped the run, not the schedule.
        run.log.say(f"time budget of {tc.time_budget} min spent at iteration {st.it}")
        return "time_budget"
    return "completed"


def _start_finish(run: Run) -> None:
    """The run's last share begins: the loader switches to ``data.finish_crop_size`` (the
    sampler's order goes on where it was), the network to ``data.finish_output_stride`` when
    set (:func:`~pspnet.engine.setup.switch_network`), and the budget times the larger steps
    afresh."""
    st, dc = run.state, run.cfg.data
    stop_workers(run.loader, run.data_iter)
    st.finish_from = st.it
    switch_network(run)
    run.loader = open_loader(run)
    run.data_iter = None  # the loop starts it at this step's place in the epoch
    if run.budget is not None:
        run.budget.start_finish()
    h, w = dc.finish_crop_size  # type: ignore[misc]
    stride = run.model_config.output_stride
    run.log.event("finish_crop", iter=st.it, crop_size=[h, w], output_stride=stride,
                  elapsed_s=run.elapsed())
    at = (f" at output stride {stride} (data.finish_output_stride)"
          if dc.finish_output_stride is not None else "")
    run.log.say(f"iteration {st.it}: the last {dc.finish_share:.0%} of the run trains on "
                f"{h}x{w} crops (data.finish_crop_size){at}")


def _step(
    run: Run, data_iter: Iterator[Any], epoch: int
) -> tuple[float, float, bool, bool, bool]:
    """One optimizer step over ``accum_steps`` micro-batches.

    Returns:
        ``(main, aux, checkpoint_now, stop_now, interrupted)``: the losses averaged over the
        processes and micro-batches, rank 0's clock decisions (:func:`_clock_flags`) and
        whether any process got SIGINT / SIGTERM, shared with every rank in the same all-reduce
        as the losses (one collective per micro-batch), so all ranks stop at the same step.

    Raises:
        TrainingDiverged: A non-finite loss on any process, before the weights change.
    """
    tc, info, device = run.cfg.train, run.info, run.info.device
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    optimizer.zero_grad(set_to_none=True)
    flags = (0.0, 0.0)
    main_v = aux_v = 0.0
    f_ckpt = f_stop = f_int = 0.0
    for m in range(tc.accum_steps):
        batch = next_batch(data_iter)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if tc.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = m == tc.accum_steps - 1
        sync = (
            model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel)
            and not last_micro else contextlib.nullcontext()
        )  # fmt: skip
        with sync:
            with autocast(device, run.precision):
                outputs = model(images)
            loss, parts = run.criterion(outputs, labels)
            if last_micro and info.is_main:
                flags = _clock_flags(run)
            stats = torch.stack([
                parts["main"].float(), parts["aux"].float(), (~torch.isfinite(loss)).float(),
                torch.tensor(flags[0], device=loss.device),
                torch.tensor(flags[1], device=loss.device),
                torch.tensor(float(run.stop.signum is not None), device=loss.device),
            ])  # fmt: skip
            if is_distributed():
                torch.distributed.all_reduce(stats)
            s_main, s_aux, bad, f_ckpt, f_stop, f_int = stats.tolist()
            w = info.world_size
            if bad > 0:
                raise_diverged(run, epoch, s_main / w, s_aux / w, loss)
            main_v += s_main / w / tc.accum_steps
            aux_v += s_aux / w / tc.accum_steps
            (scaler.scale(loss / tc.accum_steps) if scaler is not None
             else loss / tc.accum_steps).backward()  # fmt: skip
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    # One process: a signal that came after the all-reduce stops this step too.
    interrupted = f_int > 0 or (not is_distributed() and run.stop.signum is not None)
    return main_v, aux_v, f_ckpt > 0, f_stop > 0, interrupted


def _interrupted(run: Run) -> None:
    """After SIGINT / SIGTERM: the checkpoint of this step is written; say how to resume."""
    st, signum = run.state, run.stop.signum or 2
    msg = (f"interrupted at iteration {st.it}: checkpoint saved to {st.last_ckpt_path}; "
           f"continue with --resume auto --work-dir {run.work_dir} (the same options)")
    run.log.event("interrupted", iter=st.it, checkpoint=str(st.last_ckpt_path), signal=signum)
    raise TrainingInterrupted(msg, st.it, st.last_ckpt_path, signum)


def _clock_flags(run: Run) -> tuple[float, float]:
    """(checkpoint now, stop now), decided by rank 0 from the clocks."""
    minutes = run.cfg.train.checkpoint_minutes
    ckpt = minutes > 0 and time.perf_counter() - run.state.last_ckpt_time >= minutes * 60
    stop = run.budget is not None and run.budget.out_of_time(run.elapsed())
    return float(ckpt), float(stop)


def _log_step(run: Run, lr: float, main: float, aux: float) -> None:
    """Progress bar every step; a ``train`` record (means since the last) every
    ``log_interval`` steps, after the first and after the last."""
    tc, st = run.cfg.train, run.state
    it = st.it
    total = main + tc.aux_weight * aux
    sums = st.sums
    sums["loss"] += total
    sums["main"] += main
    sums["aux"] += aux
    sums["n"] += 1
    run.log.progress(total, lr)
    if not (it % tc.log_interval == 0 or it == 1 or it == run.schedule.max_iter):
        return
    n = max(1, sums["n"])
    st.final_loss = sums["loss"] / n
    now = time.perf_counter()
    rec = {
        "iter": it, "epoch": round(it / run.spe, 4), "lr": lr,
        "loss": st.final_loss, "loss_main": sums["main"] / n,
        "loss_aux": sums["aux"] / n, "sec_per_iter": (now - st.t_log) / n,
        "elapsed_s": run.elapsed(), "max_iter": run.schedule.max_iter,
        "progress": run.schedule.progress(it),
    }  # fmt: skip
    run.log.event("train", **rec)
    run.log.scalars(it, {"train/loss": st.final_loss, "train/loss_main": rec["loss_main"],
                         "train/loss_aux": rec["loss_aux"], "train/lr": lr})  # fmt: skip
    st.new_log_interval(now)


def _replan(run: Run) -> None:
    """Plan (or re-plan) max_iter on rank 0 and share the decision."""
    budget, st, tc = run.budget, run.state, run.cfg.train
    if budget is None:  # pragma: no cover - only called with a time budget
        return
    decision = None
    if run.info.is_main:
        if run.val_enabled:
            micro = max(1, tc.batch_size // (tc.accum_steps * run.info.world_size))
            budget.estimate_validation(run.val_images, micro, run.val_pixels_factor)
        decision = budget.replan(
            st.it, run.elapsed(), val_enabled=run.val_enabled, val_every=st.val_every,
            ckpt_every=run.ckpt_every,
        )  # fmt: skip
    plan: Plan = broadcast_object(decision)
    first_plan = run.schedule.max_iter is None
    run.schedule.replan(st.it, plan.max_iter)
    run.log.set_total(plan.max_iter)
    run.log.event("plan", iter=st.it, max_iter=plan.max_iter, first=first_plan,
                  val_every=plan.val_every, **plan.details)  # fmt: skip
    if plan.note:
        run.log.event("val_skipped", iter=st.it, reason=plan.note)
        run.log.say(plan.note)
    if first_plan:
        run.log.say(
            f"time budget: {plan.details['sec_per_iter']:.3f} s per iteration measured, "
            f"planning {plan.max_iter} iterations"
        )
    st.next_replan, st.val_every = plan.next_replan, plan.val_every
    if plan.finish_at is not None and st.finish_from < 0:
        st.finish_at = plan.finish_at


def _val_fits(run: Run) -> bool:
    """Whether a validation fits in the time budget (always True without a budget)."""
    return run.budget is None or run.budget.val_fits(run.elapsed())


def _validate(run: Run) -> None:
    """Whole-image validation; keeps ``best/`` and feeds the budget the measured cost."""
    st, data, it = run.state, run.data, run.state.it
    if data.val is None:  # pragma: no cover - val_enabled implies a val set
        return
    t0 = time.perf_counter()
    metrics = evaluate_model(
        run.net, data.val, num_classes=run.cfg.model.num_classes,
        ignore_index=run.cfg.data.ignore_index, mode="whole", precision=run.precision,
        num_workers=0, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if run.budget is not None:
        run.budget.val_s = seconds
    st.last_val_iter = it
    st.last_metrics = metrics
    improved = math.isfinite(metrics.miou) and metrics.miou > st.best_miou
    if improved:
        st.best_miou = float(metrics.miou)
        st.best_iter = it
        check_saved_weights(run, "best/")
        if run.info.is_main:
            save_weights(run.net, run.work_dir / "best",
                         run.weights_meta(f"best, iteration {it}, val mIoU {metrics.miou:.4f}"))
    run.log.event(
        "val", iter=it, epoch=round(it / run.spe, 4), mIoU=metrics.miou, mAcc=metrics.macc,
        allAcc=metrics.all_acc, iou=[float(x) for x in metrics.iou], seconds=seconds,
        best=improved,
    )  # fmt: skip
    run.log.scalars(it, {"val/mIoU": metrics.miou, "val/mAcc": metrics.macc,
                         "val/allAcc": metrics.all_acc})  # fmt: skip
    run.log.say(
        f"iteration {it}: val mIoU {metrics.miou:.4f}, mAcc {metrics.macc:.4f}, allAcc "
        f"{metrics.all_acc:.4f} ({seconds:.1f} s)" + (" (best)" if improved else "")
    )


def _checkpoint(run: Run) -> None:
    """Everything an exact resume needs (rank 0 writes; every rank gives its RNG state)."""
    st, it = run.state, run.state.it
    t0 = time.perf_counter()
    check_saved_weights(run, "checkpoint")  # every rank: the weights are the same on all
    rng = all_gather_object(rng_state())
    if run.info.is_main:
        path = write_checkpoint(run.work_dir, checkpoint_state(run, rng))
        st.last_ckpt_path = path
        seconds = time.perf_counter() - t0
        if run.budget is not None:
            run.budget.ckpt_s = seconds
        run.log.event("checkpoint", iter=it, path=str(path), seconds=seconds)
    st.last_ckpt_iter = it
    st.last_ckpt_time = time.perf_counter()


# --------------------------------------------------------------------------------------------
# The end


def _finish(run: Run, stop_reason: str) -> TrainResult:
    """Last validation and checkpoint, ``final/`` weights, the ``end`` event, the report."""
    st, it = run.state, run.state.it
    run.log.close_bar()
    if (run.val_enabled and st.val_every != 0 and st.last_val_iter != it
            and stop_reason == "completed" and it > 0):
        if _val_fits(run):
            _validate(run)
        else:
            run.log.event("val_skipped", iter=it, reason="no time left in the budget")
    if st.last_ckpt_iter != it:
        _checkpoint(run)
    final_dir = run.work_dir / "final"
    check_saved_weights(run, "final/")
    if run.info.is_main:
        save_weights(run.net, final_dir, run.weights_meta(f"final, iteration {it}"))
    best = st.best_iter >= 0
    run.log.event(
        "end", iteration=it, reason=stop_reason, elapsed_s=run.elapsed(),
        best_mIoU=st.best_miou if best else None, best_iter=st.best_iter if best else None,
    )  # fmt: skip
    barrier()
    result = TrainResult(
        work_dir=run.work_dir,
        final_dir=final_dir,
        best_dir=run.work_dir / "best" if best else None,
        iterations=it,
        max_iter=run.schedule.max_iter or it,
        epochs=it / run.spe,
        best_miou=st.best_miou if best else None,
        best_iteration=st.best_iter if best else None,
        last_metrics=st.last_metrics,
        final_loss=st.final_loss,
        elapsed_s=run.elapsed(),
        stop_reason=stop_reason,
        resumed_from=run.resumed_from,
        config=run.cfg,
    )
    report_after_training(run)  # report/index.html, after the clock; a failure only warns
    return result
