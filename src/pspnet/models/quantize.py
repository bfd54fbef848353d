"""int8 post-training quantization: PT2E with torchao's x86 quantizer, run by inductor.

The network is exported (``torch.export``), observed on calibration images
(``prepare_pt2e``: static, per-tensor u8 activations and per-channel s8 weights, the x86
inductor quantizer's default), converted to quantize/dequantize pairs (``convert_pt2e``) and
compiled by inductor with weight freezing, which lowers the pairs around each convolution to
oneDNN int8 convolutions (``onednn.qconv2d_pointwise``) that run on AVX2 as well as on
AVX512-VNNI and AMX. Needs torchao (``pip install 'pspnet[int8]'``), imported only here, on
first use.

Why this engine: measured alternately in one process (``bench/int8_engines.py``), see
docs/benchmarks.md "int8 (AVX2 machine)".
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pspnet.models.fuse import fold_batchnorm
from pspnet.models.labels import labels_from_coarse

__all__ = ["Int8Model", "quantize_pt2e", "INT8_INSTALL_HINT"]

INT8_INSTALL_HINT = "install the int8 extra: pip install 'pspnet[int8]' (torchao)"


class _Logits(nn.Module):
    """The network reduced to its logits tensor (export wants one tensor, not a dict).

    The coarse logits where the network has them (before its final upsampling): inductor's
    kernel for that upsampling, in the int8 graph, took 76 of pspnet50's 211 ms at 473x473 on
    an AMX Xeon, and eager ``F.interpolate`` after the graph 48 (2026-12-05). So
    :class:`Int8Model` upsamples outside the graph.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.coarse = hasattr(model, "coarse_logits")

    def forward(self, images: Tensor) -> Tensor:
        if self.coarse:
            return self.model.coarse_logits(images)  # (N, K, ceil(H / s), ceil(W / s))
        return self.model(images)["out"]


