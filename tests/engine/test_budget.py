"""The time-budget planner: plan, re-plan, validation fitting (pure arithmetic)."""

from __future__ import annotations

from pspnet.engine.budget import AUTO_VALIDATIONS, Budget


def _timed(budget_s: float, step_s: float, steps: int = 7) -> Budget:
    b = Budget(budget_s, warmup=2, measure=5)
    for i in range(steps):
        b.record_step(100.0 if i < 2 else step_s)  # the warm-up steps are not counted
    return b


def test_not_ready_before_warmup_and_measure() -> None:
    b = _timed(60.0, 1.0, steps=6)
    assert not b.ready() and not b.due(6, None, -1)
    b.record_step(1.0)
    assert b.ready() and b.step_time() == 1.0
    assert b.due(7, None, -1)  # the first plan
    assert not b.due(7, 100, -1) and not b.due(7, 100, 8) and b.due(8, 100, 8)
    assert not b.due(100, 100, 50)  # the schedule ended


def test_plan_fills_the_budget_with_steps_and_checkpoints() -> None:
    b = _timed(100.0, 1.0)
    max_iter, details = b.plan(0, 0.0, None, None)
    # 100 s - 2 s (final save) - 1 s (1 %) - 2 steps = 95 steps.
    assert max_iter == 95 and details["available_s"] == 95.0 and details["val_s"] == 0.0
    b.ckpt_s = 5.0
    with_ckpt, _ = b.plan(0, 0.0, None, 10)
    # avail = 100 - 10 - 1 - 2 = 87; n + 5 * (n // 10) <= 87 -> n = 59 (59 + 25 = 84; 60 + 30 > 87)
    assert with_ckpt == 59
    later, _ = b.plan(40, 50.0, None, None)
    assert later == 40 + 37  # 100 - 50 spent - 10 - 1 - 2: the time spent counts


def test_plan_counts_validations_and_the_final_one() -> None:
    b = _timed(100.0, 1.0)
    b.val_s = 10.0
    max_iter, details = b.plan(0, 0.0, 20, None)
    # n steps + validations at 20, 40, ... and one at the end must fit 95 s.
    n = max_iter
    vals = n // 20 + (1 if n % 20 else 0)
    assert n + 10 * vals <= 95 < (n + 1) + 10 * ((n + 1) // 20 + (1 if (n + 1) % 20 else 0))
    assert details["val_s"] == 10.0


def test_replan_auto_validation_interval_and_next_refresh() -> None:
    b = _timed(1000.0, 1.0)
    plan = b.replan(7, 10.0, val_enabled=True, val_every=None, ckpt_every=None)
    assert plan.note is None and plan.val_every is not None and plan.val_every > 0
    # Evenly spaced: AUTO_VALIDATIONS of them over the steps a run without validation gets.
    first, _ = b.plan(7, 10.0, None, None)
    assert plan.val_every == -(-(first - 7) // AUTO_VALIDATIONS)
    assert plan.next_replan == 7 + max(10, (plan.max_iter - 7) // 20)
    # A decided interval is kept on a re-plan.
    again = b.replan(50, 60.0, val_enabled=True, val_every=plan.val_every, ckpt_every=None)
    assert again.val_every == plan.val_every


def test_replan_switches_validation_off_when_one_does_not_fit() -> None:
    b = _timed(100.0, 1.0)
    b.val_s = 60.0  # more than VAL_SHARE of the time left
    plan = b.replan(7, 10.0, val_enabled=True, val_every=None, ckpt_every=None)
    assert plan.val_every == 0 and plan.note is not None and "validation skipped" in plan.note
    assert plan.details["val_s"] == 0.0  # no validations planned
    off = b.replan(7, 10.0, val_enabled=False, val_every=None, ckpt_every=None)
    assert off.val_every is None and off.note is None


def test_val_fits_and_out_of_time() -> None:
    b = _timed(100.0, 1.0)
    b.estimate_validation(images=40, micro_batch=4, pixels_factor=2.0)
    assert b.val_cost() == 40 * 1.0 / 4 * 2.0 / 4.0  # 5 s
    assert b.val_fits(95.0) and not b.val_fits(95.1)
    b.val_s = 1.0
    b.estimate_validation(images=400, micro_batch=1, pixels_factor=1.0)  # measured wins
    assert b.val_cost() == 1.0
    assert not b.out_of_time(99.9) and b.out_of_time(100.0)
