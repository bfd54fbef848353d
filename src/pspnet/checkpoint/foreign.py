"""Foreign checkpoint layouts (semseg, mmseg, mit-semseg, ImageNet ResNets) and their conversion
to our parameter names; see :mod:`pspnet.checkpoint` for the table of layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from pspnet.checkpoint.files import EXPECTED_WEIGHTS, CheckpointError, read_torch_file
from pspnet.checkpoint.training import (
    TRAIN_CHECKPOINT_FORMAT,
    train_checkpoint_info,
    validate_train_checkpoint,
)
from pspnet.checkpoint.weights import checked_palette, is_weight_dir
from pspnet.config import ConfigError
from pspnet.models.registry import MODELS

#: Layout name :func:`read_foreign` gives a training checkpoint.
TRAIN_LAYOUT = "pspnet-train"


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Find the state dict inside a loaded checkpoint object; also return its metadata."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
                meta = {k: v for k, v in obj.items() if k != key and not isinstance(v, Tensor)}
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path} holds no state dict (found {type(obj).__name__}); expected a mapping of "
            "parameter names to tensors"
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{path} holds no tensors")
    return sd, meta


# --------------------------------------------------------------------------------------------
# Layouts


def _strip_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """Name the layout of a state dict: pspnet, semseg, mmseg, mit-encoder, mit-decoder, resnet.

    Raises:
        CheckpointError: When no known layout fits, with a sample of the keys.
    """
    keys = [k[7:] if k.startswith("module.") else k for k in sd]
    ks = set(keys)
    if any(k.startswith("backbone.") for k in ks) and any(k.startswith("head.") for k in ks):
        return "pspnet"
    if any(k.startswith(("decode_head.", "backbone.stem.", "auxiliary_head.")) for k in ks):
        return "mmseg"
    if any(k.startswith("layer0.") for k in ks) and any(k.startswith("cls.") for k in ks):
        return "semseg"
    if any(k.startswith("conv_last.") for k in ks):
        return "mit-decoder"
    if "conv1.weight" in ks and any(k.startswith("layer4.") for k in ks):
        return "resnet" if ("fc.weight" in ks or "conv2.weight" not in ks) else "mit-encoder"
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(
        f"unrecognised checkpoint layout (first keys: {sample}). Supported: our weight "
        "directories, hszhao/semseg, mmsegmentation PSPNet, mit-semseg encoder/decoder, "
        "ImageNet ResNets (torchvision or deep-stem)."
    )


# (regex, replacement) pairs per layout; applied to each key in turn, first match wins.
_RULES: dict[str, list[tuple[str, str]]] = {
    "semseg": [
        (r"^layer0\.0\.", "backbone.conv1."),
        (r"^layer0\.1\.", "backbone.bn1."),
        (r"^layer0\.3\.", "backbone.conv2."),
        (r"^layer0\.4\.", "backbone.bn2."),
        (r"^layer0\.6\.", "backbone.conv3."),
        (r"^layer0\.7\.", "backbone.bn3."),
        (r"^(layer[1-4]\.)", r"backbone.\1"),
        (r"^ppm\.features\.(\d+)\.1\.", r"head.ppm.branches.\1.conv."),
        (r"^ppm\.features\.(\d+)\.2\.", r"head.ppm.branches.\1.bn."),
        (r"^cls\.0\.", "head.conv."),
        (r"^cls\.1\.", "head.bn."),
        (r"^cls\.4\.", "head.classifier."),
        (r"^aux\.0\.", "aux_head.conv."),
        (r"^aux\.1\.", "aux_head.bn."),
        (r"^aux\.4\.", "aux_head.classifier."),
    ],
    "mmseg": [
        (r"^backbone\.stem\.0\.", "backbone.conv1."),
        (r"^backbone\.stem\.1\.", "backbone.bn1."),
        (r"^backbone\.stem\.3\.", "backbone.conv2."),
        (r"^backbone\.stem\.4\.", "backbone.bn2."),
        (r"^backbone\.stem\.6\.", "backbone.conv3."),
        (r"^backbone\.stem\.7\.", "backbone.bn3."),
        (r"^backbone\.((conv1|bn1|layer[1-4])\.)", r"backbone.\1"),
        (r"^decode_head\.psp_modules\.(\d+)\.1\.conv\.", r"head.ppm.branches.\1.conv."),
        (r"^decode_head\.psp_modules\.(\d+)\.1\.bn\.", r"head.ppm.branches.\1.bn."),
        (r"^decode_head\.bottleneck\.conv\.", "head.conv."),
        (r"^decode_head\.bottleneck\.bn\.", "head.bn."),
        (r"^decode_head\.conv_seg\.", "head.classifier."),
        (r"^auxiliary_head\.convs\.0\.conv\.", "aux_head.conv."),
        (r"^auxiliary_head\.convs\.0\.bn\.", "aux_head.bn."),
        (r"^auxiliary_head\.conv_seg\.", "aux_head.classifier."),
    ],
    "mit-encoder": [(r"^((conv[1-3]|bn[1-3]|layer[1-4])\.)", r"backbone.\1")],
    "mit-decoder": [
        (r"^ppm\.(\d+)\.1\.", r"head.ppm.branches.\1.conv."),
        (r"^ppm\.(\d+)\.2\.", r"head.ppm.branches.\1.bn."),
        (r"^conv_last\.0\.", "head.conv."),
        (r"^conv_last\.1\.", "head.bn."),
        (r"^conv_last\.4\.", "head.classifier."),
        (r"^cbr_deepsup\.0\.", "aux_head.conv."),
        (r"^cbr_deepsup\.1\.", "aux_head.bn."),
        (r"^conv_last_deepsup\.", "aux_head.classifier."),
    ],
    "resnet": [(r"^((conv[1-3]|bn[1-3]|layer[1-4])\.)", r"backbone.\1")],
    "pspnet": [(r"^(.*)$", r"\1")],
}

#: Option defaults that make our network compute what each source's network computes.
LAYOUT_OPTIONS: dict[str, dict[str, Any]] = {
    "semseg": {},
    "mmseg": {"contract_dilation": True, "align_corners": False},
    "mit-semseg": {"contract_dilation": True, "align_corners": False},
}

# Keys a layout carries that have no counterpart by design (not errors).
_DROPPED = re.compile(r"^(fc\.|data_preprocessor\.|.*num_batches_tracked$)")


def convert_state_dict(sd: Mapping[str, Tensor], layout: str | None = None) -> dict[str, Tensor]:
    """Rename a foreign state dict to our parameter names.

    Args:
        sd: The foreign state dict (a ``module.`` prefix is removed).
        layout: One of the names :func:`detect_layout` returns; detected when None.

    Returns:
        A new dict with our keys. Keys that map nowhere keep a ``"?"`` prefix so the load report
        names them instead of silently dropping them; ``fc.*`` and BN counters are dropped.
    """
    d = _strip_prefix(dict(sd), "module.")
    layout = layout or detect_layout(d)
    if layout not in _RULES:
        raise CheckpointError(f"unknown layout {layout!r}; choices: {', '.join(_RULES)}")
    rules = [(re.compile(p), r) for p, r in _RULES[layout]]
    out: dict[str, Tensor] = {}
    for k, v in d.items():
        if _DROPPED.match(k):
            continue
        for pat, rep in rules:
            if pat.match(k):
                out[pat.sub(rep, k, count=1)] = v
                break
        else:
            out["?" + k] = v
    return out


def infer_options(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Read architecture options off the shapes of a state dict in our layout.

    Returns:
        ``arch`` (when the block counts identify one), ``num_classes``, ``use_ppm``, ``aux``,
        ``stem_width``, ``ppm_channels``, ``head_channels``, ``aux_channels`` where present.
    """
    opts: dict[str, Any] = {}
    if "head.classifier.weight" in sd:
        opts["num_classes"] = int(sd["head.classifier.weight"].shape[0])
        opts["head_channels"] = int(sd["head.classifier.weight"].shape[1])
    opts["use_ppm"] = any(k.startswith("head.ppm.") for k in sd)
    opts["aux"] = any(k.startswith("aux_head.") for k in sd)
    if "aux_head.conv.weight" in sd:
        opts["aux_channels"] = int(sd["aux_head.conv.weight"].shape[0])
    deep = "backbone.conv2.weight" in sd
    if deep and "backbone.conv1.weight" in sd:
        opts["stem_width"] = int(sd["backbone.conv1.weight"].shape[0])
    blocks = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = any(re.match(r"backbone\.layer1\.0\.conv3\.", k) for k in sd)
    for name, spec in MODELS.items():
        if (
            tuple(blocks) == spec.layers
            and (spec.stem == "deep") == deep
            and (spec.block.__name__ == "Bottleneck") == bottleneck
        ):
            opts["arch"] = name
            break
    branch = sd.get("head.ppm.branches.0.conv.weight")
    if branch is not None:
        c_in = int(branch.shape[1])
        n_bins = len({k.split(".")[3] for k in sd if k.startswith("head.ppm.branches.")})
        if int(branch.shape[0]) * n_bins != c_in:
            opts["ppm_channels"] = int(branch.shape[0])
    return opts


