"""Starting a training run from other weights (``train.init_weights``, ``--init-weights``).

The source is anything :func:`pspnet.load_model` reads except exports (our weight directories,
training checkpoints, the authors' semseg, mmsegmentation and mit-semseg files, and ImageNet
ResNets), or a zoo name. :func:`init_from` copies every tensor whose name (in our layout, after
the renaming of :mod:`pspnet.checkpoint.foreign`) and shape match into the new model; the others
keep the new model's fresh, seeded initialisation. With another number of classes that is
exactly the classifiers (``head.classifier``, ``aux_head.classifier``): they are re-initialised,
everything else is the source's. :class:`InitReport` says what was loaded, what was reset (a
shape differs), what the file lacks and what it has that the model does not.

:func:`with_init_model` completes a config tree from the source before the model is built: the
architecture and its options (``arch``, ``stem_width``, ``contract_dilation``,
``align_corners``, the head widths ...) follow the file unless the config sets them, so
``--init-weights mmseg_pspnet_r50_ade20k --num-classes 5`` builds the network that file fits.
The run still chooses ``num_classes``, ``output_stride`` and ``dropout`` (they change no
weight's meaning).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pspnet.checkpoint.exported import exported_kind
from pspnet.checkpoint.files import CheckpointError
from pspnet.checkpoint.foreign import LAYOUT_OPTIONS, TRAIN_LAYOUT, infer_options, read_foreign
from pspnet.checkpoint.load import missing_weights, resolve_weights
from pspnet.checkpoint.weights import check_tensor_values, is_weight_dir, load_weights
from pspnet.config import to_dict
from pspnet.models.registry import MODELS

__all__ = ["InitSource", "InitReport", "read_init_source", "init_from", "with_init_model"]

#: Model options a fine-tuning run chooses itself: they are no property of the weights.
RUN_CHOICES = ("num_classes", "output_stride", "dropout")

#: The flag and key named in messages.
_WHAT = "train.init_weights (--init-weights)"


@dataclass(frozen=True)
class InitSource:
    """Weights read to initialise a run.

    Attributes:
        name: What the caller gave (a path or a zoo name).
        path: The file or directory read.
        layout: ``pspnet`` (a weight directory), ``pspnet-train`` (a training checkpoint),
            ``semseg``, ``mmseg``, ``mit-semseg`` or ``resnet`` (an ImageNet backbone).
        state_dict: The tensors, in our parameter names (unmapped keys start with ``?``).
        model: The architecture options the file tells (ModelConfig fields, without
            :data:`RUN_CHOICES`); empty when the architecture cannot be told.
        preprocess: The file's stored preprocessing (weight directories and training
            checkpoints), or None (the foreign layouts use ImageNet RGB statistics, our default).
    """

    name: str
    path: Path
    layout: str
    state_dict: dict[str, Tensor]
    model: dict[str, Any]
    preprocess: dict[str, Any] | None


def _arch_options(model: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if k not in RUN_CHOICES}


def _foreign_options(sd: Mapping[str, Tensor], layout: str) -> dict[str, Any]:
    """What a foreign state dict (in our names) tells about its architecture."""
    inferred = infer_options(sd)
    arch = inferred.get("arch")
    if arch is None:
        return {}
    if layout == "resnet":  # a backbone tells nothing about the head
        opts = {k: inferred[k] for k in ("arch", "stem_width") if k in inferred}
    else:
        opts = _arch_options({**LAYOUT_OPTIONS.get(layout, {}), **inferred})
    if MODELS[arch].stem == "plain":
        opts.pop("stem_width", None)  # the 7x7 stem has no width option
    return opts


def read_init_source(source: str | Path) -> InitSource:
    """Read the weights ``source`` names (a path or a zoo name) in our parameter names.

    Raises:
        CheckpointError: A missing, unreadable or unsupported source, or an ONNX / TorchScript
            export (its weights are folded and frozen: pass the weights it was exported from).
        ValueError: A zoo name that cannot be resolved (no network: the message names the URL
            and the cache path to put the file at).
    """
    p = resolve_weights(source)
    if not p.exists():
        raise missing_weights(p)
    kind = exported_kind(p)
    if kind is not None:
        raise CheckpointError(
            f"{_WHAT} {source}: {p} is a {kind} export, whose weights are folded for "
            "inference; pass the weight directory (or checkpoint) it was exported from"
        )
    if p.is_file() and p.suffix == ".safetensors" and is_weight_dir(p.parent):
        p = p.parent
    if is_weight_dir(p):
        model, meta = load_weights(p)
        return InitSource(str(source), p, "pspnet", dict(model.state_dict()),
                          _arch_options(to_dict(meta.model)), to_dict(meta.preprocess))
    sd, layout, info = read_foreign(p)
    if layout == TRAIN_LAYOUT:
        return InitSource(str(source), p, layout, sd, _arch_options(to_dict(info["model"])),
                          to_dict(info["preprocess"]))
    if layout == "mit-encoder":  # a deep-stem ImageNet ResNet without fc reads as one
        layout = "resnet"
    return InitSource(str(source), p, layout, sd, _foreign_options(sd, layout), None)


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from` did, tensor by tensor (BatchNorm step counters not counted).

    Attributes:
        source: What the caller gave; ``path``: what was read; ``layout``: its layout.
        total: Tensors in the model.
        loaded: The model's tensors copied from the file (name and shape matched).
        reset: ``(name, file shape, model shape)`` of tensors both have with different shapes:
            they keep the new model's initialisation (the classifiers, for another class count).
        missing: The model's tensors the file lacks (kept as initialised).
        unused: The file's tensors the model has no place for (ignored).
    """

    source: str
    path: str
    layout: str
    total: int
    loaded: tuple[str, ...]
    reset: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    missing: tuple[str, ...]
    unused: tuple[str, ...]

    def lines(self) -> list[str]:
        """The report as printed when a run starts: a summary line and three detail lines."""
        where = self.path if self.source == self.path else f"{self.source} = {self.path}"
        reset = ", ".join(
            f"{k} (file {'x'.join(map(str, a)) or 'scalar'}, model "
            f"{'x'.join(map(str, b)) or 'scalar'})"
            for k, a, b in self.reset[:8]
        ) + (f" ... and {len(self.reset) - 8} more" if len(self.reset) > 8 else "")
        return [
            f"init weights from {where} ({self.layout}): loaded {len(self.loaded)} of "
            f"{self.total} tensors of the model ({_by_module(self.loaded) or 'none'})",
            f"  reset, shape differs (re-initialised): {reset or 'none'}",
            f"  missing in the file (left as initialised): {_names(self.missing)}",
            f"  in the file but not in the model (ignored): {_names(self.unused)}",
        ]

    def to_dict(self) -> dict[str, Any]:
        """The ``log.jsonl`` record (full name lists; loaded tensors counted by module)."""
        return {
            "source": self.source,
            "path": self.path,
            "layout": self.layout,
            "total": self.total,
            "loaded": len(self.loaded),
            "loaded_by_module": dict(Counter(k.split(".")[0] for k in self.loaded)),
            "reset": [{"name": k, "file": list(a), "model": list(b)} for k, a, b in self.reset],
            "missing": list(self.missing),
            "unused": list(self.unused),
        }


