"""Loading models: :func:`load_model` (THE loader), :func:`load_foreign`, :func:`convert` and
:func:`load_backbone_weights`; :func:`resolve_weights` turns a zoo name into its file for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pspnet import hub
from pspnet.checkpoint.calibration import CALIBRATION_FIX, Calibration, calibration_images
from pspnet.checkpoint.exported import exported_kind, open_export
from pspnet.checkpoint.files import EXPECTED_WEIGHTS, CheckpointError, read_torch_file
from pspnet.checkpoint.foreign import (
    LAYOUT_OPTIONS, TRAIN_LAYOUT, convert_state_dict, detect_layout, infer_options, read_foreign,
    unwrap_state_dict, why_not_loadable,
)
from pspnet.checkpoint.weights import (
    LoadReport,
    WeightsMeta,
    is_weight_dir,
    load_state_dict_checked,
    load_weights,
    save_weights,
)
from pspnet.config import ModelConfig
from pspnet.models import PSPNet, build_model
from pspnet.models.fuse import optimize_for_inference
from pspnet.models.registry import MODELS, model_config


def resolve_weights(path: str | Path, *, progress: bool = True) -> Path:
    """A weights argument as a path: the path itself, or the file a zoo name stands for.

    An existing path always wins over a zoo name spelled the same. A name of
    :data:`pspnet.hub.ZOO` (``pspnet zoo`` lists them) is resolved in the cache
    (``$PSPNET_HOME``, default ``~/.cache/pspnet``) and downloaded, hash-checked, when missing
    (:func:`pspnet.hub.resolve`). Anything else is returned as a path.

    Raises:
        ValueError: A zoo name that needs a manual step, or cannot be downloaded
            (:class:`pspnet.hub.DownloadError`: the message names the URL and the cache path to
            put the file at), or whose download has the wrong SHA-256.
    """
    p = Path(path)
    if p.exists() or str(path) not in hub.ZOO:
        return p
    return hub.resolve(str(path), progress=progress)


def missing_weights(p: Path) -> CheckpointError:
    """The error for a weights argument that is neither a path nor a zoo name."""
    import difflib

    close = difflib.get_close_matches(str(p), hub.ZOO, n=1)
    hint = f"; did you mean the zoo entry {close[0]!r}?" if close else ""
    return CheckpointError(
        f"{p} does not exist ({EXPECTED_WEIGHTS}, or a zoo name: `pspnet zoo` lists them){hint}"
    )


def _check_fixed_config(
    p: Path, cfg: ModelConfig, arch: str | None, num_classes: int | None,
    options: Mapping[str, Any], what: str,
) -> None:
    """Refuse ``arch`` / ``num_classes`` / options that contradict a file's stored model config."""
    if arch is not None and arch != cfg.arch:
        raise CheckpointError(f"{p} holds a {cfg.arch}, not a {arch} (--arch)")
    if num_classes is not None and num_classes != cfg.num_classes:
        raise CheckpointError(
            f"{p} has {cfg.num_classes} classes, not {num_classes} (--num-classes)"
        )
    if options:
        raise CheckpointError(
            f"{p} is {what}; its model options come from its stored config and cannot be "
            f"overridden ({', '.join(options)})"
        )


def _load_train_checkpoint(
    p: Path, sd: dict[str, Tensor], info: dict[str, Any], arch: str | None,
    num_classes: int | None, options: Mapping[str, Any],
) -> tuple[PSPNet, WeightsMeta, LoadReport]:
    """Rebuild the model a training checkpoint describes and load its weights."""
    cfg: ModelConfig = info["model"]
    _check_fixed_config(p, cfg, arch, num_classes, options, "a pspnet training checkpoint")
    model = build_model(cfg)
    report = load_state_dict_checked(model, sd, strict=True, source=str(p))
    model.config = cfg  # type: ignore[assignment]
    it = info.get("iteration")
    meta = WeightsMeta(
        model=cfg,
        classes=info["classes"],
        palette=info["palette"],
        preprocess=info["preprocess"],
        ignore_index=info["ignore_index"],
        source=f"pspnet train checkpoint {p}" + (f" (iteration {it})" if it is not None else ""),
    )
    return model, meta, report


