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

__all__ = ["DEFAULT_EPOCHS", "ELONGATED_ASPECT", "FINISH_OUTPUT_STRIDE", "FINISH_WHOLE_SHARE",
           "WHOLE_FRAME_MAX_PIXELS",
           "WHOLE_FRAME_MIN_EPOCHS", "Choice", "announce_choices", "crop_for_budget",
           "crop_from_images", "crop_reason", "finish_choices", "finish_stride", "planned_steps",
           "precision_reason", "resolve_choices", "schedule_choices", "whole_frame_candidate"]

#: Epochs when neither ``train.max_iter``, ``train.epochs`` nor ``train.time_budget`` is set.
DEFAULT_EPOCHS = 50

#: A time-budgeted run without a crop trains on whole images when its budget affords at least
#: this many epochs of them. Measured on CamVid (360x480 frames, docs/recipe.md): whole frames
#: scored less than 320x320 crops after 17 epochs of them (30 minutes) and more after 34 (60).
WHOLE_FRAME_MIN_EPOCHS = 30

#: A time-budgeted run that keeps the square crop (its budget affords too few epochs of whole
#: images) spends this last share of its budget on whole images, so that it ends on the
#: context it is scored with. Measured on CamVid at 30 minutes (docs/recipe.md): the last third
#: on whole 360x480 frames raised test pixel accuracy over square crops throughout.
FINISH_WHOLE_SHARE = 0.33

#: That last share trains at this output stride (the paper's) when the run's own stride was
#: chosen for the CPU (16, for speed) rather than set: the network ends on the resolution it
#: is then scored at. Measured on CamVid at 30 minutes over five seeds (docs/recipe.md): over
#: stride 16 throughout +0.2 test pixel accuracy (higher on four of five seeds) and -0.4 mIoU,
#: both within the noise, although a stride-8 step of whole frames took 2.4 times as long;
#: the pixel accuracy over the plain loop went from +2.0 to +2.2. The saved model costs ~3x
#: the FLOPs of a stride-16 one at inference.
FINISH_OUTPUT_STRIDE = 8

#: Images at least this much longer than wide (or wider than long) train whole, at any budget,
#: when the square crop is already their full shortest side: a square would keep at most 2/3
#: of the longer side, and with it cut away the scene's far end along it, the context the
#: pyramid exists to see. Measured (docs/recipe.md): on the demo's 448x224 scenes (2:1), whole
#: scenes scored 85.8 mIoU against 65.8 for 224x224 crops after 5 minutes. 1.5 splits that
#: from 4:3 images (a 240x320 crop keeps 3/4), which keep the square crop; not swept between.
ELONGATED_ASPECT = 1.5

#: Whole images are considered only up to this many pixels (four 320x320 crops: 480x640 fits),
#: so that timing one step of them stays cheap and the crops of large images keep their role.
WHOLE_FRAME_MAX_PIXELS = 4 * AUTO_CROP_MAX**2


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


def whole_frame_candidate(square: tuple[int, int], whole: tuple[int, int] | None) -> bool:
    """Whether whole images of size ``whole`` (None: the images differ in size) are worth
    timing against the ``square`` crop chosen from the data: larger than it, and small."""
    return (whole is not None and tuple(whole) != tuple(square)
            and whole[0] * whole[1] <= WHOLE_FRAME_MAX_PIXELS)


def crop_from_images(square: tuple[int, int], whole: tuple[int, int] | None) -> tuple[int, int]:
    """The crop chosen from the images alone: ``whole`` for elongated images whose shortest
    side the ``square`` crop already is (:data:`ELONGATED_ASPECT`), else ``square``."""
    if not whole_frame_candidate(square, whole):
        return square
    h, w = whole  # type: ignore[misc]
    side = square[0]
    elongated = side == min(h, w) and max(h, w) >= ELONGATED_ASPECT * side
    return (h, w) if elongated else square


def crop_reason(crop: tuple[int, int]) -> str:
    """Why the crop :func:`crop_from_images` chose is ``crop``."""
    h, w = crop
    if h == w:
        return (f"the shortest side among the first 16 training images, at most {AUTO_CROP_MAX} "
                "px; --crop-size sets it")
    short, long = min(h, w), max(h, w)
    return (f"the whole {h}x{w} image: a square crop of its {short}-px side would keep only "
            f"{100 * short // long}% of the {long}-px side and cut away the scene's far end "
            f"(images at least {ELONGATED_ASPECT:g}:1 train whole, measured in docs/recipe.md); "
            "--crop-size sets it")


