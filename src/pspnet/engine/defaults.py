"""What ``pspnet train`` chose where nothing set a value, and why; ``pspnet train --dry-run``.

A value is *chosen* when neither the config file, a flag nor ``--set`` gave it and the project
picked it from the machine or the data (output stride on a CPU, crop size, precision, memory
format, loader workers, schedule length, validation cadence). Each choice carries its reason;
the training log's first lines and ``--dry-run`` show them, so that nothing a run depends on is
silent. (``--dry-run`` itself: :func:`pspnet.engine.run_config.dry_run`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pspnet.config import Config, TrainConfig
from pspnet.data.training import AUTO_CROP_MAX
from pspnet.engine.budget import AUTO_VALIDATIONS
from pspnet.report.machine import usable_cpus

if TYPE_CHECKING:
    from pspnet.engine.state import Run

__all__ = ["DEFAULT_EPOCHS", "Choice", "announce_choices", "planned_steps", "precision_reason",
           "resolve_choices", "schedule_choices"]

#: Epochs when neither ``train.max_iter``, ``train.epochs`` nor ``train.time_budget`` is set.
DEFAULT_EPOCHS = 50


@dataclass(frozen=True)
class Choice:
    """One value the project chose, and why.

    Attributes:
        key: The dotted config key (``data.crop_size``).
        value: The chosen value, as written to config.yaml.
        why: The reason, naming what it was chosen from and how to set it instead.
    """

    key: str
    value: str
    why: str

    def line(self) -> str:
        return f"{self.key} = {self.value}: {self.why}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def planned_steps(tc: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of a run without a time budget: ``max_iter``, else its epochs (or
    :data:`DEFAULT_EPOCHS`) of ``steps_per_epoch``."""
    return tc.max_iter or (tc.epochs or DEFAULT_EPOCHS) * steps_per_epoch


def precision_reason(precision: str, device: torch.device) -> str:
    """Why ``train.precision: auto`` became ``precision`` on ``device``."""
    if device.type == "cuda":
        return ("this GPU computes bf16" if precision == "bf16" else
                "this GPU has no bf16: fp16 with a gradient scaler")
    capability = torch.backends.cpu.get_cpu_capability()
    if precision == "bf16":
        return f"this CPU computes bf16 natively (AVX512-BF16/AMX; torch reports {capability})"
    return (f"this CPU has no native bf16 (torch reports {capability}): emulated bf16 is slower "
            "than fp32; --set train.precision=bf16 forces it")


def resolve_choices(before: Config, after: Config, device: torch.device,
                    cpus: int) -> list[Choice]:
    """The choices :func:`~pspnet.engine.run_config.resolve_config` made: ``before`` is the
    config as given, ``after`` the resolved one."""
    out: list[Choice] = []
    if before.data.crop_size is None:
        h, w = after.data.crop_size  # type: ignore[misc]
        out.append(Choice("data.crop_size", f"[{h}, {w}]",
                          f"the shortest side among the first 16 training images, at most "
                          f"{AUTO_CROP_MAX} px; --crop-size sets it"))
    tb, ta = before.train, after.train
    if tb.precision == "auto":
        out.append(Choice("train.precision", ta.precision, precision_reason(ta.precision, device)))
    if tb.channels_last == "auto":
        why = ("channels-last is faster for bf16/fp16 and on CUDA" if ta.channels_last else
               "fp32 on a CPU: channels-last is slower there")
        out.append(Choice("train.channels_last", str(ta.channels_last).lower(), why))
    if before.data.num_workers is None:
        out.append(Choice("data.num_workers", str(after.data.num_workers),
                          f"min(2, the {cpus} CPU(s) this process may use); "
                          "--set data.num_workers=N sets it"))
    return out


def schedule_choices(cfg: Config, steps_per_epoch: int) -> list[Choice]:
    """The schedule length and validation cadence chosen when the config leaves them open."""
    tc = cfg.train
    out: list[Choice] = []
    if not (tc.max_iter or tc.epochs or tc.time_budget):
        out.append(Choice("train.epochs", str(DEFAULT_EPOCHS),
                          f"the default length ({DEFAULT_EPOCHS * steps_per_epoch} steps of "
                          f"{steps_per_epoch} per epoch); --epochs, --time-budget or "
                          "--set train.max_iter=N sets it"))
    if tc.val_interval is None:
        when = ("planned once the first steps are timed, taking at most a quarter of the time "
                "left (none when one pass would take more)" if tc.time_budget else
                "evenly over the run")
        out.append(Choice("train.val_interval", "auto",
                          f"{AUTO_VALIDATIONS} validations {when}; --set train.val_interval=N "
                          "sets it"))
    return out


def announce_choices(run: Run, given: Config, chosen: Sequence[Choice]) -> None:
    """Show (above the progress bar) and log (a ``defaults`` record in log.jsonl) the values
    chosen for a new run: ``chosen`` from the config's construction, the rest from ``given``
    (the config before it was resolved) against ``run.cfg``. Nothing for a resumed run, which
    continues with the values announced when it started."""
    if run.resumed_from is not None:
        return
    choices = [*chosen, *resolve_choices(given, run.cfg, run.info.device, usable_cpus()),
               *schedule_choices(run.cfg, run.spe)]
    if not choices:
        return
    run.log.event("defaults", chosen=[c.to_dict() for c in choices])
    run.log.say("chosen for you (`pspnet train --dry-run` lists them without training):")
    for c in choices:
        run.log.say(f"  {c.line()}")