def load_foreign(
    path: str | Path, arch: str | None = None, num_classes: int | None = None, **options: Any
) -> tuple[PSPNet, WeightsMeta, LoadReport]:
    """Build a model for a foreign checkpoint and load it, inferring what the file tells.

    ``arch`` and ``num_classes`` are checked against the file when given, and read from it when
    not. Options default to the source's conventions (e.g. mmseg: ``contract_dilation=True,
    align_corners=False``; mmseg's V1c stem width 32 is read from the weights). A training
    checkpoint is rebuilt from its stored model config instead (options cannot override it).
    """
    p = resolve_weights(path)
    if not p.exists():
        raise missing_weights(p)
    sd, layout, info = read_foreign(p)
    if layout == TRAIN_LAYOUT:
        return _load_train_checkpoint(p, sd, info, arch, num_classes, options)
    if layout == "resnet":
        raise CheckpointError(
            f"{p} holds only an ImageNet backbone; use it to initialise training "
            "(load_backbone_weights / --set train.backbone_weights=...), not as a segmenter"
        )
    inferred = infer_options(sd)
    if "num_classes" not in inferred:
        raise CheckpointError(f"{p} has no classifier weights (head.classifier)")
    if num_classes is not None and num_classes != inferred["num_classes"]:
        raise CheckpointError(
            f"--num-classes {num_classes} does not match {p}, whose classifier has "
            f"{inferred['num_classes']} outputs (key head.classifier.weight)"
        )
    if arch is None:
        arch = inferred.get("arch")
        if arch is None:
            raise CheckpointError(f"cannot tell the architecture of {p}; pass arch=... (--arch)")
    opts = {**LAYOUT_OPTIONS.get(layout, {}), **inferred, **options}
    opts.pop("arch", None)
    nc = opts.pop("num_classes")
    if arch in MODELS and MODELS[arch].stem == "plain":
        opts.pop("stem_width", None)  # the 7x7 stem has no width option
    cfg = model_config(arch, nc, **opts)
    model = build_model(cfg)
    report = load_state_dict_checked(model, sd, strict=True, source=str(p))
    model.config = cfg  # type: ignore[assignment]
    meta = WeightsMeta(
        model=cfg,
        classes=info.get("classes") if len(info.get("classes") or ()) == nc else None,
        palette=info.get("palette") if len(info.get("palette") or ()) == nc else None,
        source=f"{layout}:{p.name}",
    )
    return model, meta, report


