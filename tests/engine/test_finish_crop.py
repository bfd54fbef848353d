"""The run's last share on a larger crop (``data.finish_crop_size`` / ``data.finish_share``):
config checks, the budget's two-part plan, the switch in the loop, and an exact resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _engine_tiny import tiny_config
from pspnet.config import Config, ConfigError, DataConfig
from pspnet.engine import losses
from pspnet.engine.budget import Budget
from pspnet.engine.train import TrainingInterrupted, train

# tiny_data's images are 40x48; the run's crop is 32x32.
FINISH = ["data.finish_crop_size=[40,48]", "data.finish_share=0.5"]


def _cfg(tiny_data: dict, work: Path, *sets: str, **train_opts: object) -> Config:
    opts = {"max_iter": 10, "batch_size": 2, "checkpoint_interval": 3, **train_opts}
    return tiny_config(tiny_data, work, **opts).with_overrides([*FINISH, *sets])


def _events(work: Path, kind: str) -> list[dict]:
    lines = (work / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def _label_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (height, width) of every batch the loss sees, in order."""
    seen: list[tuple[int, int]] = []
    original = losses.PSPLoss.forward

    def recording(self, outputs, target):  # type: ignore[no-untyped-def]
        seen.append(tuple(target.shape[-2:]))
        return original(self, outputs, target)

    monkeypatch.setattr(losses.PSPLoss, "forward", recording)
    return seen


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"finish_crop_size": [40, 48]}, "data.finish_share"),
        ({"finish_share": 0.3}, "data.finish_crop_size"),
        ({"finish_crop_size": 40, "finish_share": 1.0}, "data.finish_share"),
        ({"finish_crop_size": 40, "finish_share": -0.1}, "data.finish_share"),
        ({"finish_crop_size": [4, 48], "finish_share": 0.3}, "data.finish_crop_size"),
    ],
)
def test_finish_settings_are_checked_by_name(values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DataConfig(**values)


def test_one_finish_side_is_a_square() -> None:
    dc = DataConfig(finish_crop_size=40, finish_share=0.25)
    assert dc.finish_crop_size == (40, 40) and dc.finish_share == 0.25


def test_budget_plans_the_finishing_share_at_its_own_step_cost() -> None:
    b = Budget(100.0, warmup=2, measure=5, finish_share=0.5, finish_ratio=2.0)
    for i in range(7):
        b.record_step(100.0 if i < 2 else 1.0)
    plan = b.replan(7, 10.0, val_enabled=False, val_every=None, ckpt_every=None)
    # From 10 s on, 85 s are available (less the final save, 1 % and two steps). The share
    # begins at 50 s: 40 steps of 1 s before it, then the other 45 s at 2 s a step.
    avail = 100.0 - 10.0 - 2.0 - 1.0 - 2.0
    assert plan.finish_at == 7 + 40
    assert plan.max_iter == 7 + 40 + int((avail - 40) / 2.0)
    # Without the share the same budget would plan one step a second.
    plain = Budget(100.0, warmup=2, measure=5)
    plain.step_times = list(b.step_times)
    assert plain.replan(7, 10.0, val_enabled=False, val_every=None,
                        ckpt_every=None).max_iter == 7 + int(avail)
    # Once it has begun, its own steps are timed afresh before the next plan.
    b.start_finish()
    assert b.finishing and not b.ready() and b.finish_start_s() is None
    for i in range(7):
        b.record_step(100.0 if i < 2 else 2.0)
    later = b.replan(60, 55.0, val_enabled=False, val_every=None, ckpt_every=None)
    assert later.finish_at is None and later.max_iter == 60 + int((100 - 55 - 3 - 4) / 2.0)


def test_last_share_of_the_steps_trains_on_the_finish_crop(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _label_sizes(monkeypatch)
    result = train(_cfg(tiny_data, tmp_path / "run"), progress=False)
    assert result.iterations == 10
    assert sizes == [(32, 32)] * 5 + [(40, 48)] * 5
    (event,) = _events(tmp_path / "run", "finish_crop")
    assert event["iter"] == 5 and event["crop_size"] == [40, 48]


def test_resume_after_the_switch_is_bit_identical(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    train(_cfg(tiny_data, reference), progress=False)

    work = tmp_path / "interrupted"
    original = losses.PSPLoss.forward
    calls = [0]

    def interrupt_at_step_7(self, outputs, target):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 7:  # as a Ctrl+C would: the step finishes, a checkpoint is written
            signal.raise_signal(signal.SIGINT)
        return original(self, outputs, target)

    monkeypatch.setattr(losses.PSPLoss, "forward", interrupt_at_step_7)
    with pytest.raises(TrainingInterrupted):
        train(_cfg(tiny_data, work), progress=False)
    monkeypatch.setattr(losses.PSPLoss, "forward", original)
    sizes = _label_sizes(monkeypatch)
    result = train(_cfg(tiny_data, work, resume="auto"), progress=False)
    assert result.iterations == 10 and sizes == [(40, 48)] * 3  # the finish crop, resumed
    a = load_file(work / "final" / "model.safetensors")
    b = load_file(reference / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
