"""The time-budget planner of ``pspnet train --time-budget``: how many steps fit the minutes.

Pure arithmetic on measured times (no torch, no clocks): the training loop feeds it step,
validation and checkpoint durations and the elapsed time, and asks it when to stop, whether a
validation still fits, and what ``max_iter`` to plan. In a distributed run rank 0 plans and
shares the :class:`Plan`; see :func:`pspnet.engine.train.train` for the whole story.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["AUTO_VALIDATIONS", "Budget", "Plan"]

#: Number of validations during a run when ``train.val_interval`` is not set.
AUTO_VALIDATIONS = 4


@dataclass(frozen=True)
class Plan:
    """One decision of :meth:`Budget.replan`.

    Attributes:
        max_iter: The planned total of optimizer steps (the poly schedule's end).
        next_replan: The step at which the plan is refreshed next.
        val_every: Steps between validations (0: validation switched off by the budget;
            None: no validation).
        details: What the plan used: ``sec_per_iter``, ``val_s``, ``ckpt_s``, ``available_s``.
        note: Why validation was switched off, or None.
        finish_at: The step at which the run's last share (``data.finish_share``) begins on
            its own crop; None when there is none or it has begun.
    """

    max_iter: int
    next_replan: int
    val_every: int | None
    details: dict[str, float]
    note: str | None = None
    finish_at: int | None = None


@dataclass
class Budget:
    """Plans ``max_iter`` so that the poly schedule ends when the time budget is spent.

    The first ``warmup`` steps of a process are not timed; after ``measure`` more, the mean step
    time ``c`` (data loading included) gives the plan: the largest ``n`` more steps with

        n * c + (validations in the next n steps, the final one included) * v
              + (checkpoints in the next n steps) * s  <=  budget - elapsed - reserve,

    where ``v`` is the cost of one validation (measured once one has run; estimated before as
    a forward pass, ~1/4 of a training step, per validation image, scaled by its size), ``s``
    the cost of a checkpoint, and ``reserve`` the final save plus a margin (1 % of the budget
    and two steps) for timing noise. The plan is refreshed every ~5 % of the run and after each
    validation (the schedule stays continuous, see :class:`~pspnet.engine.optim.PolySchedule`).

    A run whose last ``finish_share`` of the budget trains on a larger crop
    (``data.finish_crop_size``) is planned in two parts: the steps until that share begins at
    ``c``, the rest at ``c * finish_ratio`` (the FLOP ratio of the two crops; see
    :func:`pspnet.engine.setup.finish_ratios`); once it has begun (:meth:`start_finish`) its
    own steps are timed afresh and plan the rest, and a validation measured before it is taken
    to cost ``finish_val_ratio`` times as much (a finer output stride) until one is measured
    again.

    Attributes:
        budget_s: The whole budget in seconds.
        warmup: Steps not timed (allocation, caches, worker start-up).
        measure: Steps timed before the first plan.
        step_times: Seconds of every step so far (:meth:`record_step`).
        val_s: Seconds of the last validation, once one has run.
        val_estimate_s: Estimated seconds of a validation before one has run.
        ckpt_s: Seconds of the last checkpoint (1 s until one is written).
        finish_share: Share of the budget, at its end, on the finishing crop (0: none).
        finish_ratio: Expected step time on the finishing crop over the step time before it.
        finish_val_ratio: Expected validation time once the finishing share has begun over
            the time before it.
        finishing: Whether the finishing share has begun.
    """

    #: Validations may take at most this share of the time left when they are scheduled.
    VAL_SHARE = 0.25

    budget_s: float
    warmup: int
    measure: int
    step_times: list[float] = field(default_factory=list)
    val_s: float | None = None
    val_estimate_s: float = 0.0
    ckpt_s: float = 1.0
    finish_share: float = 0.0
    finish_ratio: float = 1.0
    finish_val_ratio: float = 1.0
    finishing: bool = False

    def start_finish(self) -> None:
        """The finishing share begins: its steps cost more, so they are timed afresh (the
        next plan waits for ``warmup + measure`` of them), and a validation measured before
        costs ``finish_val_ratio`` times as much from now on."""
        self.finishing = True
        self.step_times.clear()
        if self.val_s is not None:
            self.val_s *= self.finish_val_ratio

    def finish_start_s(self) -> float | None:
        """Seconds into the budget at which the finishing share begins (None: no share, or
        it has begun)."""
        if self.finish_share <= 0 or self.finishing:
            return None
        return (1.0 - self.finish_share) * self.budget_s

    def record_step(self, seconds: float) -> None:
        """Add the duration of one optimizer step (data loading included)."""
        self.step_times.append(seconds)

    def ready(self) -> bool:
        """Whether enough steps were timed for a plan."""
        return len(self.step_times) >= self.warmup + self.measure

    def step_time(self) -> float:
        """Mean seconds of the last (up to 50) timed steps."""
        timed = self.step_times[self.warmup :][-50:]
        return sum(timed) / max(1, len(timed))

    def val_cost(self) -> float:
        """Seconds of one validation: measured if one ran, else the estimate."""
        return self.val_s if self.val_s is not None else self.val_estimate_s

    def out_of_time(self, elapsed: float) -> bool:
        """Whether the budget is spent after ``elapsed`` seconds."""
        return elapsed >= self.budget_s

    def val_fits(self, elapsed: float) -> bool:
        """Whether one more validation fits in the time left after ``elapsed`` seconds."""
        return elapsed + self.val_cost() <= self.budget_s

    def due(self, it: int, max_iter: int | None, next_replan: int) -> bool:
        """Whether to plan at step ``it``: the first plan once timed, then at ``next_replan``."""
        if not self.ready():
            return False
        return max_iter is None or (0 <= next_replan <= it < max_iter)

    def estimate_validation(self, images: int, micro_batch: int, pixels_factor: float) -> None:
        """Estimate a validation before one has run: a forward pass (~1/4 of a training step
        of ``micro_batch`` images) per image, scaled by ``pixels_factor`` (validation image
        pixels over crop pixels). Does nothing once a validation was measured."""
        if self.val_s is None:
            per_image = self.step_time() / max(1, micro_batch)
            self.val_estimate_s = images * per_image * pixels_factor / 4.0

    def steps_before_finish(self, elapsed: float) -> int | None:
        """Steps (at the current step time) until the finishing share begins; None when there
        is none or it has begun."""
        start = self.finish_start_s()
        if start is None:
            return None
        return max(0, int((start - elapsed) / max(self.step_time(), 1e-6)))

    def plan(
        self, it: int, elapsed: float, val_every: int | None, ckpt_every: int | None
    ) -> tuple[int, dict[str, float]]:
        """``(max_iter, details)`` for validations every ``val_every`` steps (None: none)."""
        c = max(self.step_time(), 1e-6)
        v = self.val_cost() if val_every else 0.0
        s = self.ckpt_s
        # Reserve: the final save (weights + checkpoint) and a margin for timing noise.
        avail = self.budget_s - elapsed - 2 * s - 0.01 * self.budget_s - 2 * c
        before = self.steps_before_finish(elapsed)
        c_finish = c * self.finish_ratio if before is not None else c

        def cost(n: int) -> float:
            end = it + n
            total = n * c if before is None else min(n, before) * c + max(0, n - before) * c_finish
            if val_every:
                vals = end // val_every - it // val_every
                if end % val_every:
                    vals += 1  # the final validation
                total += vals * v
            if ckpt_every:
                total += (end // ckpt_every - it // ckpt_every) * s
            return total

        lo, hi = 0, max(0, int(avail / min(c, c_finish))) + 1
        while lo < hi:  # the largest n with cost(n) <= avail (cost grows with n)
            mid = (lo + hi + 1) // 2
            if cost(mid) <= avail:
                lo = mid
            else:
                hi = mid - 1
        return it + lo, {"sec_per_iter": c, "val_s": v, "ckpt_s": s, "available_s": avail}

    def replan(
        self, it: int, elapsed: float, *, val_enabled: bool, val_every: int | None,
        ckpt_every: int | None,
    ) -> Plan:  # fmt: skip
        """Plan (or re-plan) at step ``it`` after ``elapsed`` seconds.

        Args:
            it: Optimizer steps done.
            elapsed: Seconds of the budget spent.
            val_enabled: Whether the run validates at all.
            val_every: The validation interval so far; None with validation on: the automatic
                interval, decided here once: up to :data:`AUTO_VALIDATIONS` evenly spaced,
                using at most :attr:`VAL_SHARE` of the time left, none if even one does not fit.
            ckpt_every: Steps between checkpoints.
        """
        vi = val_every
        note = None
        if val_enabled and vi is None:
            left = self.budget_s - elapsed
            v = self.val_cost()
            k = (AUTO_VALIDATIONS if v <= 0
                 else min(AUTO_VALIDATIONS, int(self.VAL_SHARE * left // v)))
            if k <= 0:
                vi = 0
                note = (
                    f"validation skipped: one pass over the validation set takes ~{v:.0f} s "
                    f"of the {left:.0f} s left (more than {self.VAL_SHARE:.0%})"
                )
            else:
                first, _ = self.plan(it, elapsed, None, ckpt_every)
                vi = max(1, math.ceil(max(1, first - it) / k))
        new_max, details = self.plan(it, elapsed, vi if val_enabled and vi else None, ckpt_every)
        remaining = max(0, new_max - it)
        before = self.steps_before_finish(elapsed)
        finish_at = None if before is None else min(new_max, it + before)
        return Plan(new_max, it + max(10, remaining // 20), vi, details, note, finish_at)