def load_model(
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    calibration: Calibration | None = None,
    **options: Any,
) -> nn.Module:
    """Load a PSPNet for inference from any supported weight file.

    Args:
        path: A zoo name (``pspnet zoo``; see :func:`resolve_weights`), or one of our weight
            directories (or its ``model.safetensors``, which is the same),
            a training checkpoint (``WORK_DIR/checkpoints/last.pt``: rebuilt from its stored
            model config), or a foreign checkpoint (hszhao/semseg ``.pth``, mmsegmentation
            ``.pth``, a mit-semseg directory or encoder/decoder file), or an ONNX / TorchScript
            file from ``pspnet export`` (recognised by its content; see
            :func:`pspnet.checkpoint.exported.open_export`).
        arch: Architecture name; checked against a weight directory or training checkpoint,
            inferred for foreign files when possible.
        num_classes: Number of classes; checked against the file.
        device: Where to put the model.
        precision: ``"fp32"`` (the eager model, exact), ``"bf16"`` or ``"fp16"``: a folded,
            channels-last, low-precision copy (:func:`pspnet.models.fuse.optimize_for_inference`).
            ``"int8"``: post-training int8 quantization calibrated on ``calibration``
            (:func:`pspnet.models.quantize.quantize_pt2e`; needs torchao), always compiled.
        compile: Also ``torch.compile`` it (the first call per input shape compiles).
        calibration: int8 only: calibration images (paths, a folder or a list file; see
            :mod:`pspnet.checkpoint.calibration`), e.g. 32 training images.
        **options: :class:`~pspnet.config.ModelConfig` fields overriding what the file implies
            (foreign files only), e.g. ``align_corners=True`` for mmseg's 769x769 models.

    Returns:
        The model in eval mode. Call it on an (N, 3, H, W) float tensor normalised as the
        authors do (RGB, ImageNet mean/std on the 0..255 scale); it returns ``{"out": logits}``
        with logits (N, C, H, W). ``model.meta`` holds the :class:`WeightsMeta`. An export
        gives its runtime (:class:`~pspnet.checkpoint.exported.OnnxSegmenter` or
        :class:`~pspnet.checkpoint.exported.TorchScriptSegmenter`, on the CPU), which returns
        the logits tensor itself.

    Raises:
        CheckpointError: A missing path, a file that is not a checkpoint (ONNX or TorchScript
            without pspnet export metadata, text: the message says what it is and what reads
            it), an unsafe pickle, weights that contradict ``arch`` / ``num_classes`` /
            ``options``, ``precision`` / ``compile`` for an export, or an ONNX export without
            onnxruntime installed (the message names the extra).
        ValueError: A zoo name that cannot be resolved (see :func:`resolve_weights`).
    """
    p = resolve_weights(path)
    kind = exported_kind(p)
    if kind is not None:  # an ONNX / TorchScript file from `pspnet export`
        if calibration is not None:
            raise CheckpointError(f"{p} is an exported model; calibration images quantize "
                                  "PyTorch weights (export with --int8 to quantize an export)")
        return open_export(p, kind, arch, num_classes, precision=precision, compile=compile,
                           **options)
    if not p.exists():
        raise missing_weights(p)
    if p.is_file() and p.suffix == ".safetensors" and is_weight_dir(p.parent):
        p = p.parent  # the tensor file of a weight directory: load the directory, same options
    if is_weight_dir(p):
        model, meta = load_weights(p)
        _check_fixed_config(
            p, meta.model, arch, num_classes, options, "a pspnet weight directory (config.json)"
        )
    else:
        model, meta, _ = load_foreign(p, arch, num_classes, **options)
    model.meta = meta  # type: ignore[assignment]
    model = model.to(device).eval()
    if precision == "int8" or calibration is not None:
        return _quantized(model, precision, calibration)
    if precision != "fp32" or compile:
        return optimize_for_inference(  # inplace: the model read here is nobody else's
            model, precision=precision, compile=compile, inplace=True)  # type: ignore[arg-type]
    return model


def _quantized(model: PSPNet, precision: str, calibration: Calibration | None) -> nn.Module:
    """``precision="int8"``: the model quantized on its calibration images."""
    if precision != "int8":
        raise CheckpointError(f"calibration images are for precision='int8', not "
                              f"{precision!r}; leave calibration out or use int8")
    if calibration is None:
        raise CheckpointError(f"precision='int8' needs calibration images; {CALIBRATION_FIX}")
    from pspnet.models.quantize import quantize_pt2e  # lazy: torchao only when asked for

    images = calibration_images(calibration, model.meta.preprocess)  # type: ignore[union-attr]
    try:
        # inplace: the model was read here and is not returned, so its weights need no copy
        return quantize_pt2e(model, images, inplace=True)
    except ImportError as e:
        raise CheckpointError(str(e)) from None