#: Loggers that torchao's import makes speak about nothing the int8 path uses (see below).
_IMPORT_NOISE = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Hold back the warnings torchao's import logs on a CPU-only torch.

    Its wheel ships only CUDA kernels (``_C_cutlass_90a``, ``_C_mxfp8``): on a CPU-only torch
    each fails to load and torchao logs "Failed to load ..." per file, and torch's pytree logs a
    deprecation for one of torchao's enums. The x86 int8 path runs torch's own oneDNN kernels,
    so a user of ``--precision int8`` would read three warnings about nothing it uses. With a
    CUDA torch the messages stay: there those kernels could matter.
    """
    if torch.version.cuda is not None:
        yield
        return
    loggers = [logging.getLogger(name) for name in _IMPORT_NOISE]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_torchao() -> Any:
    try:
        with _quiet_import():
            from torchao.quantization.pt2e import quantize_pt2e as q
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise ImportError(f"int8 inference needs torchao ({e}); {INT8_INSTALL_HINT}") from None
    return q, xiq


def _release_freed_memory() -> None:
    """Hand the heap that the last phase freed back to the system (glibc's ``malloc_trim``).

    Export, observation and conversion each build transient graphs out of many small and
    medium allocations, which glibc keeps resident after they are freed, while the next phase's
    large tensors are mapped afresh: without trimming, the freed heap and the next phase's
    peak add up (pspnet50 at 473: 1213 MiB peak; trimmed after each phase, see
    docs/benchmarks.md). Nothing happens on other C libraries (musl, macOS, Windows).
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def _dynamo_globals() -> dict[tuple[int, str], dict[str, Any]]:
    """Every ``__compiled_fn...`` global torch's tracer has installed: ``(id of the module's
    namespace, name)`` -> that namespace."""
    found = {}
    for module in list(sys.modules.values()):
        try:
            names = vars(module)
        except Exception:  # noqa: BLE001  (sys.modules may hold any object, lazy loaders too)
            continue
        if isinstance(names, dict):
            found.update({(id(names), k): names for k in list(names)
                          if isinstance(k, str) and k.startswith("__compiled_fn")})
    return found


@contextlib.contextmanager
def _no_leaked_graphs() -> Iterator[None]:
    """Remove the graphs a strict ``torch.export`` leaves behind as module globals.

    Strict export traces with dynamo, which installs the traced graph, holding every weight
    of the model, as a global ``__compiled_fn_<n>_<uuid>`` of one of torch's own modules
    (``torch._dynamo.functional_export`` in torch 2.13) and never removes it, not even on
    ``torch._dynamo.reset()``. The float model would then outlive the int8 one that replaced
    it, for the life of the process: 178 MiB for pspnet50 (found with ``gc.get_referrers``;
    tested). The exported program does not use them.
    """
    before = _dynamo_globals()
    try:
        yield
    finally:
        for (_, name), names in _dynamo_globals().items():
            if (id(names), name) not in before:
                names.pop(name, None)


#: Functions memoised per module with an unbounded ``functools.cache`` that quantizing calls
#: on the exported and prepared graphs: ``(module, name)``.
_MODULE_CACHES = (
    ("torchao.utils", "_assert_and_get_unique_device"),  # torchao 0.18
    ("torch.ao.quantization.fx.utils", "assert_and_get_unique_device"),  # torch 2.13
)


def _clear_module_caches() -> None:
    """Forget the modules torchao and torch memoised while preparing and converting.

    Both memoise ``assert_and_get_unique_device(module)`` with an unbounded
    ``functools.cache`` keyed by the module, so the exported and the prepared graphs, each
    with every float weight, stay alive for the life of the process (found with
    ``gc.get_referrers``; tested). The caches only save recomputing a device; clearing them
    loses nothing. Nothing happens where a function is absent or not cached (other versions).
    """
    for module_name, name in _MODULE_CACHES:
        cached = getattr(sys.modules.get(module_name), name, None)
        clear = getattr(cached, "cache_clear", None)
        if clear is not None:
            clear()


def _freezing() -> contextlib.AbstractContextManager[Any]:
    """Inductor weight freezing: what turns quantize/dequantize pairs into int8 convolutions."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


class Int8Model(nn.Module):
    """An eval-only int8 model: float32 NCHW images in, ``{"out": float32 logits}`` out.

    The graph is exported with a symbolic height and width (the calibrated scales hold for any
    size); inductor compiles it once per input size. It is exported for batch 1 (export
    specialises a batch of 1), so a batch runs image by image, which costs nothing on a CPU.

    Attributes:
        precision: ``"int8"``.
        compile_seconds: Wall time spent in the first call per input shape.
        calibration_images: How many images calibrated it.
    """

    def __init__(self, graph: nn.Module, calibration_images: int,
                 upsample: bool = False, align_corners: bool = False) -> None:
        super().__init__()
        self.graph = graph
        # Whether the graph returns coarse logits, which forward upsamples to the input's size
        # (as the float network's own last step, with its align_corners).
        self.upsample = upsample
        self.align_corners = align_corners
        # Born in eval mode: callers that save and restore the mode (evaluate_model does
        # ``net.train(net.training)`` afterwards) must never ask an int8 model to train.
        self.training = False
        self.precision = "int8"
        self.compiled = True
        self.calibration_images = calibration_images
        self.compile_seconds = 0.0
        self._forward = torch.compile(graph, dynamic=False)
        self._warm: set[tuple[int, ...]] = set()

    def train(self, mode: bool = True) -> Int8Model:
        if mode:
            raise RuntimeError(
                "this model is quantized to int8 for inference; train the original model "
                "(pspnet.create_model or load_model(precision='fp32'))"
            )
        # Not recursing: an exported graph refuses .train()/.eval() (torchao), and evaluation
        # calls model.eval() on whatever it is given.
        self.training = False
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        out = self._graph_out(images)
        if self.upsample:  # once for the batch, after joining the small coarse logits
            out = F.interpolate(out, images.shape[-2:], mode="bilinear",
                                align_corners=self.align_corners)
        return {"out": out}

    def native_labels(self, images: Tensor, *,
                      max_work: int | None = None) -> tuple[Tensor, int] | None:
        """The labels of the int8 logits, found at the coarse resolution, and the class count.

        As :meth:`pspnet.models.fuse.InferenceModel.native_labels`: the upsampling of the
        graph's coarse logits is never written (pspnet50 at 473x473 on a 2-core AMX Xeon: 87 ms
        of upsampling and argmax after the int8 graph, docs/benchmarks.md). The labels are the
        first maximum of the bilinear formula in float32 as inductor evaluates it; ``forward``
        upsamples with ATen's eager kernel, whose float32 results may differ in the last bit,
        so where two classes agree to the last bit the argmax of ``forward``'s logits may pick
        the other one.

        Returns:
            (N, H, W) int64 labels and the number of classes; None where the graph returns
            full-size logits or the images are not on the CPU (use ``forward``).
        """
        if not self.upsample or images.device.type != "cpu":
            return None
        coarse = self._graph_out(images)  # (N, C, h, w) float32
        size = (int(images.shape[-2]), int(images.shape[-1]))
        labels = labels_from_coarse(coarse, size, self.align_corners, max_work=max_work)
        if labels is None:  # too many undecided cells: upsample them all, as forward does
            labels = F.interpolate(coarse, size, mode="bilinear",
                                   align_corners=self.align_corners).max(dim=1).indices
        return labels, int(coarse.shape[1])

    def _graph_out(self, images: Tensor) -> Tensor:
        """The compiled graph's output for the batch, image by image, joined."""
        x = images.to(torch.float32)
        first = tuple(x.shape[1:]) not in self._warm
        if first:
            # Compiling is the peak of this path: first hand back what the caller freed since
            # quantizing (load_model's float model, 178 MiB for pspnet50), which glibc would
            # otherwise keep resident beside the compiler's own memory.
            _release_freed_memory()
        t0 = time.perf_counter()
        with torch.no_grad(), _freezing():
            outs = [self._forward(x[i : i + 1]) for i in range(x.shape[0])]
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        if first:
            self._warm.add(tuple(x.shape[1:]))
            self.compile_seconds += time.perf_counter() - t0
            _release_freed_memory()  # what compiling freed: the steady state keeps less
        return out


