"""Prediction on files: images, folders and videos -> palette PNG masks and overlays.

Works with any model that :mod:`pspnet.inference` accepts (eager PyTorch, or an exported ONNX /
TorchScript runtime from :mod:`pspnet.export`), given the preprocessing and class names that
travel with the weights.

Nothing the user has is overwritten: :func:`predict_files` plans every output path before it
predicts anything and refuses (``FileExistsError``, naming the file and the fix) an output that
is one of the inputs, or an existing file it did not write itself. What it wrote is listed in
``OUT/summary.json`` (``outputs``, kept over runs), so a second run may replace its own masks,
and a folder input (:func:`expand_inputs`) leaves them out: predicting a folder into itself
does not take the previous run's masks and overlays for photos.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pspnet.config import Preprocessing
from pspnet.data.io import IMAGE_EXTENSIONS, DataError, read_image
from pspnet.data.palette import default_palette, overlay, save_mask_png
from pspnet.inference import InferenceOptions, predict_labels, predict_labels_tiled
from pspnet.inference.bounds import bounded_options

__all__ = ["OutputOptions", "VIDEO_EXTENSIONS", "expand_inputs", "plan_outputs", "to_tensor",
           "predict_array", "predict_files", "written_before"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})


#: The older name of the inference settings; the file predictor takes
#: :class:`~pspnet.inference.InferenceOptions` (how to predict) and :class:`OutputOptions`
#: (what to write).


@dataclass(frozen=True)
class OutputOptions:
    """What :func:`predict_files` writes besides the masks, and what it reads."""

    alpha: float = 0.5
    """Overlay opacity."""
    overlays: bool = True
    """Also write ``<stem>_overlay.png`` (and a video's ``_overlay.mp4``)."""
    max_pixels: int = 120_000_000
    """Refuse larger images (decompression bombs)."""


@dataclass
class PredictSummary:
    """What was written, for the caller to print or save as JSON."""

    written: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


SUMMARY_FILE = "summary.json"


def written_before(out_dir: Path) -> set[str]:
    """Names (relative to ``out_dir``) of what earlier runs of :func:`predict_files` wrote there,
    as ``OUT/summary.json`` lists them (``"clip/"`` for a video's mask folder)."""
    try:
        doc = json.loads((out_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return set()
    names = doc.get("outputs") if isinstance(doc, dict) else None
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Images, folders (their images and videos, sorted, not recursive) and videos.

    A folder's files that :func:`predict_files` wrote there (listed in its ``summary.json``)
    are left out: they are results, not inputs.

    Raises:
        FileNotFoundError: An input does not exist.
        DataError: A file has an extension that is neither an image nor a video.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            ours = written_before(p)
            found = sorted(
                q for q in p.iterdir()
                if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
                and q.name not in ours
            )
            if not found:
                kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise DataError(f"{p} holds no images or videos ({kinds})")
            out += found
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
                raise DataError(
                    f"{p}: extension {p.suffix or '(none)'} is neither an image "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a video "
                    f"({', '.join(sorted(VIDEO_EXTENSIONS))})"
                )
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


def to_tensor(image: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 normalised for the model."""
    x = image[..., ::-1] if pre.channel_order == "BGR" else image
    # (3, H, W); copy=True: a float32 input must not be normalised in the caller's array.
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).to(torch.float32, copy=True)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    # In place: ``t`` is a fresh copy, and on a 6000x4000 image each extra
    # full-size float32 copy is ~290 MB.
    return t.sub_(mean).div_(std).unsqueeze(0)


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.inference_mode()
def predict_array(
    model: nn.Module, image: np.ndarray, pre: Preprocessing, opts: InferenceOptions,
    num_classes: int | None = None,
) -> np.ndarray:
    """Class index map (H, W) of one RGB uint8 image at its own size.

    ``opts.align_corners`` left None is the model's own (``model.config.align_corners``).
    A whole-image pass estimated above ``opts.max_memory`` runs as a sliding window, with a
    logged notice (:func:`pspnet.inference.bounds.bounded_options`).

    Raises:
        MemoryBoundError: No mode predicts the image within ``opts.max_memory``.
    """
    opts = bounded_options(model, image.shape[0], image.shape[1], num_classes, opts).options
    x = to_tensor(image, pre).to(_device(model))
    opts = opts.with_align_corners(
        bool(getattr(getattr(model, "config", None), "align_corners", False))
    )
    if opts.mode == "slide" and opts.scales == (1.0,):
        # Single-scale sliding window: reduce to labels block by block, so a huge image never
        # needs a (C, H, W) score tensor (memory stays bounded by the crop and the width).
        labels = predict_labels_tiled(model, x, opts, num_classes=num_classes)[0]
        return labels.cpu().numpy()
    # Labels only: no full-size float32 logits or probabilities (inference.predict_labels).
    labels = predict_labels(model, x, opts, num_classes=num_classes)[0]  # (H, W) int64
    return labels.to(torch.uint8 if int(labels.max()) < 256 else torch.int32).cpu().numpy()


def _outputs(path: Path, stem: str, overlays: bool) -> list[str]:
    """The names :func:`predict_files` writes for one input (relative to the output folder)."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return [f"{stem}/"] + ([f"{stem}_overlay.mp4"] if overlays else [])
    return [f"{stem}.png"] + ([f"{stem}_overlay.png"] if overlays else [])


def plan_outputs(files: Sequence[Path], out: Path, overlays: bool = True) -> list[str]:
    """The output stem of each input, checked so that nothing the user has is overwritten.

    Stems are the inputs' own, numbered (``photo_1``) where two would write the same file.

    Raises:
        FileExistsError: An output would replace an input, or an existing file (or a video's
            mask folder) that no earlier run of :func:`predict_files` wrote.
    """
    inputs = {_resolved(p): p for p in files}
    ours = written_before(out)
    summary = out / SUMMARY_FILE
    if summary.exists() and SUMMARY_FILE not in ours and not _is_summary(summary):
        raise FileExistsError(f"{summary} exists and was not written by pspnet predict; choose "
                              "another --out folder or move the file away")  # fmt: skip
    planned: set[str] = set()
    stems = []
    for path in files:
        stem, n = path.stem, 0
        while planned & set(_outputs(path, stem, overlays)):
            n += 1
            stem = f"{path.stem}_{n}"
        for name in _outputs(path, stem, overlays):
            target = out / name.rstrip("/")
            if _resolved(target) in inputs:
                raise FileExistsError(
                    f"pspnet predict would overwrite the input {inputs[_resolved(target)]} with "
                    f"the {'overlay' if 'overlay' in name else 'mask'} of {path}; choose an --out "
                    f"folder that holds no inputs (e.g. --out {out / 'masks'})"
                )
            if name not in ours and _occupied(target, name.endswith("/")):
                raise FileExistsError(
                    f"{target} exists and pspnet predict did not write it (it is not listed in "
                    f"{summary}); it would be overwritten by the result of {path}: choose another "
                    "--out folder or move the file away"
                )
        planned.update(_outputs(path, stem, overlays))
        stems.append(stem)
    return stems


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p.absolute()


def _occupied(target: Path, folder: bool) -> bool:
    if folder:
        return target.is_file() or (target.is_dir() and any(target.iterdir()))
    return target.exists() or target.is_symlink()


def _is_summary(path: Path) -> bool:
    """Whether ``path`` looks like a summary.json of pspnet predict (of a version without
    ``outputs``)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and set(doc) >= {"written", "failed"}


def _save(out_dir: Path, stem: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
          class_names: Sequence[str] | None, output: OutputOptions) -> dict[str, Any]:
    mask_path = out_dir / f"{stem}.png"
    save_mask_png(mask_path, labels, palette)
    rec: dict[str, Any] = {"mask": str(mask_path), "height": int(labels.shape[0]),
                           "width": int(labels.shape[1])}
    if output.overlays:
        ov_path = out_dir / f"{stem}_overlay.png"
        overlay(image, labels, palette, output.alpha, class_names).save(ov_path)
        rec["overlay"] = str(ov_path)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(palette))
    rec["class_fraction"] = {
        (class_names[i] if class_names else str(i)): round(float(c) / labels.size, 6)
        for i, c in enumerate(counts) if c
    }
    return rec


def _frames(path: Path) -> Iterator[tuple[np.ndarray, float]]:
    """RGB frames of a video and its frame rate (needs the ``video`` extra)."""
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"{path}: reading videos needs OpenCV; install it with pip install 'pspnet[video]'"
        ) from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open the video (corrupt, or a codec OpenCV lacks)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 25.0)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield frame[..., ::-1].copy(), fps  # BGR -> RGB
    finally:
        cap.release()


def _predict_video(model: nn.Module, path: Path, stem: str, out_dir: Path, pre: Preprocessing,
                   opts: InferenceOptions, output: OutputOptions, palette: np.ndarray,
                   class_names: Sequence[str] | None, num_classes: int | None,
                   progress: bool) -> dict[str, Any]:
    import cv2  # type: ignore[import-not-found]

    frame_dir = out_dir / stem
    frame_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    n = 0
    video_out = out_dir / f"{stem}_overlay.mp4"
    try:
        for frame, fps in _frames(path):
            labels = predict_array(model, frame, pre, opts, num_classes)
            save_mask_png(frame_dir / f"{n:06d}.png", labels, palette)
            n += 1
            if not output.overlays:
                continue
            ov = np.asarray(overlay(frame, labels, palette, output.alpha, class_names,
                                    legend=False))
            if writer is None:
                h, w = ov.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(str(video_out), fourcc, fps, (w, h))
            writer.write(np.ascontiguousarray(ov[..., ::-1]))
            if progress:
                print(f"\r{path.name}: {n} frames", end="", file=sys.stderr)
    finally:
        if writer is not None:
            writer.release()
        if progress and n:
            print(file=sys.stderr)
    if n == 0:
        raise DataError(f"{path}: the video has no readable frames")
    return {"video": str(path), "frames": n, "masks": str(frame_dir),
            "overlay": str(video_out) if output.overlays else None}


def predict_files(
    model: nn.Module,
    inputs: Iterable[Path],
    out_dir: str | Path,
    *,
    preprocess: Preprocessing,
    opts: InferenceOptions,
    output: OutputOptions | None = None,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | Sequence[Sequence[int]] | None = None,
    num_classes: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> PredictSummary:
    """Predict every input and write ``OUT/<stem>.png`` (+ ``_overlay.png``) at original size.

    Photos are turned upright by their EXIF orientation first (a phone's portrait shot is
    segmented as shown, not sideways), so masks have the upright size.

    Args:
        model: Eval-mode model (or exported runtime).
        inputs: Files from :func:`expand_inputs`.
        out_dir: Output folder (created).
        preprocess: Normalisation the model expects.
        opts: How to predict (:class:`~pspnet.inference.InferenceOptions`).
        output: Overlays, their opacity, the image size limit (default :class:`OutputOptions`).
        class_names: For the legend and the summary.
        palette: Class colours (default: VOC palette).
        num_classes: Number of classes (for the palette and sliding-window buffers).
        skip_bad: Report unreadable inputs and go on instead of stopping at the first.
        progress: Show a progress bar.

    Returns:
        The summary; also written to ``OUT/summary.json`` (with ``outputs``: every file this and
        earlier runs wrote there), also when an error stops the run (files finished stay).

    Raises:
        FileExistsError: Before anything is predicted, if an output would overwrite an input
            or a file it did not write (:func:`plan_outputs`).
    """
    out = Path(out_dir)
    output = output or OutputOptions()
    files = list(inputs)
    stems = plan_outputs(files, out, output.overlays)
    out.mkdir(parents=True, exist_ok=True)
    n_pal = max(num_classes or 0, len(class_names or ()), 1)
    pal = np.asarray(palette if palette is not None else default_palette(max(n_pal, 2)), np.uint8)
    summary = PredictSummary()
    outputs = written_before(out) | {SUMMARY_FILE}
    try:
        _predict_all(model, files, stems, out, preprocess, opts, output, pal, class_names,
                     num_classes, skip_bad, summary, outputs, progress)
    finally:
        doc = {"written": summary.written, "failed": summary.failed, "outputs": sorted(outputs)}
        (out / SUMMARY_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return summary


def _predict_all(model: nn.Module, files: list[Path], stems: list[str], out: Path,
                 preprocess: Preprocessing, opts: InferenceOptions, output: OutputOptions,
                 pal: np.ndarray, class_names: Sequence[str] | None, num_classes: int | None,
                 skip_bad: bool, summary: PredictSummary, outputs: set[str],
                 progress: bool) -> None:
    """The loop of :func:`predict_files`; ``outputs`` gets each name before it is written."""
    from tqdm import tqdm

    bar = tqdm(list(zip(files, stems)), desc="predict", unit="file",
               disable=not progress or len(files) < 2)  # fmt: skip
    for path, stem in bar:
        outputs.update(_outputs(path, stem, output.overlays))
        try:
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                rec = _predict_video(model, path, stem, out, preprocess, opts, output, pal,
                                     class_names, num_classes, progress)
            else:
                # Photos upright as a viewer shows them (EXIF orientation): no label to match.
                image = read_image(path, max_pixels=output.max_pixels, apply_exif=True)
                labels = predict_array(model, image, preprocess, opts, num_classes)
                rec = {"input": str(path),
                       **_save(out, stem, image, labels, pal, class_names, output)}
            summary.written.append(rec)
        except DataError as e:
            if not skip_bad:
                raise
            summary.failed.append({"input": str(path), "error": str(e)})