def load_backbone_weights(model: PSPNet, path: str | Path) -> LoadReport:
    """Initialise ``model.backbone`` from ImageNet ResNet weights (torchvision or deep-stem).

    ``path`` may be a zoo name (``resnet18_imagenet``; see :func:`resolve_weights`).

    Raises:
        CheckpointError: When the file's stem or blocks do not match the model's backbone.
    """
    p = resolve_weights(path)
    if not p.exists():
        raise missing_weights(p)
    sd, _ = unwrap_state_dict(read_torch_file(p), p)
    sd = convert_state_dict(sd, "resnet" if detect_layout(sd) in ("resnet", "mit-encoder")
                            else detect_layout(sd))
    sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    if not sd:
        raise CheckpointError(f"{p} holds no backbone weights")
    file_deep = "backbone.conv2.weight" in sd
    if file_deep != (model.backbone.stem_type == "deep"):
        raise CheckpointError(
            f"{p} has a {'deep 3x3' if file_deep else '7x7'} stem but the model has a "
            f"{model.backbone.stem_type} one: a 7x7-stem (torchvision) file fits pspnet_r*, a "
            "deep-stem (resnet50_v2.pth) file fits pspnet50/101/152"
        )
    own = {k for k in model.state_dict() if k.startswith("backbone.")}
    report = load_state_dict_checked(model, sd, strict=False, source=str(p))
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"{p} does not cover the model's backbone (missing {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); a 7x7-stem (torchvision) file fits "
            "pspnet_r*, a deep-stem (resnet50_v2.pth) file fits pspnet50/101/152"
        )
    return report


def _classes_from_file(path: str | Path) -> tuple[tuple[str, ...], Any]:
    """Names and palette from a classes file (:func:`pspnet.data.classes.read_class_file`)."""
    from pspnet.data.classes import read_class_file  # lazy: keeps `import pspnet` light
    from pspnet.data.io import DataError

    try:
        found = read_class_file(path)
    except DataError as e:
        raise CheckpointError(str(e)) from None
    return found.names, found.palette


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    classes: tuple[str, ...] | None = None,
    palette: tuple[tuple[int, int, int], ...] | None = None,
    classes_file: str | Path | None = None,
    **options: Any,
) -> Path:
    """Convert any supported checkpoint (or a training checkpoint) into a weight directory.

    A source that already is one of our weight directories (or its ``model.safetensors``) is
    refused with a message saying it needs no conversion: it loads as it is, and a copy of the
    directory is a copy of the model.

    Args:
        src: The checkpoint file or mit-semseg directory.
        dst: The weight directory to write.
        arch: Architecture; checked against or read from the file.
        num_classes: Number of classes; checked against the file.
        classes: Class names (index order), replacing any the file records.
        palette: One RGB triple per class, replacing any the file records.
        classes_file: A classes file (:func:`pspnet.data.classes.read_class_file`): its names,
            and its colours when it gives every class one (CamVid's
            ``index<TAB>name<TAB>R G B``), as ``classes`` and ``palette``. Not together with
            ``classes``.
        **options: Model options overriding what the file implies (foreign files only).

    Returns:
        ``dst``.

    Raises:
        CheckpointError: The source cannot be read or converted, or the class list does not fit.
    """
    s = resolve_weights(src)
    if is_weight_dir(s) or (s.suffix == ".safetensors" and is_weight_dir(s.parent)):
        raise CheckpointError(why_not_loadable(s if s.is_dir() else s.parent))
    if classes_file is not None:
        if classes is not None:
            raise CheckpointError("give the class names as classes or classes_file, not both")
        classes, file_palette = _classes_from_file(classes_file)
        palette = palette or file_palette
    model, meta, _ = load_foreign(s, arch, num_classes, **options)
    n = meta.model.num_classes
    named = f"classes file {classes_file}" if classes_file is not None else "classes"
    if classes is not None and len(classes) != n:
        raise CheckpointError(
            f"{named} lists {len(classes)} classes but the model in {s} has {n}; give one "
            "name per class, in index order"
        )
    if palette is not None and len(palette) != n:
        raise CheckpointError(f"palette has {len(palette)} colours but the model in {s} has {n}")
    meta = WeightsMeta(
        model=meta.model,
        classes=classes or meta.classes,
        palette=palette or meta.palette,
        preprocess=meta.preprocess,
        ignore_index=meta.ignore_index,
        source=meta.source,
    )
    return save_weights(model, dst, meta)