# --------------------------------------------------------------------------------------------
# Foreign files


def _mit_pair(path: Path) -> tuple[Path, Path]:
    """Find the encoder and decoder files of a mit-semseg model from a directory or either file."""
    if path.is_dir():
        enc = sorted(path.glob("encoder*.pth"))
        dec = sorted(path.glob("decoder*.pth"))
        if len(enc) != 1 or len(dec) != 1:
            raise CheckpointError(
                f"{path} must hold exactly one encoder*.pth and one decoder*.pth (found "
                f"{len(enc)} and {len(dec)})"
            )
        return enc[0], dec[0]
    name = path.name
    if "encoder" in name:
        return path, path.with_name(name.replace("encoder", "decoder"))
    if "decoder" in name:
        return path.with_name(name.replace("decoder", "encoder")), path
    raise CheckpointError(f"{path}: a mit-semseg model needs both encoder and decoder files")


def why_not_loadable(p: Path) -> str:
    """Why directory ``p`` cannot be read as weights, and what to pass instead."""
    if is_weight_dir(p):
        return (
            f"{p} is already a pspnet weight directory (config.json + model.safetensors): it "
            "needs no conversion; load it directly (pspnet.load_model, pspnet info/predict/"
            "evaluate --weights), or copy the directory to have it elsewhere"
        )
    if (p / "checkpoints").is_dir() or (p / "final").is_dir() or (p / "best").is_dir():
        return (
            f"{p} is a training work directory, not weights: pass {p / 'final'} or "
            f"{p / 'best'} (weight directories) or {p / 'checkpoints' / 'last.pt'}"
        )
    return (
        f"{p} is a directory but neither a pspnet weight directory (config.json + "
        "model.safetensors) nor a mit-semseg model (encoder*.pth + decoder*.pth)"
    )


