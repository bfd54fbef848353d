"""Inference fast paths: conv-BN folding, channels_last, bf16/fp16 weights, torch.compile.

On a CPU with AMX (and on GPUs) PSPNet is bound by convolutions in bf16 and by memory traffic
around them (BN, ReLU, upsampling). Folding each eval-mode BatchNorm into the conv before it
removes a full read and write of every activation; channels_last is what oneDNN's bf16 kernels
want (NCHW bf16 is barely faster than fp32); ``torch.compile`` fuses the remaining elementwise
work. See docs/benchmarks.md for what each step buys on the project's machine.

Everything here works on a *copy* of the model (the trained module is never modified) unless
the caller passes ``inplace=True`` because it owns the model (``load_model``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.models.labels import bilinear_as_compiled, labels_from_coarse

__all__ = ["fold_batchnorm", "InferenceModel", "optimize_for_inference", "PRECISIONS"]

#: Below this many logits per image (classes x H x W) :meth:`InferenceModel.native_labels`
#: leaves the labels to the full-size logits: upsampling and reducing them all costs about
#: 1.1 ns a value in bf16 on a 2-core AMX Xeon (1.5 ms for 11 classes at 360x480, CamVid),
#: less than finding the undecided cells of the coarse logits does (3-5 ms there).
COARSE_LABELS_MIN_VALUES = 4_000_000

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

# (conv attribute, bn attribute) pairs as they appear in our modules; Sequential pairs
# (downsample: [conv, bn]) are found positionally below.
_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv", "bn"))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Make ``conv`` (a copy's, or one the caller gave up) compute ``bn(conv(x))``, BN in eval
    mode, and return it.

    The weight is scaled in place: a new weight (and the float64 temporaries the per-channel
    arithmetic would need at full size) would add about twice the largest conv's size to the
    peak memory, 450 MB for pspnet50's 3x3 head conv (measured: folding alone raised the
    process's peak by 695 MiB). The per-channel scale and the bias are computed in float64.
    """
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C,)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    with torch.no_grad():
        conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, 1, 1, 1))  # (C_out, 1, 1, 1)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    return conv


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every conv+BN pair folded into one conv, in eval mode.

    Only BatchNorms that directly follow a conv in our modules are folded (stem, blocks,
    shortcuts, pyramid branches, heads); each is replaced by ``nn.Identity``.

    Args:
        model: The network.
        inplace: Fold ``model`` itself instead of a copy (one copy of the weights less at the
            peak; for callers that own the model, such as ``load_model``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in model.modules():
        for conv_name, bn_name in _PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, _fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = _fold(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return model


def _freezing(compiled: bool) -> contextlib.AbstractContextManager[Any]:
    """Inductor's weight freezing while a compiled forward runs (it compiles on first calls).

    The weights of an :class:`InferenceModel` never change, so inductor may treat them as
    constants: fold them into prepacked oneDNN convolutions. Measured on two AVX2 cores,
    pspnet50 at 473x473, fp32 batch 1: 1936 ms frozen vs 2095-2112 ms compiled without
    freezing and 2234-2265 ms eager. ``torch.compile(options={"freezing": True})`` did not
    take effect in torch 2.13 (same time as without), hence the config patch around the call.
    """
    if not compiled:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


class _Converted(nn.Module):
    """The network between the conversions its callers need, as one graph to compile.

    In: the caller's float32 NCHW images to the weights' dtype and memory format. Out: the
    logits as the network computed them (``output="native"``: its dtype and memory format) or
    as float32 NCHW (``output="float"``: upsampled in float32 from the converted coarse logits,
    which also gives float32 rounding instead of the network's dtype's). Either way the
    full-size float32 NCHW logits are written once, by the upsampling, in eager mode as well
    as compiled.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool,
                 output: Literal["native", "float", "coarse"]) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.output = output

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.output == "coarse":
            # (N, K, h, w) as the network computed them, and whether this call ran compiled:
            # dynamo runs a frame eagerly once its recompile limit is reached (8 graphs per
            # code object: every InferenceModel's graphs and input shapes share this one), and
            # then the network's upsampling is ATen's, not inductor's.
            return self.model.coarse_logits(x), torch.compiler.is_compiling()
        if self.output == "float" and hasattr(self.model, "coarse_logits"):
            # Convert the coarse logits (1/64 of the pixels at stride 8) and upsample them in
            # float32: the full-size logits exist once, in the caller's form. Converting after
            # the network's own upsampling held full-size bf16/fp16 logits and their float32
            # copy at once: +8-11% device memory over fp32 for pspnet50 on an H200, eager.
            coarse = self.model.coarse_logits(x).to(  # (N, K, h, w), h = ceil(H / stride)
                torch.float32, memory_format=torch.contiguous_format)
            return F.interpolate(coarse, images.shape[-2:], mode="bilinear",
                                 align_corners=self.model.align_corners)
        out = self.model(x)["out"]
        if self.output == "float":
            out = out.to(torch.float32, memory_format=torch.contiguous_format)
        return out


class InferenceModel(nn.Module):
    """An eval-only model that takes float32 NCHW images and returns float32 logits.

    It converts the input to the weights' dtype and memory format and the logits back, so it
    can replace the eager model anywhere (``model(images)["out"]``). :mod:`pspnet.inference`
    calls :meth:`native_logits` instead and converts only what it uses (a block of rows, a
    tile), so the labels-only paths never hold full-size float32 logits.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        compile_seconds: Wall time of the first (compiling) calls when compiled, else 0.
    """

    def __init__(self, model: nn.Module, precision: str, channels_last: bool,
                 compiled: bool) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        self.compiled = compiled
        self.compile_seconds = 0.0
        # One graph per output form, each compiled on its first call (per input shape).
        self._graphs: dict[str, Any] = {}
        self._warm: set[tuple[str, tuple[int, ...]]] = set()
        self.train(False)

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError(
                "this model is optimised for inference (BN folded / low precision); train the "
                "original model returned by pspnet.create_model or load_model(precision='fp32')"
            )
        return super().train(False)

    def _run(self, images: Tensor, output: Literal["native", "float", "coarse", "upsample"],
             size: tuple[int, int] | None = None) -> Any:
        if output == "float" and self.dtype == torch.float32 and not self.channels_last:
            output = "native"  # the same graph: the network's output already is float32 NCHW
        graph = self._graphs.get(output)
        if graph is None:
            if output == "upsample":
                graph = _Upsampled(bool(self.model.align_corners))
            else:
                graph = _Converted(self.model, self.dtype, self.channels_last, output)
            if self.compiled:
                graph = torch.compile(graph, dynamic=False)
            self._graphs[output] = graph
        key = (output, tuple(images.shape), size)
        first = self.compiled and key not in self._warm
        t0 = time.perf_counter()
        with torch.inference_mode(), _freezing(self.compiled):
            out = graph(images) if size is None else graph(images, size)
        if first:
            self._warm.add(key)
            self.compile_seconds += time.perf_counter() - t0
        return out

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``{"out": (N, C, H, W) float32 logits}`` in the standard (NCHW) layout."""
        return {"out": self._run(images, "float")}

    def native_logits(self, images: Tensor) -> Tensor:
        """(N, C, H, W) logits as the network computed them: its dtype and memory format.

        No copy is made after the network; the caller converts what it needs.
        """
        return self._run(images, "native")

    def native_labels(self, images: Tensor, *,
                      max_work: int | None = None) -> tuple[Tensor, int] | None:
        """``native_logits(images).max(dim=1).indices`` and the class count, computed faster.

        Where the network upsamples its coarse logits last (``coarse_logits``) and the graph is
        compiled for the CPU, the labels are those of the coarse logits' upsampling as the
        compiled graph computes it, found at the coarse resolution
        (:func:`pspnet.models.labels.labels_from_coarse`): the full-size logits are never
        written or read. pspnet50 bf16 at 473x473 on a 2-core AMX Xeon: the labels in less
        time than the compiled network alone takes to return its logits (docs/benchmarks.md).
        Where the undecided cells would cost more than upsampling everything, the coarse
        logits are upsampled by a compiled graph of their own (the same arithmetic as the
        network's) and reduced. Where dynamo ran the graph eagerly (past its recompile limit),
        the labels are those of ATen's upsampling, as the network's logits then are.

        Args:
            images: Normalised (N, 3, H, W) images on the CPU.
            max_work: Passed to :func:`~pspnet.models.labels.labels_from_coarse` (tests).

        Returns:
            (N, H, W) int64 labels and the number of classes; None where this does not apply
            (not compiled: eager upsampling's arithmetic differs in the last float32 bit; not
            on the CPU; a network without ``coarse_logits``; fewer than
            :data:`COARSE_LABELS_MIN_VALUES` logits per image): use :meth:`native_logits`.
        """
        if not (self.compiled and images.device.type == "cpu"
                and hasattr(self.model, "coarse_logits")):
            return None
        size = (int(images.shape[-2]), int(images.shape[-1]))
        classes = getattr(getattr(self, "config", None), "num_classes", None)
        if isinstance(classes, int) and classes * size[0] * size[1] < COARSE_LABELS_MIN_VALUES:
            return None  # few values: the network's own upsampling and one max are cheaper
        # (N, C, h, w) in the network's dtype and format
        coarse, compiled = self._run(images, "coarse")
        align_corners = bool(self.model.align_corners)
        if not compiled:  # run eagerly by dynamo: the network's own (ATen) upsampling, as then
            up = F.interpolate(coarse, size, mode="bilinear", align_corners=align_corners)
            return up.max(dim=1).indices, int(coarse.shape[1])
        labels = labels_from_coarse(coarse, size, align_corners, max_work=max_work)
        if labels is None:
            up, compiled = self._run(coarse, "upsample", size)
            if not compiled:
                up = bilinear_as_compiled(coarse, size, align_corners)
            labels = up.max(dim=1).indices
        return labels, int(coarse.shape[1])


class _Upsampled(nn.Module):
    """The network's last step alone: bilinear upsampling of its coarse logits to ``size``."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, coarse: Tensor, size: tuple[int, int]) -> tuple[Tensor, bool]:
        up = F.interpolate(coarse, size, mode="bilinear", align_corners=self.align_corners)
        return up, torch.compiler.is_compiling()  # as _Converted's "coarse" output


def default_channels_last(precision: str, device: str | torch.device, compiled: bool) -> bool:
    """Whether :func:`optimize_for_inference` uses NHWC when the caller does not say.

    On a CPU: for bf16/fp16 (oneDNN's bf16 kernels need NHWC), not for fp32 (no gain). On CUDA:
    only when compiled; pspnet50 at batch 1 on an H200 ran eager bf16 1.2x (473) and 2.2x (713)
    slower in NHWC than in NCHW, and compiled bf16 about 1.1x faster (docs/benchmarks.md).
    """
    if precision == "fp32":
        return False
    return torch.device(device).type == "cpu" or compiled


def optimize_for_inference(
    model: nn.Module,
    *,
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    channels_last: bool | None = None,
    fold_bn: bool = True,
    compile: bool = False,
    device: str | torch.device | None = None,
    inplace: bool = False,
) -> InferenceModel:
    """Build the fast inference version of a (trained) model.

    Args:
        model: An eager PSPNet (not modified unless ``inplace``).
        precision: Weight/activation dtype. ``bf16`` uses AMX on recent Xeons and tensor cores
            on GPUs; ``fp16`` is meant for CUDA.
        channels_last: NHWC memory format; default :func:`default_channels_last` (on for
            bf16/fp16 on a CPU; on CUDA only when compiled; off for fp32).
        fold_bn: Fold BatchNorm into the convs.
        compile: Wrap in ``torch.compile(dynamic=False)``; each new input shape compiles once
            (its cost is reported as ``compile_seconds``).
        device: Move the model here first (default: where it is).
        inplace: Convert ``model`` itself rather than a copy, which is then unusable as an
            eager model: one copy of the weights less in memory, for callers that own it
            (``load_model``).

    Returns:
        An :class:`InferenceModel` carrying the original's ``config`` and ``meta``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if fold_bn:
        m = fold_batchnorm(model, inplace=inplace)
    else:
        m = (model if inplace else copy.deepcopy(model)).eval()
    if device is not None:
        m = m.to(device)
    if channels_last is None:
        channels_last = default_channels_last(precision, next(m.parameters()).device, compile)
    m = m.to(PRECISIONS[precision])
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.requires_grad_(False)
    fast = InferenceModel(m, precision, channels_last, compile)
    for attr in ("config", "meta"):
        if hasattr(model, attr):
            setattr(fast, attr, getattr(model, attr))
    return fast

