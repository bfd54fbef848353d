"""What both exporters do before writing: the one-tensor head, argument checks, metadata."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from pspnet.checkpoint import WeightsMeta
from pspnet.checkpoint.exported import EXPORT_FORMAT, EXPORT_VERSION, Output
from pspnet.config import ModelConfig, Preprocessing, check_limit, to_dict

#: Name of the exported graphs' input.
INPUT_NAME = "images"


class Head(nn.Module):
    """The model reduced to one tensor: logits (N, C, H, W) or labels (N, H, W) int64."""

    def __init__(self, model: nn.Module, output: Output) -> None:
        super().__init__()
        self.model = model
        self.labels = output == "labels"

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        if isinstance(out, dict):
            out = out["out"]
        return out.argmax(1) if self.labels else out


def check_args(height: int, width: int, output: str, rtol: float) -> tuple[int, int]:
    """Refuse non-positive or too large sizes (``LIMITS["export_side"]``), an unknown
    ``output`` and a non-positive ``rtol``."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
        check_limit("export_side", v, f"{name} (--{name})")
    if output not in ("logits", "labels"):
        raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol!r}")
    return height, width


def meta_fields(model: nn.Module, meta: WeightsMeta | None, num_classes: int) -> dict[str, Any]:
    """The metadata document fields describing the model (config, classes, preprocessing)."""
    meta = meta if meta is not None else getattr(model, "meta", None)
    if not isinstance(meta, WeightsMeta):
        cfg = getattr(model, "config", None)
        meta = WeightsMeta(model=cfg) if isinstance(cfg, ModelConfig) else None
    if meta is None:
        return {
            "model": None,
            "classes": None,
            "palette": None,
            "preprocess": to_dict(Preprocessing()),
            "ignore_index": 255,
            "source": "",
        }
    if meta.model.num_classes != num_classes:
        raise ValueError(
            f"the metadata describes {meta.model.num_classes} classes but the model outputs "
            f"{num_classes}; pass meta=WeightsMeta(...) that matches the model"
        )
    return to_dict(meta)


def metadata_doc(
    fmt: str,
    *,
    model_fields: dict[str, Any],
    size: tuple[int, int],
    dynamic: bool,
    output: Output,
    num_classes: int,
    min_size: tuple[int, int] | None,
    output_name: str,
    opset: int | None,
) -> dict[str, Any]:
    """The metadata document embedded in every export (read back by the runtimes)."""
    from pspnet import __version__

    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "runtime": fmt,
        "input_name": INPUT_NAME,
        "output_name": output_name,
        "output": output,
        "dynamic": dynamic,
        "input_size": None if dynamic else list(size),
        "export_size": list(size),
        "min_size": list(min_size) if min_size else None,
        "num_classes": num_classes,
        "layout": "NCHW float32, normalised (see preprocess)",
        **model_fields,
        "opset": opset,
        "pspnet_version": __version__,
        "torch_version": torch.__version__,
    }


def prepare(
    model: nn.Module, output: Output, height: int, width: int
) -> tuple[Head, Head, int]:
    """The graph to export, the eager logits reference and the number of classes.

    Both heads share one float32 CPU eval-mode deep copy of ``model`` (the user's model is
    never touched): ``output`` selects logits or labels for the exported head; the reference
    always gives logits.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    eager = Head(copy.deepcopy(model).float().cpu().eval(), output).eval()
    ref = Head(eager.model, "logits").eval()
    with torch.no_grad():
        out = ref(torch.zeros(1, 3, height, width))
    if out.dim() != 4 or out.shape[0] != 1 or tuple(out.shape[-2:]) != (height, width):
        raise ValueError(
            f"the model must return (N, C, H, W) logits at the input size (or {{'out': ...}}); "
            f"got {tuple(out.shape)} for a 1x3x{height}x{width} input"
        )
    return eager, ref, int(out.shape[1])


def example_batch(height: int, width: int, seed: int) -> Tensor:
    """The (2, 3, height, width) batch the exporters trace with (a dynamic batch dimension)."""
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