def read_foreign(path: str | Path) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """Read any supported foreign checkpoint (or a training checkpoint) into our key layout.

    Returns:
        (state dict in our layout, layout name, metadata such as class names when the file has
        it). A training checkpoint gives the layout ``"pspnet-train"`` and its stored
        ``model`` config (a :class:`~pspnet.config.ModelConfig`), ``preprocess``,
        ``ignore_index``, ``classes``, ``palette`` and ``iteration``.

    Raises:
        CheckpointError: Missing, unreadable, unsafe or unrecognised files, naming the fix.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist ({EXPECTED_WEIGHTS})")
    if p.is_dir() and not any(p.glob("encoder*.pth")):
        raise CheckpointError(why_not_loadable(p))
    if p.suffix == ".safetensors" and is_weight_dir(p.parent):
        raise CheckpointError(why_not_loadable(p.parent))
    if p.is_dir() or (p.suffix == ".pth" and ("encoder" in p.name or "decoder" in p.name)):
        enc, dec = _mit_pair(p)
        for f in (enc, dec):
            if not f.is_file():
                raise CheckpointError(
                    f"{f} does not exist: a mit-semseg model needs both {enc.name} and "
                    f"{dec.name} in {f.parent}"
                )
        sd_e, _ = unwrap_state_dict(read_torch_file(enc), enc)
        sd_d, _ = unwrap_state_dict(read_torch_file(dec), dec)
        if detect_layout(sd_e) != "mit-encoder" or detect_layout(sd_d) != "mit-decoder":
            raise CheckpointError(f"{enc} / {dec} are not a mit-semseg encoder/decoder pair")
        sd = {**convert_state_dict(sd_e, "mit-encoder"), **convert_state_dict(sd_d, "mit-decoder")}
        return sd, "mit-semseg", {}
    obj = read_torch_file(p)
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_CHECKPOINT_FORMAT:
        state = validate_train_checkpoint(obj, p)
        sd = state["model"]
        return ({str(k): v for k, v in sd.items() if isinstance(v, Tensor)}, TRAIN_LAYOUT,
                train_checkpoint_info(state, p))
    sd, meta = unwrap_state_dict(obj, p)
    layout = detect_layout(sd)
    info: dict[str, Any] = {}
    m = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    classes = m.get("CLASSES") or (m.get("dataset_meta") or {}).get("classes")
    palette = m.get("PALETTE") or (m.get("dataset_meta") or {}).get("palette")
    if classes:
        info["classes"] = tuple(str(c) for c in classes)
    if palette:
        try:
            info["palette"] = checked_palette(palette)
        except ConfigError as e:
            raise CheckpointError(f"{p}: the palette in its meta is unusable: {e}") from None
    return convert_state_dict(sd, layout), layout, info
