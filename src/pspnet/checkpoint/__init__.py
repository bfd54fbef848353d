"""Weights in and out: our self-describing format and every public PSPNet layout.

Our format is a directory with two files:

* ``model.safetensors``: the state dict (no pickle, so loading never runs code);
* ``config.json``: ``{"format": "pspnet", "version": 1, "model": ModelConfig, "classes": [...],
  "palette": [[r, g, b], ...], "preprocess": {"mean", "std", "channel_order"}, "ignore_index",
  "source"}``. A directory is enough to rebuild, run and label the model.

Foreign layouts, detected from their keys and mapped onto ours by name (never by position):

=================  ==========================================================================
``semseg``         hszhao/semseg ``train_epoch_N.pth``: ``{'epoch','state_dict','optimizer'}``,
                   ``module.layer0.*``, ``module.ppm.features.*``, ``module.cls.*``,
                   ``module.aux.*``.
``mmseg``          mmsegmentation: ``backbone.stem.*`` (V1c, 32-32-64 stem) or ``backbone.conv1``
                   (V1b), ``decode_head.psp_modules.*``, ``decode_head.bottleneck.*``,
                   ``decode_head.conv_seg.*``, ``auxiliary_head.*``.
``mit-semseg``     CSAILVision ResNet50dilated + PPM_deepsup: ``encoder_epoch_N.pth`` (``conv1``,
                   ``bn1`` ... ``layer4``) and ``decoder_epoch_N.pth`` (``ppm.*``,
                   ``conv_last.*``, ``cbr_deepsup.*``, ``conv_last_deepsup.*``).
``resnet``         ImageNet ResNets: torchvision (7x7 ``conv1``) or the authors' deep-stem
                   ``resnet50_v2.pth`` (``conv1..conv3``); ``fc.*`` dropped. Backbone only.
=================  ==========================================================================

Training checkpoints (``WORK_DIR/checkpoints/last.pt``, written by ``pspnet train``:
``{"format": "pspnet-train-checkpoint", "config": {..., "model": ModelConfig}, "model":
state_dict, ...}``) load too: the model is rebuilt from the stored ``config["model"]``, never
inferred from the tensor shapes.

Foreign ``.pth`` files are read only with ``torch.load(weights_only=True, map_location="cpu")``:
a file that needs arbitrary unpickling is refused, never retried unsafely. Before that, the first
bytes of the file say what it is (:func:`detect_file_kind`), so an ONNX model, a TorchScript
export or a text file gets told apart from a PyTorch checkpoint instead of being blamed for
unsafe pickling.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pspnet.config import (
    ConfigError,
    ModelConfig,
    Preprocessing,
    default_head_channels,
    from_dict,
    to_dict,
)
from pspnet.checkpoint.files import (
    EXPECTED_WEIGHTS,
    CheckpointError,
    atomic_write_bytes,
    detect_file_kind,
    read_torch_file,
)
from pspnet.checkpoint.training import TRAIN_CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_VERSION
from pspnet.models import PSPNet, build_model
from pspnet.models.fuse import optimize_for_inference
from pspnet.models.zoo import MODELS, model_config

__all__ = [
    "CheckpointError",
    "WeightsMeta",
    "LoadReport",
    "read_torch_file",
    "detect_file_kind",
    "read_class_names",
    "detect_layout",
    "convert_state_dict",
    "load_state_dict_checked",
    "save_weights",
    "load_weights",
    "load_model",
    "load_backbone_weights",
    "convert",
    "atomic_write_bytes",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
#: Layout name :func:`read_foreign` gives a training checkpoint.
TRAIN_LAYOUT = "pspnet-train"
@dataclass(frozen=True)
class WeightsMeta:
    """Everything besides the tensors that a weight directory records."""

    model: ModelConfig
    classes: tuple[str, ...] | None = None
    """Class names, index order; None when unknown."""
    palette: tuple[tuple[int, int, int], ...] | None = None
    """One RGB colour per class; None when unknown."""
    preprocess: Preprocessing = field(default_factory=Preprocessing)
    ignore_index: int = 255
    source: str = ""
    """Where the weights came from (a file name, a zoo entry, a training run)."""

    def __post_init__(self) -> None:
        n = self.model.num_classes
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if len(self.classes) != n:
                raise ConfigError(
                    f"`classes` lists {len(self.classes)} names but the model has "
                    f"{n} classes (model.num_classes)"
                )
        if self.palette is not None:
            pal = tuple(tuple(int(v) for v in c) for c in self.palette)
            object.__setattr__(self, "palette", pal)
            if len(pal) != n or any(len(c) != 3 for c in pal):
                raise ConfigError(f"`palette` must have {n} RGB triples, got {len(pal)} entries")


@dataclass
class LoadReport:
    """What did not line up when loading a state dict into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 10) -> str:
        def cut(items: list[str]) -> str:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = []
        if self.mismatched:
            lines.append(
                "shape mismatch: "
                + cut([f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in self.mismatched])
            )
        if self.missing:
            lines.append(f"missing in the file: {cut(self.missing)}")
        if self.unexpected:
            lines.append(f"not used by the model: {cut(self.unexpected)}")
        return "; ".join(lines) if lines else "all keys matched"


