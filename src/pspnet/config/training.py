"""Training configuration: data, optimiser, loop, and the root :class:`Config` that holds them.

The defaults are a CPU recipe: a ResNet-18 PSPNet at output stride 8 with a 256-channel head,
trained with the paper's optimiser and augmentation. ``pspnet train`` without a config file
changes some of them for the machine and budget and says which and why
(:mod:`pspnet.engine.defaults`). The paper's recipes for ADE20K / VOC / Cityscapes are the YAML
files in ``configs/``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pspnet.config.core import (
    ConfigError,
    _check,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)
from pspnet.config.limits import check_limit
from pspnet.config.model import ModelConfig, Preprocessing

#: Model defaults of a training :class:`Config` (CPU friendly). ``head_channels`` follows the
#: architecture unless set explicitly: 256 for the light BasicBlock nets, the paper's 512 else.
TRAIN_DEFAULT_ARCH = "pspnet_r18"
LIGHT_ARCHS = ("pspnet_r18", "pspnet_r34")


def default_head_channels(arch: str) -> int:
    """Fusion-conv width used when a training config does not set ``model.head_channels``."""
    return 256 if arch in LIGHT_ARCHS else 512


def _crop_pair(value: Any, key: str) -> tuple[int, int] | None:
    """One crop size or ``[height, width]`` as a ``(height, width)`` tuple (None stays None).

    Raises:
        ConfigError: Not one or two whole numbers, a side below 8 or above the crop limit; the
            message names ``key``.
    """
    if value is None:
        return None
    # A bare number means a square; a string is refused whole, not read as its characters.
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    _check(
        len(pair) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in pair),
        key,
        f"must be one size or [height, width], each a whole number of at least 8, "
        f"got {value!r}",
    )
    for side in pair:
        check_limit("crop", side, key, low=8)
    return pair


@dataclass(frozen=True)
class DataConfig:
    """Where the training and validation data are, and how training crops are made.

    Give either list files (the authors' format: ``image label`` per line, relative to
    ``root``) or a registered ``dataset`` layout with its splits.
    """

    root: str | None = None
    """Data root; paths in the list files are relative to it."""
    train_list: str | None = None
    """Training list file (``image_path label_path`` per line)."""
    images_dir: str | None = None
    """Folder of training images paired with ``labels_dir`` by file stem (``a.jpg`` with
    ``a.png``): own data without a list file, instead of ``train_list`` or ``dataset``.
    Relative to the working directory, not to ``root``."""
    labels_dir: str | None = None
    """Folder of the labels of ``images_dir`` (index PNGs, or colour masks read through a
    ``class_names`` file with ``R G B`` columns)."""
    val_fraction: float | None = None
    """With ``images_dir``: the share of the pairs held out for validation (0 < f < 1), drawn
    with ``train.seed`` and written to ``WORK_DIR/split.json`` (plus ``train.txt``/``val.txt``
    list files), which later runs in that work dir (a resume) reuse. None: no validation."""
    val_list: str | None = None
    """Validation list file; None (and no ``dataset``) means no validation during training."""
    dataset: str | None = None
    """A registered layout (camvid, ade20k, voc2012, cityscapes) read from ``root`` by split,
    used when no list file is given. It also supplies the label map and class names."""
    train_split: str = "train"
    """Split of ``dataset`` to train on (e.g. ``train_aug`` for VOC)."""
    val_split: str = "val"
    """Split of ``dataset`` to validate on."""
    label_map: str | None = None
    """``none``, ``reduce_zero_label`` (ADE20K) or ``cityscapes_label_ids``; None: the
    registered dataset's own map, or none for list files."""
    ignore_index: int = 255
    """Label value left out of the loss and the metrics."""
    class_names: str | None = None
    """File of class names (one per line, or ``index<TAB>name<TAB>R G B`` lines); stored with
    the trained weights. None: the registered dataset's names, else ``class_<i>``."""
    crop_size: int | tuple[int, int] | None = None
    """Training crop (height, width) or one side. None: chosen from the data, the smaller of
    320 and the shortest image side seen among the first training images (CPU default)."""
    finish_crop_size: int | tuple[int, int] | None = None
    """Crop (height, width) or one side of the run's last ``finish_share``, e.g. the whole
    image after cheaper square crops, so that the network ends on the context it is scored
    with. None: one crop throughout."""
    finish_share: float = 0.0
    """Share of the run trained on ``finish_crop_size`` (0 <= share < 1): of the time budget
    when there is one, else of the steps. 0: none."""
    finish_output_stride: int | None = None
    """Output stride (8, 16 or 32) of the network during the run's last ``finish_share``: e.g.
    the paper's 8 after cheaper steps at 16. The weights carry over (a stride changes no
    parameter shapes) and ``final/`` is saved at this stride. None: ``model.output_stride``
    throughout."""
    scale: tuple[float, float] | None = (0.5, 2.0)
    """Random scale range (the paper: 0.5 to 2.0); null disables."""
    rotate: tuple[float, float] | None = (-10.0, 10.0)
    """Random rotation range in degrees, applied with p=0.5; null disables."""
    blur: bool = True
    """Random 5x5 Gaussian blur with p=0.5 (the authors' code)."""
    flip: bool = True
    """Random horizontal flip with p=0.5."""
    num_workers: int | None = None
    """DataLoader worker processes per training process; None: min(2, CPU cores)."""
    persistent_workers: bool = False
    """Keep the workers alive between epochs (faster epochs, more memory)."""
    scan_labels: bool = True
    """Read every label before the first step so a bad value fails at once, naming the file."""
    skip_bad: int = 0
    """Bad samples (unreadable, truncated or corrupt image or label, size mismatch, label
    values out of range) to leave out of training and validation, with a report in
    ``WORK_DIR/skipped.json``; more than this many stops the run before the first step, listing
    them. 0 (the default): stop at the first bad file. When > 0 every image is decoded in full
    before training (truncated files have readable headers). ``pspnet train --skip-bad [N]``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_size", _crop_pair(self.crop_size, "data.crop_size"))
        self._check_finish()
        for key, rng in (("data.scale", self.scale), ("data.rotate", self.rotate)):
            if rng is not None:
                object.__setattr__(self, key.split(".")[1], tuple(float(v) for v in rng))
                _check(rng[0] <= rng[1], key, f"must be [low, high] with low <= high, got {rng!r}")
        _check(
            self.scale is None or self.scale[0] > 0,
            "data.scale",
            f"must be positive, got {self.scale!r}",
        )
        if self.scale is not None:
            check_limit("scale", self.scale[1], "data.scale (its high end)", low=0)
        _check(
            isinstance(self.skip_bad, int) and self.skip_bad >= 0,
            "data.skip_bad",
            f"must be a number of samples >= 0, got {self.skip_bad!r}",
        )
        _check(
            self.num_workers is None or self.num_workers >= 0,
            "data.num_workers",
            f"must be >= 0 or null, got {self.num_workers!r}",
        )
        _check(
            isinstance(self.ignore_index, int) and self.ignore_index >= 0,
            "data.ignore_index",
            f"must be a non-negative integer, got {self.ignore_index!r}",
        )
        self._check_folders()

    def _check_finish(self) -> None:
        """``finish_crop_size`` and ``finish_share`` come together; the crop is a valid size."""
        fc = _crop_pair(self.finish_crop_size, "data.finish_crop_size")
        object.__setattr__(self, "finish_crop_size", fc)
        share = self.finish_share
        _check(
            isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share < 1,
            "data.finish_share",
            f"must be a share of the run, 0 <= share < 1, got {share!r}",
        )
        object.__setattr__(self, "finish_share", float(share))
        _check(
            (fc is None) == (share == 0),
            "data.finish_share" if fc is not None else "data.finish_crop_size",
            "must be set with data.finish_crop_size (the crop of the run's last share)"
            if fc is not None else
            f"must be set with data.finish_share {share:g} (the crop of the run's last share)",
        )
        fos = self.finish_output_stride
        _check(fos is None or (isinstance(fos, int) and not isinstance(fos, bool)
                               and fos in (8, 16, 32)),
               "data.finish_output_stride", f"must be 8, 16, 32 or null, got {fos!r}")
        _check(fos is None or share > 0, "data.finish_output_stride",
               "applies to the run's last share: set it with data.finish_crop_size and "
               "data.finish_share")

    def _check_folders(self) -> None:
        """``images_dir``/``labels_dir`` come together, alone, and ``val_fraction`` with them."""
        if self.images_dir is None and self.labels_dir is None:
            _check(
                self.val_fraction is None,
                "data.val_fraction",
                "splits image and label folders: give --images DIR --labels DIR with it (a "
                "list file's validation set is --val-list)",
            )
            return
        for key, value, flag in (("images_dir", self.images_dir, "--images"),
                                 ("labels_dir", self.labels_dir, "--labels")):
            _check(value is not None and str(value).strip() != "", f"data.{key}",
                   f"is missing: give both --images DIR and --labels DIR ({flag} is not set)")
        for key, flag in (("train_list", "--train-list"), ("val_list", "--val-list"),
                          ("dataset", "data.dataset"), ("root", "--data-root")):
            _check(
                getattr(self, key) is None,
                f"data.{key}",
                f"({flag}) cannot be combined with image and label folders (--images/--labels): "
                "give the folders or a list file / data set, not both",
            )
        f = self.val_fraction
        _check(
            f is None or (isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1),
            "data.val_fraction",
            f"must be a share between 0 and 1 (e.g. 0.2 holds out a fifth), got {f!r}",
        )


@dataclass(frozen=True)
class OptimConfig:
    """The paper's optimiser: SGD with momentum, poly learning-rate decay, 10x LR on new layers."""

    lr: float = 0.01
    """Base learning rate of the backbone (hszhao/semseg ``base_lr``)."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    """L2 weight decay on every parameter (as the authors)."""
    power: float = 0.9
    """Poly schedule: ``lr * (1 - iter / max_iter) ** power``, updated every iteration."""
    head_lr_mult: float = 10.0
    """LR multiplier of the newly initialised layers (``model.head`` and ``model.aux_head``)."""
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be positive, got {self.lr!r}")
        _check(0 <= self.momentum < 1, "optim.momentum",
               f"must be in [0, 1), got {self.momentum!r}")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(self.power >= 0, "optim.power", "must be >= 0")
        _check(self.head_lr_mult > 0, "optim.head_lr_mult", "must be positive")
        _check(
            not self.nesterov or self.momentum > 0,
            "optim.nesterov",
            "needs optim.momentum > 0",
        )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    CPU defaults (only data and --num-classes given, no config file): ``pspnet_r18`` at output
    stride 16 (set by ``pspnet train``; see :data:`pspnet.engine.run_config.CPU_OUTPUT_STRIDE`),
    batch 8 images per step, bf16 autocast when the CPU computes bf16 natively (AVX512-BF16 or
    AMX; fp32 otherwise, where bf16 is emulated and slower), channels-last memory format, 50
    epochs. Measured on a two-core AMD EPYC (AVX2, fp32): ResNet-18 PSPNet, head 256, crop
    240x320, batch 8 takes ~2.3-2.9 s per step at output stride 16 and about 4x that at output
    stride 8, so ``--time-budget`` is the practical way to size a CPU run.
    """

    work_dir: str = "work_dirs/pspnet"
    """Output folder: ``checkpoints/``, ``final/``, ``best/``, ``config.yaml``, ``log.jsonl``."""
    epochs: int | None = None
    """Epochs (an epoch is len(train set) // batch_size steps). None: 50, unless ``max_iter``
    or ``time_budget`` decide."""
    max_iter: int | None = None
    """Total optimizer steps; overrides ``epochs``."""
    time_budget: float | None = None
    """Minutes of wall time for the whole run; overrides ``epochs``/``max_iter`` (see
    :func:`pspnet.engine.train.train`)."""
    batch_size: int = 8
    """Images per optimizer step, summed over all processes and accumulation steps (the
    paper's 16). Each forward pass sees batch_size / (world_size * accum_steps) images."""
    accum_steps: int = 1
    """Gradient accumulation: forward/backward passes per optimizer step."""
    aux_weight: float = 0.4
    """Weight of the auxiliary (stage-4) loss."""
    class_weights: tuple[float, ...] | Literal["enet", "median_freq"] | None = None
    """Per-class loss weights: a list of num_classes numbers, or computed from the training
    labels' pixel counts before the first step: ``enet`` (``1/ln(1.02 + p)``) or
    ``median_freq`` (``median(p)/p``). None: unweighted, as the paper."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision. auto: bf16 on a CPU with native bf16, fp32 on other CPUs; bf16 on
    CUDA devices that support it, else fp16 with a GradScaler."""
    channels_last: bool | Literal["auto"] = "auto"
    """Channels-last memory format. auto: on for CUDA and for bf16/fp16 steps (what tensor
    cores and oneDNN's bf16 kernels want), off for fp32 on a CPU, where it measured 10%
    (pspnet_r18, 240x320, batch 8) to 16% (pspnet50, 473x473, batch 2) slower on AVX2."""
    sync_bn: bool = True
    """Synchronise BatchNorm statistics across processes when the world size is above 1."""
    seed: int = 0
    """Seed of the initialisation, the data order and every augmentation."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int | None = None
    """torch intra-op threads per process; None: torch's default."""
    resume: str | None = None
    """``auto`` (the newest good checkpoint in work_dir, if any; else a new run) or a checkpoint
    path (a file, or a work directory: an error if it holds no training checkpoint)."""
    overwrite: bool = False
    """Start a new run in a work_dir that holds one (its checkpoints, final/, best/ and log are
    deleted first). Without it, that is an error; see ``pspnet.engine.safety``."""
    backbone_weights: str | None = None
    """ImageNet ResNet weights for the backbone (torchvision or the authors' deep-stem file),
    a path or a zoo name (``resnet18_imagenet``). Not loaded when ``init_weights`` is set."""
    init_weights: str | None = None
    """Fine-tuning: start from these weights, a path to anything ``pspnet.load_model`` reads
    but an export, or a zoo name. Every tensor whose name and shape match is loaded; the rest
    (the classifiers, for another number of classes) keep their fresh initialisation; the log
    says which. The model's architecture options follow the file unless the config sets them
    (:mod:`pspnet.checkpoint.init_weights`). Not together with ``resume``."""
    val_interval: int | None = None
    """Validate every this many ``val_unit``; 0 disables; None: four evenly spaced
    validations (the last one at the end)."""
    val_unit: Literal["epoch", "iter"] = "epoch"
    checkpoint_interval: int = 0
    """Also write a checkpoint every this many iterations (0: only at epoch ends)."""
    checkpoint_minutes: float = 10.0
    """Also write a checkpoint after this many minutes without one (0 disables)."""
    log_interval: int = 10
    """Iterations between ``log.jsonl`` training records."""
    tensorboard: bool = False
    """Also log to TensorBoard under ``work_dir/tb`` (if the tensorboard package is installed)."""
    dist_timeout: float = 600.0
    """Seconds a process waits on the others before the job fails (a dead rank ends the job)."""
    budget_warmup_iters: int = 2
    """With a time budget: iterations not timed (allocation, caches, worker start-up)."""
    budget_measure_iters: int = 5
    """With a time budget: iterations timed before the first plan of max_iter."""

    def __post_init__(self) -> None:
        def positive(key: str, value: Any) -> None:
            _check(
                value is None or (isinstance(value, int) and value >= 1),
                f"train.{key}",
                f"must be a positive integer or null, got {value!r}",
            )

        for key in ("epochs", "max_iter", "threads"):
            positive(key, getattr(self, key))
        for key in ("batch_size", "accum_steps", "log_interval", "budget_measure_iters"):
            positive(key, getattr(self, key))
        _check(
            self.time_budget is None or self.time_budget > 0,
            "train.time_budget",
            f"must be a positive number of minutes, got {self.time_budget!r}",
        )
        _check(
            self.batch_size % self.accum_steps == 0,
            "train.accum_steps",
            f"must divide train.batch_size ({self.batch_size}), got {self.accum_steps}",
        )
        _check(self.aux_weight >= 0, "train.aux_weight", "must be >= 0")
        # Checked here, not where the augmentation uses it (inside a loader worker process).
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool)
            and 0 <= self.seed < 2**63,
            "train.seed",
            f"must be an integer from 0 to 2**63-1, got {self.seed!r}",
        )
        _check(
            not isinstance(self.class_weights, tuple) or all(w > 0 for w in self.class_weights),
            "train.class_weights",
            f"must be positive numbers, 'enet', 'median_freq' or null, got {self.class_weights!r}",
        )
        _check(
            self.val_interval is None or self.val_interval >= 0,
            "train.val_interval",
            "must be >= 0 (0 disables) or null",
        )
        _check(self.checkpoint_interval >= 0, "train.checkpoint_interval", "must be >= 0")
        _check(self.checkpoint_minutes >= 0, "train.checkpoint_minutes", "must be >= 0")
        _check(self.dist_timeout > 0, "train.dist_timeout", "must be positive (seconds)")
        _check(self.budget_warmup_iters >= 0, "train.budget_warmup_iters", "must be >= 0")
        _check(
            self.resume is None or bool(str(self.resume).strip()),
            "train.resume",
            "must be 'auto', a checkpoint path, or null",
        )
        _check(
            self.init_weights is None or bool(str(self.init_weights).strip()),
            "train.init_weights",
            "must be a weights path, a zoo name, or null",
        )
        _check(
            not (self.init_weights and self.resume),
            "train.init_weights",
            f"({self.init_weights!r}) starts a new run from other weights and train.resume "
            f"({self.resume!r}) continues a run from its own checkpoint: give one of them "
            "(--init-weights or --resume). To continue an interrupted fine-tuning run: "
            "pspnet train --config WORK_DIR/config.yaml --set train.init_weights=null "
            "--resume auto",
        )
        _check(
            self.device == "auto"
            or self.device == "cpu"
            or self.device == "cuda"
            or self.device.startswith("cuda:"),
            "train.device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


def _default_model() -> ModelConfig:
    return ModelConfig(arch=TRAIN_DEFAULT_ARCH,
                       head_channels=default_head_channels(TRAIN_DEFAULT_ARCH))


@dataclass(frozen=True)
class Config:
    """Everything a training run needs; saved as ``WORK_DIR/config.yaml`` and in checkpoints.

    Sections: ``model`` (:class:`ModelConfig`), ``data`` (:class:`DataConfig`), ``optim``
    (:class:`OptimConfig`), ``train`` (:class:`TrainConfig`), ``preprocess``
    (:class:`Preprocessing`). Build it with :meth:`from_dict` / :meth:`from_yaml`, which fill
    unset keys from the defaults (``model.head_channels`` following the architecture), and
    change it with :meth:`with_overrides` (``"optim.lr=0.02"``).
    """

    model: ModelConfig = dataclasses.field(default_factory=_default_model)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preprocess: Preprocessing = dataclasses.field(default_factory=Preprocessing)

    def __post_init__(self) -> None:
        ii = self.data.ignore_index
        _check(
            not 0 <= ii < self.model.num_classes,
            "data.ignore_index",
            f"{ii} is also a class index (model.num_classes is {self.model.num_classes}); "
            "use a value outside the classes, usually 255",
        )
        cw = self.train.class_weights
        _check(
            not isinstance(cw, tuple) or len(cw) == self.model.num_classes,
            "train.class_weights",
            f"has {len(cw) if isinstance(cw, tuple) else 0} values but model.num_classes is "
            f"{self.model.num_classes}; give one weight per class",
        )

    def finish_model(self) -> ModelConfig:
        """The model of the run's last share: ``model`` at ``data.finish_output_stride`` (the
        same ``model`` when that is unset)."""
        stride = self.data.finish_output_stride
        return self.model if stride is None else dataclasses.replace(self.model,
                                                                      output_stride=stride)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        """Build from a nested mapping; missing keys take the training defaults.

        ``model.head_channels`` defaults to 256 for pspnet_r18/r34 and 512 for the other
        architectures unless the mapping sets it.

        Raises:
            ConfigError: Unknown keys (with a suggestion) or invalid values, naming the dotted key.
        """
        data = dict(data or {})
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping, got {data!r}")
        model = data.get("model")
        if model is not None and not isinstance(model, dict):
            raise ConfigError(f"`model` must be a mapping, got {model!r}")
        model = dict(model or {})
        arch = model.get("arch", TRAIN_DEFAULT_ARCH)
        if "head_channels" not in model and isinstance(arch, str):
            model["head_channels"] = default_head_channels(arch)
        model.setdefault("arch", TRAIN_DEFAULT_ARCH)
        data["model"] = model
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
        """Read a YAML config (nested sections) and apply ``key=value`` overrides."""
        raw = load_yaml(path)
        return cls.from_dict(apply_overrides(raw, list(overrides)))

    def with_overrides(self, overrides: typing.Sequence[str]) -> Config:
        """A copy with dotted ``key=value`` overrides applied (values parsed as YAML)."""
        return type(self).from_dict(apply_overrides(self.to_dict(), list(overrides)))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (lists, not tuples), suitable for YAML, JSON and checkpoints."""
        return to_dict(self)

    def to_yaml(self) -> str:
        """The config as YAML text (what ``WORK_DIR/config.yaml`` holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
