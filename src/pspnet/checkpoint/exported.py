"""Open the files ``pspnet export`` writes: ONNX, OpenVINO and TorchScript runtimes that look
like models.

Reading an export is "weights in", like reading a weight directory or a foreign checkpoint, so
it lives in the checkpoint layer: :func:`pspnet.checkpoint.load_model` hands ONNX and
TorchScript files and OpenVINO IR (``.xml`` beside its ``.bin``), recognised by their content,
not their suffix (a training checkpoint is a ``.pt`` file too), to :func:`open_export` here. The
writers are in :mod:`pspnet.export`.

* :class:`OnnxSegmenter`, :class:`OpenVinoSegmenter`, :class:`TorchScriptSegmenter`,
  :func:`load_exported`,
  :func:`read_metadata`: runtimes usable wherever :mod:`pspnet.inference` expects a model
  (``predict(runtime, images, ...)``); they return logits ``(N, C, H, W)`` (or labels for
  ``output="labels"`` exports) and expose ``.meta`` (:class:`~pspnet.checkpoint.WeightsMeta`)
  like :func:`pspnet.load_model`'s models.
* :func:`is_exported`: whether a model is such a runtime (it cannot be folded or compiled).

Running ONNX files needs onnxruntime (``pip install 'pspnet[onnx]'``), OpenVINO IR files
openvino (``pip install 'pspnet[openvino]'``); nothing here imports them until such a file is
opened.
"""

from __future__ import annotations

import json
import threading
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pspnet.checkpoint.files import CheckpointError, detect_file_kind
from pspnet.checkpoint.weights import WeightsMeta
from pspnet.config import ConfigError, Preprocessing, from_dict

__all__ = [
    "OnnxSegmenter",
    "OpenVinoSegmenter",
    "TorchScriptSegmenter",
    "load_exported",
    "is_exported",
    "read_metadata",
    "open_export",
    "exported_kind",
    "optimisation_refused",
    "METADATA_KEY",
]

Output = Literal["logits", "labels"]

#: Key of the JSON document in ONNX ``metadata_props`` / the TorchScript extra file's name stem.
METADATA_KEY = "pspnet"
TS_EXTRA = "config.json"
EXPORT_FORMAT = "pspnet-export"
EXPORT_VERSION = 1
ONNX_INSTALL_HINT = (
    "install the ONNX extra: pip install 'pspnet[onnx]' (onnx, onnxscript, onnxruntime)"
)
OPENVINO_INSTALL_HINT = "install the OpenVINO extra: pip install 'pspnet[openvino]'"
_TS_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


class NotAnExportError(CheckpointError):
    """An ONNX / TorchScript file without pspnet's export metadata."""

def _meta_from_doc(doc: Mapping[str, Any]) -> WeightsMeta | None:
    if not doc.get("model"):
        return None
    keys = ("model", "classes", "palette", "preprocess", "ignore_index", "source")
    try:
        return from_dict(WeightsMeta, {k: doc[k] for k in keys if k in doc})
    except (ConfigError, TypeError, ValueError):
        return None