# --------------------------------------------------------------------------------------------
# Reading files safely


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
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


def load_state_dict_checked(
    model: nn.Module, sd: Mapping[str, Tensor], *, strict: bool = True, source: str = ""
) -> LoadReport:
    """Load ``sd`` into ``model`` after checking every key and shape.

    Args:
        model: The target module.
        sd: A state dict in our layout.
        strict: Raise on any missing, unexpected or mis-shaped key (shape errors always raise).
        source: File name for the error message.

    Raises:
        CheckpointError: Naming the offending keys and shapes.
    """
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for k, v in sd.items():
        if k not in own:
            if not k.endswith("num_batches_tracked"):
                report.unexpected.append(k.lstrip("?"))
        elif tuple(own[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            usable[k] = v
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    where = f" from {source}" if source else ""
    if report.mismatched or (strict and not report.ok):
        raise CheckpointError(
            f"weights{where} do not fit the model: {report.format()}. Check --arch, "
            "--num-classes and the model options (or let them be inferred from the file)."
        )
    model.load_state_dict(usable, strict=False)
    return report


# --------------------------------------------------------------------------------------------
# Our weight directories


def save_weights(model: nn.Module, directory: str | Path, meta: WeightsMeta) -> Path:
    """Save ``model`` as ``directory/model.safetensors`` + ``directory/config.json``.

    Both files are written atomically (the tensors first, so a reader never sees a config that
    points at half-written weights).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={"format": "pspnet"})
        os.replace(tmp, d / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    doc = {"format": "pspnet", "version": FORMAT_VERSION, **to_dict(meta)}
    atomic_write_bytes(d / CONFIG_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    return d


def read_meta(directory: str | Path) -> WeightsMeta:
    """Read and validate ``config.json`` of a weight directory."""
    p = Path(directory) / CONFIG_FILE
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p} is missing: not a pspnet weight directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}); the directory is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != "pspnet":
        raise CheckpointError(f"{p} is not a pspnet config (no \"format\": \"pspnet\")")
    if doc.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has format version {doc['version']}; this pspnet reads up to "
            f"{FORMAT_VERSION}. Upgrade pspnet."
        )
    body = {k: v for k, v in doc.items() if k not in ("format", "version")}
    try:
        return from_dict(WeightsMeta, body)
    except ConfigError as e:
        raise CheckpointError(f"{p}: {e}") from None


def load_weights(directory: str | Path) -> tuple[PSPNet, WeightsMeta]:
    """Rebuild a model from one of our weight directories (train mode; see :func:`load_model`)."""
    d = Path(directory)
    meta = read_meta(d)
    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{wpath} is missing: the weight directory is incomplete")
    try:
        sd = load_file(wpath)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {wpath}: {e}. The file is corrupt or truncated; save it again."
        ) from None
    model = build_model(meta.model)
    load_state_dict_checked(model, sd, strict=True, source=str(wpath))
    model.config = meta.model  # type: ignore[assignment]
    return model, meta


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


def _dir_not_loadable(p: Path) -> str:
    """Why directory ``p`` cannot be read as weights, and what to pass instead."""
    if _is_weight_dir(p):
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


def _train_checkpoint_info(state: Mapping[str, Any], p: Path) -> dict[str, Any]:
    """Model config, preprocessing, ignore index and any class names of a training checkpoint.

    The model is described by ``state["config"]["model"]`` (ModelConfig fields). Class names
    and colours are taken from ``state["classes"]`` / ``state["palette"]`` when present, else
    from a registered data set named by ``config["data"]["dataset"]`` (what training labels its
    weights with); a ``data.class_names`` file is only referenced by path, not stored, so it is
    not read back (the names stay None).
    """
    version = state.get("version", 0)
    if not isinstance(version, int) or version > TRAIN_CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{p} is a training checkpoint of version {version!r}; this pspnet reads up to "
            f"{TRAIN_CHECKPOINT_VERSION}. Upgrade pspnet."
        )
    config = state.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise CheckpointError(
            f"{p} is a training checkpoint without its config (no config[\"model\"] section), "
            "so the model cannot be rebuilt; the file is damaged or was not written by "
            "pspnet train"
        )
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    fields = dict(config["model"])
    if "head_channels" not in fields and isinstance(fields.get("arch"), str):
        fields["head_channels"] = default_head_channels(fields["arch"])  # as training fills it
    try:
        model = from_dict(ModelConfig, fields, prefix="model")
        preprocess = from_dict(Preprocessing, dict(config.get("preprocess") or {}),
                               prefix="preprocess")
    except ConfigError as e:
        raise CheckpointError(f"{p}: the stored training config is invalid: {e}") from None
    classes = state.get("classes")
    palette = state.get("palette")
    if classes is None and data.get("dataset") and not data.get("class_names"):
        from pspnet.data.datasets import get_dataset_spec  # lazy: keeps `import pspnet` light

        try:
            classes = get_dataset_spec(str(data["dataset"])).class_names
        except ConfigError:
            classes = None  # a data set this pspnet does not know: no names
    n = model.num_classes
    return {
        "model": model,
        "preprocess": preprocess,
        "ignore_index": int(data.get("ignore_index", 255)),
        "classes": tuple(str(c) for c in classes) if classes and len(classes) == n else None,
        "palette": (tuple(tuple(int(x) for x in c) for c in palette)
                    if palette and len(palette) == n else None),
        "iteration": state.get("iteration"),
    }


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
        raise CheckpointError(_dir_not_loadable(p))
    if p.suffix == ".safetensors" and _is_weight_dir(p.parent):
        raise CheckpointError(_dir_not_loadable(p.parent))
    if p.is_dir() or (p.suffix == ".pth" and ("encoder" in p.name or "decoder" in p.name)):
        enc, dec = _mit_pair(p)
        for f in (enc, dec):
            if not f.is_file():
                raise CheckpointError(
                    f"{f} does not exist: a mit-semseg model needs both {enc.name} and "
                    f"{dec.name} in {f.parent}"
                )
        sd_e, _ = _unwrap(read_torch_file(enc), enc)
        sd_d, _ = _unwrap(read_torch_file(dec), dec)
        if detect_layout(sd_e) != "mit-encoder" or detect_layout(sd_d) != "mit-decoder":
            raise CheckpointError(f"{enc} / {dec} are not a mit-semseg encoder/decoder pair")
        sd = {**convert_state_dict(sd_e, "mit-encoder"), **convert_state_dict(sd_d, "mit-decoder")}
        return sd, "mit-semseg", {}
    obj = read_torch_file(p)
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_CHECKPOINT_FORMAT:
        info = _train_checkpoint_info(obj, p)
        sd = obj.get("model")
        if not isinstance(sd, Mapping) or not sd:
            raise CheckpointError(f"{p} is a training checkpoint without model weights")
        return {str(k): v for k, v in sd.items() if isinstance(v, Tensor)}, TRAIN_LAYOUT, info
    sd, meta = _unwrap(obj, p)
    layout = detect_layout(sd)
    info: dict[str, Any] = {}
    m = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    classes = m.get("CLASSES") or (m.get("dataset_meta") or {}).get("classes")
    palette = m.get("PALETTE") or (m.get("dataset_meta") or {}).get("palette")
    if classes:
        info["classes"] = tuple(str(c) for c in classes)
    if palette:
        info["palette"] = tuple(tuple(int(x) for x in c) for c in palette)
    return convert_state_dict(sd, layout), layout, info


def _is_weight_dir(p: Path) -> bool:
    return p.is_dir() and (p / CONFIG_FILE).is_file()


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
    p = Path(path)
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
    **options: Any,
) -> nn.Module:
    """Load a PSPNet for inference from any supported weight file.

    Args:
        path: One of our weight directories (or its ``model.safetensors``, which is the same),
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
        compile: Also ``torch.compile`` it (the first call per input shape compiles).
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
    """
    p = Path(path)
    from pspnet.checkpoint.exported import exported_kind, open_export  # imports this module

    kind = exported_kind(p)
    if kind is not None:  # an ONNX / TorchScript file from `pspnet export`
        return open_export(p, kind, arch, num_classes, precision=precision, compile=compile,
                           **options)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist ({EXPECTED_WEIGHTS})")
    if p.is_file() and p.suffix == ".safetensors" and _is_weight_dir(p.parent):
        p = p.parent  # the tensor file of a weight directory: load the directory, same options
    if _is_weight_dir(p):
        model, meta = load_weights(p)
        _check_fixed_config(
            p, meta.model, arch, num_classes, options, "a pspnet weight directory (config.json)"
        )
    else:
        model, meta, _ = load_foreign(p, arch, num_classes, **options)
    model.meta = meta  # type: ignore[assignment]
    model = model.to(device).eval()
    if precision != "fp32" or compile:
        return optimize_for_inference(model, precision=precision, compile=compile)  # type: ignore[arg-type]
    return model


def load_backbone_weights(model: PSPNet, path: str | Path) -> LoadReport:
    """Initialise ``model.backbone`` from ImageNet ResNet weights (torchvision or deep-stem).

    Raises:
        CheckpointError: When the file's stem or blocks do not match the model's backbone.
    """
    p = Path(path)
    sd, _ = _unwrap(read_torch_file(p), p)
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


def read_class_names(
    path: str | Path,
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Class names, and colours when the file has them, from a classes file.

    Two forms: one name a line (``index<TAB>name`` lines give the name), or CamVid's
    ``index<TAB>name<TAB>R G B`` on every line, read with
    :func:`pspnet.data.datasets.read_classes_file` (the colours become the palette; entries with
    index 255 or above, such as ``void``, are not classes). Blank and ``#`` lines are skipped.

    Returns:
        (names in class order, one RGB triple per class or None when the file has no colours).

    Raises:
        CheckpointError: A missing, non-text or empty file, or a malformed CamVid line.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"classes file {p} does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CheckpointError(
            f"classes file {p} is not UTF-8 text; it must list one name a line or "
            "`index<TAB>name<TAB>R G B` lines"
        ) from None
    lines = [ln.rstrip("\r\n") for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]  # fmt: skip
    if not lines:
        raise CheckpointError(f"classes file {p} lists no class names")
    if all(len(ln.split("\t")) == 3 for ln in lines):
        from pspnet.data.datasets import DataError, read_classes_file  # lazy, as above

        try:
            names, colours = read_classes_file(p)
        except DataError as e:
            raise CheckpointError(str(e)) from None
        return names, tuple(colours[i] for i in range(len(names)))
    names = []
    for ln in lines:
        parts = ln.split("\t")
        indexed = len(parts) >= 2 and parts[0].strip().isdigit()
        names.append(parts[1].strip() if indexed else ln.strip())
    return tuple(names), None


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
        classes_file: A classes file (:func:`read_class_names`): its names, and its colours
            when it has them (CamVid's ``index<TAB>name<TAB>R G B``), as ``classes`` and
            ``palette``. Not together with ``classes``.
        **options: Model options overriding what the file implies (foreign files only).

    Returns:
        ``dst``.

    Raises:
        CheckpointError: The source cannot be read or converted, or the class list does not fit.
    """
    s = Path(src)
    if _is_weight_dir(s) or (s.suffix == ".safetensors" and _is_weight_dir(s.parent)):
        raise CheckpointError(_dir_not_loadable(s if s.is_dir() else s.parent))
    if classes_file is not None:
        if classes is not None:
            raise CheckpointError("give the class names as classes or classes_file, not both")
        classes, file_palette = read_class_names(classes_file)
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