def _by_module(names: tuple[str, ...]) -> str:
    return ", ".join(f"{m} {n}" for m, n in Counter(k.split(".")[0] for k in names).items())


def _names(names: tuple[str, ...]) -> str:
    """A few names in full, or counts by module for a long list."""
    if not names:
        return "none"
    if len(names) <= 6:
        return ", ".join(names)
    return f"{len(names)} tensors ({_by_module(names)}: {', '.join(names[:3])} ...)"


def _match(own: Mapping[str, Tensor], sd: Mapping[str, Tensor], src: InitSource) -> InitReport:
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    loaded, reset, unused = [], [], []
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k not in own:
            unused.append(k.lstrip("?"))
        elif tuple(own[k].shape) != tuple(v.shape):
            reset.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            loaded.append(k)
    return InitReport(
        source=src.name, path=str(src.path), layout=src.layout, total=len(counted),
        loaded=tuple(loaded), reset=tuple(reset),
        missing=tuple(k for k in counted if k not in sd), unused=tuple(unused),
    )  # fmt: skip


def _check_backbone(model: nn.Module, report: InitReport, src: InitSource) -> None:
    """Refuse a source whose backbone is not the model's: fine-tuning from it starts nowhere.

    The head may differ (another width, another class count); the backbone must be the same
    network: no backbone tensor of another shape, and at least half of them in the file.
    """
    backbone = [k for k in model.state_dict()
                if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    fitted = sum(k.startswith("backbone.") for k in report.loaded)
    differ = [(k, a, b) for k, a, b in report.reset if k.startswith("backbone.")]
    if not differ and 2 * fitted >= len(backbone):
        return
    holds = ", ".join(f"{k}={v}" for k, v in src.model.items()) or "an architecture not told"
    cfg = getattr(model, "config", None)
    built = f" ({cfg.arch})" if cfg is not None else ""
    why = f"only {fitted} of the {len(backbone)} backbone tensors of the model{built} fit"
    if differ:
        k, a, b = differ[0]
        why += (f" ({len(differ)} differ in shape, e.g. {k}: file {'x'.join(map(str, a))}, "
                f"model {'x'.join(map(str, b))})")
    raise CheckpointError(
        f"{_WHAT} {src.name}: {why} {src.path} ({src.layout}; it holds {holds}). Leave "
        "--arch and the model.* options out so that `pspnet train` builds the network the file "
        "fits, or give weights of the architecture you train"
    )


def init_from(model: nn.Module, source: str | Path) -> InitReport:
    """Copy every tensor of ``source`` whose name and shape match into ``model``.

    Args:
        model: A freshly built (seeded) PSPNet; what does not match keeps its initialisation.
        source: Anything :func:`read_init_source` reads: a path or a zoo name.

    Returns:
        What was loaded, reset, missing and unused (:class:`InitReport`).

    Raises:
        CheckpointError: The source cannot be read, or its backbone is not the model's (a
            backbone tensor of another shape, or fewer than half of them in the file): the
            message says what the file holds.
        ValueError: A zoo name that cannot be resolved.
    """
    src = read_init_source(source)
    own = model.state_dict()
    report = _match(own, src.state_dict, src)
    _check_backbone(model, report, src)
    check_tensor_values({k: src.state_dict[k] for k in report.loaded}, own, str(src.path))
    model.load_state_dict({k: src.state_dict[k] for k in report.loaded}, strict=False)
    return report


def with_init_model(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A config tree with the model (and preprocessing) of its ``train.init_weights`` filled in.

    The file's architecture options fill the ``model`` keys the tree does not set; a tree that
    sets another ``model.arch`` than the file's keeps its own model as it is. The file's stored
    preprocessing (our weight directories and training checkpoints) is taken when the tree has
    no ``preprocess`` section. Nothing changes without ``train.init_weights`` or with
    ``train.resume`` (the config then refuses the pair).
    """
    train = tree.get("train") or {}
    source = train.get("init_weights")
    out = dict(tree)
    if not source or train.get("resume"):
        return out
    src = read_init_source(source)
    model = dict(tree.get("model") or {})
    arch = src.model.get("arch")
    if arch is not None and model.get("arch", arch) == arch:
        out["model"] = {**src.model, **model}
    if src.preprocess is not None and not tree.get("preprocess"):
        out["preprocess"] = src.preprocess
    return out