def _check_doc(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise NotAnExportError(
            f"{where} carries no pspnet export metadata; export it with pspnet"
        )
    if int(doc.get("version", 0)) > EXPORT_VERSION:
        raise ValueError(
            f"{where} has export metadata version {doc['version']}; this pspnet reads up to "
            f"{EXPORT_VERSION}. Upgrade pspnet."
        )
    return doc


class _ExportedRuntime(nn.Module):
    """Common part of the runtimes: metadata, size checks and the model-like surface."""

    path: Path
    metadata: dict[str, Any]

    def _init_meta(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.metadata = doc
        self.training = False
        size, mn = doc.get("input_size"), doc.get("min_size")
        self.input_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if size else None
        self.min_size: tuple[int, int] | None = (int(mn[0]), int(mn[1])) if mn else None
        self.dynamic = bool(doc.get("dynamic"))
        self.output: Output = doc.get("output", "logits")
        self.num_classes = int(doc.get("num_classes", 0)) or None
        self.meta = _meta_from_doc(doc)
        self.config = self.meta.model if self.meta else None
        classes = doc.get("classes")
        self.classes: tuple[str, ...] | None = tuple(classes) if classes else None
        self.preprocess = from_dict(Preprocessing, doc.get("preprocess") or {})

    def train(self, mode: bool = True) -> _ExportedRuntime:
        if mode:
            raise RuntimeError(f"{self.path} is an exported inference graph; it cannot be trained")
        return super().train(False)

    def check_input(self, images: Tensor | np.ndarray) -> None:
        """Raise ``ValueError`` unless ``images`` is an (N, 3, H, W) batch this file accepts."""
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1] != 3:
            hint = " add a batch dimension first." if len(shape) == 3 else ""
            raise ValueError(
                f"expected normalised images of shape (N, 3, H, W), got {shape};{hint}"
            )
        h, w = int(shape[2]), int(shape[3])
        if self.input_size is not None and (h, w) != tuple(self.input_size):
            eh, ew = self.input_size
            raise ValueError(
                f"{self.path.name} was exported for a fixed input size of {eh}x{ew} "
                f"(height x width) but got {h}x{w}. Re-export with --height {h} --width {w}, "
                f"or export to ONNX with --dynamic to accept any size, or resize/tile the "
                f"images (sliding-window inference with crop_size=({eh}, {ew}))."
            )
        if self.min_size is not None and (h < self.min_size[0] or w < self.min_size[1]):
            mh, mw = self.min_size
            raise ValueError(
                f"{self.path.name} is a dynamic export valid for inputs of at least {mh}x{mw} "
                f"(the exporter's shape assumptions); got {h}x{w}. Upscale or pad the images."
            )

    def __repr__(self) -> str:
        size = "dynamic" if self.input_size is None else "x".join(map(str, self.input_size))
        return (
            f"{type(self).__name__}({str(self.path)!r}, input={size}, output={self.output}, "
            f"classes={self.num_classes})"
        )


def _as_float32(images: Tensor | np.ndarray) -> tuple[np.ndarray | Tensor, torch.device]:
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError(
                f"images must be a normalised float array, got dtype {images.dtype} "
                "(subtract the mean and divide by the std first)"
            )
        return np.ascontiguousarray(images, dtype=np.float32), torch.device("cpu")
    if isinstance(images, Tensor):
        if not images.is_floating_point():
            raise TypeError(
                f"images must be a normalised float tensor, got dtype {images.dtype} "
                "(subtract the mean and divide by the std first)"
            )
        return images, images.device
    raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")


class OnnxSegmenter(_ExportedRuntime):
    """Run a pspnet ONNX export with ONNX Runtime, behaving like an eval-mode model.

    ``segmenter(images)`` takes an (N, 3, H, W) normalised float batch (tensor or numpy) and
    returns a float32 logits tensor (N, C, H, W) on the input's device (int64 labels (N, H, W)
    for ``output="labels"`` exports), so :func:`pspnet.inference.predict` accepts it as a model.
    Fixed-size exports refuse other sizes with a ``ValueError`` naming both sizes and the fix.

    Attributes:
        metadata: The export's metadata document; ``meta`` (:class:`WeightsMeta` or None),
        ``classes``, ``preprocess``, ``input_size`` (None when dynamic), ``min_size``,
        ``output``, ``num_classes`` are read from it.

    Args:
        path: The ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: Intra-op threads (default: ONNX Runtime's choice).
        log_level: ONNX Runtime log severity (0 verbose ... 4 fatal); default ORT's (2).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        log_level: int | None = None,
    ) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                f"running ONNX exports needs onnxruntime; {ONNX_INSTALL_HINT}") from None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"ONNX file {p} does not exist")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        if log_level is not None:
            opts.log_severity_level = int(log_level)
        try:
            self.session = ort.InferenceSession(
                str(p), opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ValueError(f"cannot load {p} with ONNX Runtime: {e}") from None
        custom = self.session.get_modelmeta().custom_metadata_map
        try:
            doc = json.loads(custom.get(METADATA_KEY, "null"))
        except json.JSONDecodeError:
            doc = None
        self._init_meta(p, _check_doc(doc, str(p)))
        self._input = self.session.get_inputs()[0].name

    def forward(self, images: Tensor | np.ndarray) -> Tensor:
        """Logits (N, C, H, W) float32 (labels (N, H, W) int64 for labels exports)."""
        x, device = _as_float32(images)
        self.check_input(x)
        if isinstance(x, Tensor):
            x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self._input: x})[0]
        return torch.from_numpy(out).to(device)


class OpenVinoSegmenter(_ExportedRuntime):
    """Run a pspnet OpenVINO IR export (``model.xml`` + ``model.bin``) with OpenVINO on the CPU.

    Behaves like :class:`OnnxSegmenter`: (N, 3, H, W) normalised float batch in, float32 logits
    (N, C, H, W) out (labels for ``output="labels"`` exports), fixed-size exports refuse other
    sizes naming the fix. Compiled with ``INFERENCE_PRECISION_HINT=f32``: OpenVINO would
    otherwise run float layers in bf16 on CPUs that have it, and an fp32 export must give fp32's
    results (an int8 export's quantized layers stay int8).

    Args:
        path: The ``.xml`` file; its ``.bin`` must lie beside it.
        threads: Inference threads (default: OpenVINO's choice).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        try:
            import openvino as ov
        except ImportError:
            raise ImportError(
                f"running OpenVINO exports needs openvino; {OPENVINO_INSTALL_HINT}"
            ) from None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"OpenVINO IR file {p} does not exist")
        weights = p.with_suffix(".bin")
        if not weights.is_file():
            raise FileNotFoundError(
                f"{p} is an OpenVINO IR file but its weights {weights.name} are not beside it; "
                "copy the .xml and .bin files together"
            )
        core = ov.Core()
        try:
            model = core.read_model(str(p))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise ValueError(f"cannot load {p} with OpenVINO: {e}") from None
        doc = None
        if model.has_rt_info([METADATA_KEY]):
            try:
                doc = json.loads(model.get_rt_info([METADATA_KEY]).astype(str))
            except (json.JSONDecodeError, RuntimeError):
                doc = None
        self._init_meta(p, _check_doc(doc, str(p)))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(model, "CPU", config)
        # One infer request, used under a lock: a request is not thread-safe, and serve may call
        # the runtime from several threads.
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def forward(self, images: Tensor | np.ndarray) -> Tensor:
        """Logits (N, C, H, W) float32 (labels (N, H, W) int64 for labels exports)."""
        x, device = _as_float32(images)
        self.check_input(x)
        if isinstance(x, Tensor):
            x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            out = self._request.infer({0: x})[0]
            # the result is a view of the request's output buffer, reused by the next call
            out = np.array(out, copy=True)
        if self.output == "labels":
            out = out.astype(np.int64, copy=False)
        return torch.from_numpy(out).to(device)


class TorchScriptSegmenter(_ExportedRuntime):
    """A pspnet TorchScript export, with its metadata and a size check that names the fix.

    The scripted module itself also refuses other sizes (raising ``torch.jit.Error`` whose
    message contains the ``ValueError`` text); this wrapper checks first so Python callers get
    a plain ``ValueError``. Returns logits (N, C, H, W) (labels for labels exports).

    Args:
        path: The TorchScript file written by :func:`export_torchscript`.
        map_location: Device to load onto (default CPU).
    """

    def __init__(self, path: str | Path, *, map_location: str | torch.device = "cpu") -> None:
        super().__init__()
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"TorchScript file {p} does not exist")
        extra = {TS_EXTRA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                module = torch.jit.load(str(p), map_location=map_location, _extra_files=extra)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{p} is not a TorchScript file: {e}") from None
        try:
            doc = json.loads(extra[TS_EXTRA] or "null")
        except json.JSONDecodeError:
            doc = None
        self.module = module.eval()
        self._init_meta(p, _check_doc(doc, str(p)))

    def forward(self, images: Tensor | np.ndarray) -> Tensor:
        x, device = _as_float32(images)
        self.check_input(x)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        param = next(iter(self.module.parameters()), None)
        target = param.device if param is not None else x.device
        with torch.no_grad():
            out = self.module(x.to(target, torch.float32))
        return out.to(device)


Runtime = OnnxSegmenter | OpenVinoSegmenter | TorchScriptSegmenter


def load_exported(path: str | Path, **kwargs: Any) -> Runtime:
    """Open an ONNX (``.onnx``), OpenVINO IR (``.xml``) or TorchScript (``.pt``/``.ts``/...)
    export as a model-like runtime.

    Unknown suffixes are recognised by content (TorchScript files are zip archives). ``kwargs``
    go to the runtime's constructor.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exported model {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return OnnxSegmenter(p, **kwargs)
    if suffix == ".xml" or detect_file_kind(p) == "openvino":
        return OpenVinoSegmenter(p, **kwargs)
    if suffix in _TS_SUFFIXES or zipfile.is_zipfile(p):
        return TorchScriptSegmenter(p, **kwargs)
    return OnnxSegmenter(p, **kwargs)


def is_exported(model: object) -> bool:
    """Whether ``model`` is an exported file's runtime (ONNX Runtime, OpenVINO or TorchScript),
    not an eager PyTorch model: it brings its own metadata and cannot be folded or compiled."""
    return isinstance(model, (OnnxSegmenter, OpenVinoSegmenter, TorchScriptSegmenter))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The pspnet metadata document of an ONNX, OpenVINO IR or TorchScript export (no session
    is started)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exported model {p} does not exist")
    if detect_file_kind(p) == "openvino":
        try:
            import openvino as ov
        except ImportError:
            raise ImportError(
                f"reading OpenVINO metadata needs openvino; {OPENVINO_INSTALL_HINT}"
            ) from None
        model = ov.Core().read_model(str(p))
        raw = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info(
            [METADATA_KEY]) else "null"
        return _check_doc(json.loads(raw), str(p))
    if zipfile.is_zipfile(p):
        extra = {TS_EXTRA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        return _check_doc(json.loads(extra[TS_EXTRA] or "null"), str(p))
    try:
        import onnx
    except ImportError:
        raise ImportError(f"reading ONNX metadata needs onnx; {ONNX_INSTALL_HINT}") from None
    proto = onnx.load(str(p), load_external_data=False)
    props = {m.key: m.value for m in proto.metadata_props}
    return _check_doc(json.loads(props.get(METADATA_KEY, "null")), str(p))


def exported_kind(path: Path) -> str | None:
    """``"onnx"``, ``"openvino"`` or ``"torchscript"`` when ``path`` is such a file (by
    content), else None."""
    if not path.is_file():
        return None
    kind = detect_file_kind(path)
    return kind if kind in ("onnx", "openvino", "torchscript") else None


def optimisation_refused(path: str | Path, names: Sequence[str], noun: str) -> str:
    """Why PyTorch optimisations (``names``: flags or arguments) cannot apply to an export."""
    return (f"{' and '.join(names)} optimise PyTorch weights, but {path} is an exported "
            f"model that runs in its own runtime; leave the {noun} out")


def _not_an_export(path: Path, kind: str) -> str:
    """The message for an ONNX / TorchScript file that ``pspnet export`` did not write."""
    what = {"onnx": "it looks like an ONNX model, but one without pspnet export metadata",
            "openvino": "it is an OpenVINO IR file without pspnet export metadata",
            }.get(kind, "it is a TorchScript file without pspnet export metadata")
    runtime = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}.get(kind, "TorchScript")
    return (f"{path} is not a PyTorch checkpoint ({what}): `pspnet predict --weights {path}` "
            f"and `pspnet evaluate --weights {path}` run {runtime} on files written by "
            "`pspnet export` only; export the model with pspnet")


def open_export(
    path: Path,
    kind: str,
    arch: str | None = None,
    num_classes: int | None = None,
    *,
    precision: str = "fp32",
    compile: bool = False,
    **options: Any,
) -> Runtime:
    """:func:`pspnet.checkpoint.load_model` for an ONNX, OpenVINO IR or TorchScript export.

    Exports run in their own runtime on the CPU; their metadata gives the classes, palette and
    preprocessing (``.meta``), and ``arch`` / ``num_classes`` are checked against it.

    Args:
        path: The export (``kind`` from :func:`exported_kind`).
        kind: ``"onnx"``, ``"openvino"`` or ``"torchscript"``.
        arch, num_classes: Checked against the export's metadata when given.
        precision, compile: Must stay ``"fp32"`` / ``False``: an export is not PyTorch weights.
        **options: Not accepted (they configure foreign checkpoints).

    Raises:
        CheckpointError: ``precision`` / ``compile`` / ``options`` given, onnxruntime or
            openvino missing (naming the extra), an OpenVINO ``.xml`` without its ``.bin``, a
            file without pspnet export metadata, a file the runtime cannot open,
            or ``arch`` / ``num_classes`` that contradict the file.
    """
    refused = [f"{k}={v!r}" for k, v in (("precision", precision), ("compile", compile))
               if v != ("fp32" if k == "precision" else False)]
    if refused:
        raise CheckpointError(optimisation_refused(path, refused, "argument"))
    if options:
        raise CheckpointError(f"{path} is an exported model; model options "
                              f"({', '.join(sorted(options))}) apply to foreign checkpoints only")
    runtimes = {"onnx": OnnxSegmenter, "openvino": OpenVinoSegmenter}
    try:
        runtime = runtimes.get(kind, TorchScriptSegmenter)(path)
    except (ImportError, FileNotFoundError) as e:  # a missing extra or .bin: one line, the fix
        raise CheckpointError(f"cannot run {path}: {e}") from None
    except NotAnExportError:
        raise CheckpointError(_not_an_export(path, kind)) from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    got_arch = runtime.meta.model.arch if runtime.meta else None
    if arch is not None and got_arch is not None and arch != got_arch:
        raise CheckpointError(f"{path} holds a {got_arch}, not a {arch} (--arch)")
    if num_classes is not None and runtime.num_classes and num_classes != runtime.num_classes:
        raise CheckpointError(f"{path} has {runtime.num_classes} classes, "
                              f"not {num_classes} (--num-classes)")
    return runtime