def crop_for_budget(square: tuple[int, int], whole: tuple[int, int], step_s: float,
                    seconds_left: float, batch_size: int,
                    train_images: int) -> tuple[tuple[int, int], Choice]:
    """The crop of a time-budgeted run that set none: the whole image when the time left
    affords at least :data:`WHOLE_FRAME_MIN_EPOCHS` epochs of whole-image steps, else
    ``square``.

    Args:
        square: The crop chosen from the data (:func:`pspnet.data.training.auto_crop`).
        whole: ``(height, width)`` of the training images.
        step_s: Seconds of one optimizer step on whole images, timed on this machine.
        seconds_left: Training seconds the budget leaves (validation's share taken out).
        batch_size: Images per optimizer step.
        train_images: Images per epoch.

    Returns:
        ``(crop, choice)``: the crop (height, width) and the announcement of it.
    """
    epochs = seconds_left / max(step_s, 1e-9) * batch_size / max(train_images, 1)
    (h, w), n = whole, WHOLE_FRAME_MIN_EPOCHS
    timed = f"a whole-image step timed at {step_s:.2f} s on this machine"
    if epochs >= n:
        why = (f"the whole {h}x{w} image: the budget affords ~{epochs:.0f} epochs of it "
               f"({timed}), at least {n}, where whole images scored more than {AUTO_CROP_MAX}-px "
               "crops (measured, docs/recipe.md); --crop-size sets it")
        return (h, w), Choice("data.crop_size", f"[{h}, {w}]", why)
    why = (f"the shortest side among the first 16 training images, at most {AUTO_CROP_MAX} px: "
           f"the budget affords only ~{epochs:.0f} epochs of whole {h}x{w} images ({timed}), "
           f"fewer than the {n} where they start to score more (docs/recipe.md); --crop-size "
           "sets it")
    return square, Choice("data.crop_size", f"[{square[0]}, {square[1]}]", why)


def finish_stride(cfg: Config, stride_chosen: bool) -> int | None:
    """The output stride of a budgeted run's last share on whole images, when the project
    picks it: :data:`FINISH_OUTPUT_STRIDE` when ``model.output_stride`` was chosen (not set)
    and is coarser, and ``data.finish_output_stride`` is unset; else None."""
    if (not stride_chosen or cfg.data.finish_output_stride is not None
            or cfg.model.output_stride <= FINISH_OUTPUT_STRIDE):
        return None
    return FINISH_OUTPUT_STRIDE


def finish_choices(whole: tuple[int, int], share: float = FINISH_WHOLE_SHARE,
                   stride: int | None = None) -> list[Choice]:
    """The announcement of a budgeted run's last ``share`` on ``whole`` images, after the
    square crop :func:`crop_for_budget` kept, at output ``stride`` (None: the run's own)."""
    h, w = whole
    why = (f"the last {share:.0%} of the budget trains on whole {h}x{w} images after the square "
           "crops: the run ends on the context it is scored with (on CamVid at 30 minutes it "
           "raised test pixel accuracy, docs/recipe.md); --crop-size keeps one crop throughout")
    out = [Choice("data.finish_crop_size", f"[{h}, {w}]", why),
           Choice("data.finish_share", f"{share:g}", "with data.finish_crop_size, above")]
    if stride is not None:
        out.append(Choice(
            "data.finish_output_stride", str(stride),
            f"that last share trains at the paper's output stride {stride}, the weights carried "
            "over, and final/ is saved at it: the run ends on the resolution it is scored at "
            "(on CamVid at 30 minutes, five seeds, +0.2 test pixel accuracy and -0.4 mIoU over "
            "one stride throughout, docs/recipe.md); the saved model costs ~3x stride 16's "
            "FLOPs at inference: --set data.finish_output_stride=16 keeps one stride"))  # fmt: skip
    return out


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


def resolve_choices(before: Config, after: Config, device: torch.device, cpus: int,
                    whole: tuple[int, int] | None = None,
                    stride: int | None = None) -> list[Choice]:
    """The choices :func:`~pspnet.engine.run_config.resolve_config` made: ``before`` is the
    config as given, ``after`` the resolved one; ``whole``: the image size a time-budgeted run
    will time against the crop (``--dry-run`` says so), and ``stride`` the output stride of
    its last share on them when the project picks one (:func:`finish_stride`)."""
    out: list[Choice] = []
    if before.data.crop_size is None:
        h, w = after.data.crop_size  # type: ignore[misc]
        why = crop_reason((h, w))
        if whole is not None:
            at = f" at output stride {stride}" if stride is not None else ""
            why += (f". With a time budget, whole {whole[0]}x{whole[1]} images instead when "
                    f"the budget affords at least {WHOLE_FRAME_MIN_EPOCHS} epochs of them, "
                    f"else the last {FINISH_WHOLE_SHARE:.0%} of the budget on them{at}: "
                    "decided after timing one whole-image step as training starts")
        out.append(Choice("data.crop_size", f"[{h}, {w}]", why))
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
    choices = [*chosen, *run.setup_choices]
    made = {c.key for c in choices}  # the set-up's choice (the budget's crop) comes first
    choices += [c for c in resolve_choices(given, run.cfg, run.info.device, usable_cpus())
                if c.key not in made]
    choices += schedule_choices(run.cfg, run.spe)
    if not choices:
        return
    run.log.event("defaults", chosen=[c.to_dict() for c in choices])
    run.log.say("chosen for you (`pspnet train --dry-run` lists them without training):")
    for c in choices:
        run.log.say(f"  {c.line()}")
