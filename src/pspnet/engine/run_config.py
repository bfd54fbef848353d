"""The configuration of a training run: from the flags of ``pspnet train``
(:func:`build_config`), checked against the checkpoint it resumes (:func:`find_resume`,
:func:`check_resume`) and completed for the data and the machine (:func:`resolve_config`);
``pspnet train --dry-run`` (:func:`dry_run`) shows the result without training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch

from pspnet.checkpoint.files import CheckpointError
from pspnet.checkpoint.init_weights import with_init_model
from pspnet.checkpoint.training import find_checkpoint, load_checkpoint
from pspnet.config import Config, ConfigError, apply_overrides, load_yaml, merge
from pspnet.config.flags import TRAIN_FLAGS, flags_tree
from pspnet.data.classes import read_class_file
from pspnet.data.io import MissingDataFileError
from pspnet.data.layouts import get_dataset_spec
from pspnet.data.split import SPLIT_FILE
from pspnet.data.training import TrainData, auto_crop, build_data, whole_frame
from pspnet.engine.defaults import (Choice, crop_from_images, finish_stride, planned_steps,
                                    resolve_choices, schedule_choices, whole_frame_candidate)
from pspnet.engine.distributed import (DistInfo, TrainBatchSampler, broadcast_object, env_world,
                                       is_distributed, resolve_device)
from pspnet.precision import resolve_channels_last, resolve_precision
from pspnet.report.machine import usable_cpus

__all__ = ["CPU_OUTPUT_STRIDE", "CPU_SCALE", "CPU_SCRATCH_BATCH", "CPU_SCRATCH_LR", "build_config",
           "build_config_explained", "check_finite", "check_resume", "describe_dry_run",
           "dry_run", "find_resume", "resolve_config"]

#: Output stride ``pspnet train`` uses on a CPU when neither a config file nor ``--set`` gives
#: one. Measured on two AVX2 cores (pspnet_r18, 240x320 crops, batch 8, fp32): ~2.3-2.9 s a
#: step at stride 16 against ~4x that at stride 8; under a time budget the 4x more steps
#: matter more than the finer features (docs/results.md uses it on CamVid). Also where bf16 is
#: native (AMX Xeon, bf16, one core per run, CamVid test after 15 minutes, docs/recipe.md):
#: stride 16 made 558 steps and scored 35.5 mIoU, stride 8 296 steps and 31.8.
CPU_OUTPUT_STRIDE = 16

#: Images per optimizer step of a from-scratch CPU run without a config file or
#: ``--batch-size`` (the dataclass default elsewhere is 8). A step of 4 costs half a step of 8
#: on a CPU, so the same minutes see the same images in twice the updates. Zen 5 EPYC, CamVid
#: test after 30 minutes, one core per run, three seeds (docs/recipe.md): batch 4 at lr 0.02
#: scored 44.1 mIoU / 84.3 pixel accuracy on the mean against 42.4 / 84.3 for batch 8 at
#: 0.03, higher mIoU on every seed; batch 4 at 0.03 scored 42.8 / 83.9 (seed 0).
CPU_SCRATCH_BATCH = 4

#: Images BatchNorm (and the pyramid's 1x1 bin) needs in each forward pass of training.
MIN_IMAGES_PER_PASS = 2

#: Learning rate of a from-scratch CPU run without a config file, by the images per optimizer
#: step (``train.batch_size``), keyed by the smallest batch each rate is for. The paper's is
#: 0.01 over 100+ epochs. CamVid test, one core per run (docs/recipe.md): at batch 8, on an
#: AMX Xeon with scale 0.75-1.5, 0.02 scored 40.9 mIoU after 30 minutes against 38.8 at 0.01
#: and 0.5-2 (stride 16, one seed); on a Zen 5 EPYC 0.03 raised pixel accuracy over 0.02 on
#: each of three seeds (84.3 against 83.6 on the mean, mIoU 42.4 against 42.2) and 0.04 did
#: not (seed 0). At batch 4 (Zen 5, seed 0) 0.02 scored 44.7 / 84.5 against 0.03's 42.8 / 83.9.
CPU_SCRATCH_LR = {1: 0.02, 8: 0.03}


def cpu_scratch_lr(images_per_step: int) -> float:
    """The learning rate :data:`CPU_SCRATCH_LR` gives for ``images_per_step`` images per
    optimizer step."""
    return CPU_SCRATCH_LR[max(k for k in CPU_SCRATCH_LR if k <= max(1, images_per_step))]


#: Random-scale range of a CPU run without a config file (the paper's is 0.5-2).
#: Measured together with lr 0.02 at batch 8 (:data:`CPU_SCRATCH_LR`'s first value). Leaving out
#: rotation and blur as well changed nothing (40.7).
CPU_SCALE = (0.75, 1.5)


def build_config(
    *args: Any, config_file: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
    **flags: Any,
) -> Config:  # fmt: skip
    """The :class:`Config` of ``pspnet train``: defaults < config file < flags < overrides.

    :func:`build_config_explained` with the same arguments, without the choices.
    """
    return build_config_explained(*args, config_file=config_file, overrides=overrides,
                                  **flags)[0]


def build_config_explained(
    *args: Any, config_file: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
    **flags: Any,
) -> tuple[Config, list[Choice]]:  # fmt: skip
    """The :class:`Config` of ``pspnet train`` (defaults < config file < flags < overrides) and
    the values chosen for the machine where none of them set one.

    With ``train.init_weights`` the model options the tree leaves unset come from those weights
    (:func:`pspnet.checkpoint.init_weights.with_init_model`). Without a config file, on a CPU,
    ``model.output_stride`` defaults to
    :data:`CPU_OUTPUT_STRIDE` (16) unless ``--set model.output_stride=...`` says otherwise; with
    a config file its values (the paper's 8 in ``configs/``) are used as written.

    Args:
        *args: Flag values in the order of :data:`~pspnet.config.flags.TRAIN_FLAGS`
            (``data_root, train_list, val_list, num_classes, class_names, arch, ...``).
        config_file: YAML config (--config).
        overrides: ``key=value`` strings (--set), e.g. ``optim.lr=0.02``.
        **flags: Flag values by name (``batch_size=4``: --batch-size); None: not given.

    Raises:
        ConfigError: Invalid values, or no number of classes anywhere.
        TypeError: An unknown flag name or too many positional values.
    """
    if len(args) > len(TRAIN_FLAGS):
        raise TypeError(f"build_config takes at most {len(TRAIN_FLAGS)} flag values by position")
    for f, value in zip(TRAIN_FLAGS, args):
        if f.dest in flags:
            raise TypeError(f"build_config got two values for {f.dest!r}")
        flags[f.dest] = value
    tree: dict[str, Any] = load_yaml(config_file) if config_file else {}
    tree = merge(tree, flags_tree(flags))
    tree = apply_overrides(tree, list(overrides))
    tree = with_init_model(tree)  # --init-weights: the architecture follows the file
    model = tree.setdefault("model", {})
    if model.get("num_classes") is None and tree.get("data", {}).get("class_names"):
        # --classes-file names the classes: their count is the number of classes.
        try:
            names = read_class_file(tree["data"]["class_names"]).names
        except MissingDataFileError:
            raise ConfigError(f"`data.class_names` (--classes-file): file "
                              f"{tree['data']['class_names']} does not exist") from None
        model["num_classes"] = len(names)
    if model.get("num_classes") is None:
        dataset = tree.get("data", {}).get("dataset")
        if not dataset:
            # The dataclass default (21) would silently train a VOC-sized head on any data.
            raise ConfigError(
                "`model.num_classes` is not set: give --num-classes K (the number of classes in "
                "the labels, the ignore value not counted), --classes-file FILE (one name per "
                "class) or a config file that sets it"
            )
        model["num_classes"] = get_dataset_spec(str(dataset)).num_classes
    chosen = _cpu_choices(tree) if not config_file and _trains_on_cpu(tree) else []
    return Config.from_dict(tree), chosen


def _cpu_choices(tree: dict[str, Any]) -> list[Choice]:
    """The CPU defaults of a run without a config file, set in ``tree`` where it leaves them
    open (written to config.yaml like any value), each with its reason."""
    out = []
    model = tree.setdefault("model", {})
    if "output_stride" not in model:
        model["output_stride"] = CPU_OUTPUT_STRIDE
        out.append(Choice(
            "model.output_stride", str(CPU_OUTPUT_STRIDE),
            "training on a CPU without a config file: a step takes a quarter to a half of "
            "stride 8's time, and the extra steps scored more in the same minutes (measured "
            "on AVX2 and AMX CPUs, docs/recipe.md); --set model.output_stride=8 for the "
            "paper's"))  # fmt: skip
    train, optim = tree.setdefault("train", {}), tree.setdefault("optim", {})
    data = tree.setdefault("data", {})
    scratch = not (train.get("init_weights") or train.get("backbone_weights"))
    if scratch and train.get("batch_size") is None:
        # Each forward pass keeps MIN_IMAGES_PER_PASS over accumulation steps and processes.
        passes = _positive_int(train.get("accum_steps")) * env_world()[1]
        batch = max(CPU_SCRATCH_BATCH, MIN_IMAGES_PER_PASS * passes)
        train["batch_size"] = batch
        out.append(Choice(
            "train.batch_size", str(batch),
            f"training from scratch on a CPU without a config file: a step of "
            f"{CPU_SCRATCH_BATCH} images costs half a step of 8, and twice the updates on the "
            "same images scored more in the same minutes (measured, docs/recipe.md); "
            "--batch-size 8 for the larger batch"))  # fmt: skip
    if scratch and "lr" not in optim:
        batch = train.get("batch_size")
        # A batch that is not a count fails validation later; its rate here is the largest's.
        lr = cpu_scratch_lr(batch if isinstance(batch, int) else max(CPU_SCRATCH_LR))
        optim["lr"] = lr
        out.append(Choice(
            "optim.lr", str(lr),
            f"training from scratch on a CPU without a config file, batch {batch}: tens of "
            f"epochs, not the paper's hundreds, gain from a rate {lr / 0.01:g} times its 0.01 "
            f"({CPU_SCRATCH_LR[min(CPU_SCRATCH_LR)]:g} below {max(CPU_SCRATCH_LR)} images a "
            f"step, {CPU_SCRATCH_LR[max(CPU_SCRATCH_LR)]:g} from {max(CPU_SCRATCH_LR)}; "
            "measured, docs/recipe.md); --set "
            "optim.lr=0.01 for the paper's"))  # fmt: skip
    if "scale" not in data:
        data["scale"] = list(CPU_SCALE)
        out.append(Choice(
            "data.scale", f"[{CPU_SCALE[0]}, {CPU_SCALE[1]}]",
            "training on a CPU without a config file: a short run learns more from milder "
            "rescaling than from the paper's 0.5-2 (measured, docs/recipe.md); --set "
            "data.scale=[0.5,2] for the paper's"))  # fmt: skip
    return out


def _positive_int(value: Any) -> int:
    """``value`` as a count of at least 1 (1 when unset or not a count)."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def _trains_on_cpu(tree: dict[str, Any]) -> bool:
    device = str(tree.get("train", {}).get("device", "auto"))
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def check_finite(cfg: Config) -> None:
    """Refuse a NaN or infinite hyper-parameter (``optim.lr=.inf`` would train to NaN weights).

    Raises:
        ConfigError: Naming the first such key and its value.
    """
    tree = cfg.to_dict()
    for section in ("optim", "train", "data", "preprocess"):
        for key, value in tree.get(section, {}).items():
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                raise ConfigError(
                    f"`{section}.{key}` must be finite, got {value!r}: set a finite value "
                    f"(--set {section}.{key}=...)"
                )


def find_resume(cfg: Config, info: DistInfo) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``train.resume`` names and its state, or None (nothing to resume).

    Rank 0 chooses (``auto``: the newest readable checkpoint of the work dir, None if it has
    none); the other ranks read the file it chose.

    Raises:
        ConfigError: ``train.resume`` names a folder without a training checkpoint (a weights
            directory, an empty folder): resuming nothing would silently start a new run.
        CheckpointError: A checkpoint file that cannot be read.
    """
    resume = cfg.train.resume
    if not resume:
        return None
    found: tuple[Path, dict[str, Any]] | None = None
    path_str: str | None = None
    error: Exception | None = None
    if info.is_main:
        try:
            if resume == "auto":
                found = find_checkpoint(Path(cfg.train.work_dir))
            else:
                found = _named_checkpoint(Path(resume))
        except (ConfigError, CheckpointError) as e:
            if not is_distributed():
                raise
            error = e  # every rank raises it, none waits for a broadcast that never comes
        path_str = str(found[0]) if found else None
    path_str, error = broadcast_object((path_str, error))
    if error is not None:
        raise error
    if path_str is None:
        return None
    if found is None:  # the other ranks read the file rank 0 chose
        found = (Path(path_str), load_checkpoint(path_str))
    return found


def _named_checkpoint(p: Path) -> tuple[Path, dict[str, Any]]:
    """``--resume PATH``: a checkpoint file, a work directory or its ``checkpoints/`` folder."""
    if not p.is_dir():
        return p, load_checkpoint(p)
    found = find_checkpoint(p)
    if found is None and p.name == "checkpoints":
        found = find_checkpoint(p.parent)
    if found is not None:
        return found
    hint = (
        " It is a weights directory (model.safetensors): to start a new run from weights use "
        "train.backbone_weights; to continue a run give its work directory."
        if (p / "model.safetensors").is_file() or (p / "config.json").is_file()
        else " Give the work directory of the run to continue (the one holding checkpoints/)."
    )
    raise ConfigError(
        f"--resume {p}: {p} holds no training checkpoint (no checkpoints/last.pt or prev.pt), "
        f"so there is nothing to resume.{hint} To start a new run, leave --resume out."
    )


def check_resume(cfg: Config, state: dict[str, Any], path: Path, world: int,
                 chosen: Collection[str] = ()) -> Config:
    """Refuse incompatible resumes; take the schedule-defining values from the checkpoint.

    Args:
        cfg: The config of the run that resumes.
        state: The checkpoint's contents (its ``config`` and ``world_size``).
        path: The checkpoint's path, for the messages.
        world: Processes of the run that resumes.
        chosen: Keys :func:`build_config_explained` chose (nothing set them); a chosen batch
            size follows the checkpoint.
    """
    old = state["config"]
    new = cfg.to_dict()
    old_model, new_model = old.get("model", {}), new["model"]
    for key in ("num_classes", "arch"):
        if old_model.get(key) != new_model.get(key):
            raise ConfigError(
                f"cannot resume from {path}: it was trained with model.{key} = "
                f"{old_model.get(key)!r} but the config now says {new_model.get(key)!r}. A "
                "checkpoint continues the same model only; use a new --work-dir to train a "
                "different one (or convert its weights and start afresh)."
            )
    diff = sorted(k for k in new_model if old_model.get(k) != new_model.get(k))
    if diff:
        shown = ", ".join(f"model.{k}: {old_model.get(k)!r} -> {new_model[k]!r}" for k in diff)
        raise ConfigError(
            f"cannot resume from {path}: the model options changed ({shown}); use a new "
            "--work-dir to train a different model"
        )
    if int(state.get("world_size", 1)) != world:
        raise ConfigError(
            f"cannot resume from {path}: it was written by a run with {state.get('world_size')} "
            f"processes, this run has {world}. Resume with the same number of processes "
            "(the data order and batch-norm statistics depend on it)."
        )
    old_train = old.get("train", {})
    if "train.batch_size" in chosen and old_train.get("batch_size") is not None:
        # A batch size the run chose is the checkpoint's: the choice may have changed since.
        cfg = cfg.with_overrides([f"train.batch_size={int(old_train['batch_size'])}"])
        new = cfg.to_dict()
    if old_train.get("batch_size") != cfg.train.batch_size:
        raise ConfigError(
            f"cannot resume from {path}: train.batch_size was {old_train.get('batch_size')}, "
            f"now {cfg.train.batch_size}; the position in the epoch depends on it"
        )
    changed = []
    if old.get("optim") != new["optim"]:
        changed.append("optim.*")
    for key in ("seed", "epochs", "max_iter", "time_budget"):
        if old_train.get(key) != new["train"].get(key):
            changed.append(f"train.{key}")
    if changed:
        warnings.warn(
            f"resuming from {path}: {', '.join(changed)} differ from the checkpoint; the "
            "learning rate, schedule, seed and budget continue from the checkpoint",
            stacklevel=3,
        )
    train_section = {**new["train"], **{k: old_train.get(k) for k in
                                          ("seed", "epochs", "max_iter", "time_budget")}}
    merged = {**new, "optim": old.get("optim", new["optim"]), "train": train_section}
    old_data = old.get("data", {})
    old_crop = old_data.get("crop_size")
    if new["data"].get("crop_size") is None and old_crop is not None:
        # A crop the run chose (from the data, or timed against the budget) stays its crop,
        # and so does the finishing crop chosen with it.
        merged["data"] = {**new["data"], "crop_size": old_crop}
        if not new["data"].get("finish_share") and old_data.get("finish_share"):
            merged["data"].update(finish_crop_size=old_data.get("finish_crop_size"),
                                  finish_share=old_data["finish_share"],
                                  finish_output_stride=old_data.get("finish_output_stride"))
    return Config.from_dict(merged)


def resolve_config(cfg: Config, data: TrainData, device: torch.device) -> Config:
    """Fill in what the config left to the data and the machine, so config.yaml and the
    checkpoints say what actually ran: crop, precision, channels-last, workers.

    ``train.overwrite`` is reset: it was acted on, and a config.yaml reused later must not
    delete a run without being asked again."""
    crop = cfg.data.crop_size or crop_from_images(auto_crop(data.train), whole_frame(data.train))
    precision = resolve_precision(cfg.train.precision, device)
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else min(2, usable_cpus())
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, crop_size=tuple(crop), num_workers=workers),
        train=dataclasses.replace(
            cfg.train, precision=precision, overwrite=False,  # type: ignore[arg-type]
            channels_last=resolve_channels_last(cfg.train.channels_last, device, precision),
        ),
    )


def dry_run(*args: Any, **kwargs: Any) -> str:
    """``pspnet train --dry-run``: the arguments of :func:`build_config`; the text of
    :func:`describe_dry_run` for the config they build, on the device it names."""
    cfg, chosen = build_config_explained(*args, **kwargs)
    check_finite(cfg)
    return describe_dry_run(cfg, chosen, resolve_device(cfg.train.device))


def describe_dry_run(cfg: Config, chosen: Sequence[Choice], device: torch.device) -> str:
    """What ``pspnet train`` would run with ``cfg``: the chosen values with their reasons, the
    data, the schedule and the resolved config. Reads the list files (and the first images'
    sizes); writes nothing, trains nothing.

    Raises:
        ConfigError, DataError: What the training run would raise for the same config and
            data, before its first step.
    """
    data = _data_without_writing(cfg)
    resolved = resolve_config(cfg, data, device)
    tc = resolved.train
    spe = TrainBatchSampler(len(data.train), tc.batch_size, accum_steps=tc.accum_steps, rank=0,
                            world_size=1).steps_per_epoch
    whole = whole_frame(data.train) if cfg.data.crop_size is None and tc.time_budget else None
    if not whole_frame_candidate(resolved.data.crop_size, whole):  # type: ignore[arg-type]
        whole = None
    stride = finish_stride(resolved, any(c.key == "model.output_stride" for c in chosen))
    choices = [*chosen, *resolve_choices(cfg, resolved, device, usable_cpus(), whole, stride),
               *schedule_choices(resolved, spe)]
    if tc.time_budget:
        length = (f"a time budget of {tc.time_budget:g} min: the number of steps is planned "
                  "after timing the first steps on this machine")
    else:
        steps = planned_steps(tc, spe)
        length = f"{steps} steps ({steps / spe:.1f} epochs of {spe} steps)"
    val = "no validation set" if data.val is None else f"{len(data.val)} validation images"
    lines = [
        "pspnet train --dry-run: nothing is trained or written; this is what would run.",
        f"data: {len(data.train)} training images, {val}; batch {tc.batch_size}; {length}",
        f"device: {device}",
        "chosen for you (nothing set these):" if choices else "nothing was chosen for you: "
        "every value comes from the config file, a flag or --set.",
        *(f"  {c.line()}" for c in choices),
        "config (as config.yaml would record it):",
        *("  " + line for line in resolved.to_yaml().splitlines()),
    ]
    return "\n".join(lines) + "\n"


def _data_without_writing(cfg: Config) -> TrainData:
    """``build_data`` with the work dir pointed at a temporary folder: with ``--images
    --labels`` the split record would be written there, and a dry run writes nothing."""
    if not cfg.data.images_dir:
        return build_data(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(cfg.train.work_dir)
        record = work / SPLIT_FILE
        target = Path(tmp)
        if record.is_file():  # the real run would reuse it: so does the dry run
            (target / record.name).write_bytes(record.read_bytes())
        return build_data(dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, work_dir=str(target))))