def _drop_unused_tensors(graph: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers no node of ``graph`` reads.

    ``convert_pt2e`` folds each weight's quantization into an int8 constant but leaves the
    float32 weight registered on the module: 178 MiB of pspnet50's 179 that nothing reads
    (measured), kept for as long as the int8 model lives.
    """
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    names = [name for name, _ in [*graph.named_parameters(remove_duplicate=False),
                                  *graph.named_buffers(remove_duplicate=False)]]
    for name in names:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, leaf)


def quantize_pt2e(
    model: nn.Module, calibration: Sequence[Tensor], *, inplace: bool = False
) -> Int8Model:
    """Quantize a trained (eager, fp32) PSPNet to int8 with calibration images.

    Args:
        model: The eager network (not modified unless ``inplace``: BN is folded in a copy).
        calibration: Normalised float32 images, each (N, 3, H, W), all of one size. More
            images give steadier activation ranges; 16-64 training images are usual.
        inplace: Fold BN into ``model`` itself instead of a copy (one copy of the float
            weights less at the peak; ``load_model`` owns its model and passes True).

    Returns:
        An :class:`Int8Model` carrying the original's ``config`` and ``meta``.

    Raises:
        ValueError: No calibration images, or images of different shapes.
        ImportError: torchao missing (the message names the extra).
    """
    if not calibration:
        raise ValueError("int8 needs calibration images; got none")
    shapes = {tuple(c.shape) for c in calibration}
    if len(shapes) > 1 or len(next(iter(shapes))) != 4:
        raise ValueError(
            f"calibration images must be (N, 3, H, W) batches of one size, got {sorted(shapes)}"
        )
    q, xiq = _import_torchao()
    net = _Logits(fold_batchnorm(model, inplace=inplace)).eval()
    coarse = net.coarse
    example = (calibration[0][:1].to(torch.float32),)
    dims = {"images": {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    with torch.no_grad():
        # strict: the quantizer groups nodes by the source metadata only strict export records
        # (without it, one ReLU module used twice in a block becomes one two-output pattern).
        with _no_leaked_graphs():
            exported = torch.export.export(net, example, dynamic_shapes=dims,
                                           strict=True).module()
        _release_freed_memory()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = q.prepare_pt2e(exported, quantizer)
        for images in calibration:
            for i in range(images.shape[0]):
                prepared(images[i : i + 1].to(torch.float32))
        _release_freed_memory()
        converted = q.convert_pt2e(prepared)
    del exported, prepared, net  # the float graphs: only the int8 one is kept
    _clear_module_caches()  # ... and nothing else keeps them
    _drop_unused_tensors(converted)
    _release_freed_memory()
    fast = Int8Model(converted, len(calibration), upsample=coarse,
                     align_corners=bool(getattr(model, "align_corners", False)))
    for attr in ("config", "meta"):
        if hasattr(model, attr):
            setattr(fast, attr, getattr(model, attr))
    return fast
