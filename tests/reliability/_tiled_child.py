"""Child process of test_large_image.py: a tiled prediction of one large image, with its memory.

Run as ``python _tiled_child.py '<json options>'``; prints one JSON object on the last line of
stdout. Memory is read from ``/proc/self/status`` (Linux): ``VmRSS`` before the prediction and
``VmHWM`` (the high-water mark of the resident set) after it. Where the kernel allows, the
high-water mark is reset to the current RSS (``/proc/self/clear_refs``, value 5) just before
the prediction, so the peak belongs to the prediction alone; the input is built in place so the
mark is low there anyway.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
from torch import nn

from pspnet.config import Preprocessing
from pspnet.inference import predict_labels_tiled
from pspnet.models.registry import create_model

from _proc_memory import reset_peak as _reset_peak  # noqa: E402 - beside this script
from _proc_memory import status as _status  # noqa: E402




def _photo(h: int, w: int) -> np.ndarray:
    """A (h, w, 3) uint8 RGB picture with structure at every scale (ramps and a checkerboard),
    built from uint8 and bool planes only (no full-size wider temporaries)."""
    ramp_y = (np.arange(h) * 255 // max(h - 1, 1)).astype(np.uint8)
    ramp_x = (np.arange(w) * 255 // max(w - 1, 1)).astype(np.uint8)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = ramp_y[:, None] // 2 + ramp_x[None, :] // 2
    checker = ((np.arange(h) // 97) % 2 == 1)[:, None] ^ ((np.arange(w) // 131) % 2 == 1)[None, :]
    img[..., 1] = np.where(checker, np.uint8(220), np.uint8(20))
    img[..., 2] = 255 - ramp_x[None, :]
    return img


def _normalised(img: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """(1, 3, H, W) float32 ``(x - mean) / std``, built channel by channel in place (no
    full-size temporaries, so the input costs exactly 12 bytes per pixel)."""
    h, w, _ = img.shape
    x = torch.empty((1, 3, h, w), dtype=torch.float32)
    for c in range(3):
        x[0, c] = torch.from_numpy(img[..., c])
        x[0, c].sub_(pre.mean[c]).div_(pre.std[c])
    return x


def main() -> None:
    opt = json.loads(sys.argv[1])
    torch.set_num_threads(int(opt.get("threads", 1)))
    torch.manual_seed(0)
    h, w, c = int(opt["height"]), int(opt["width"]), int(opt["num_classes"])
    # A real (tiny) PSPNet behind an average pool: the network sees each crop at 1/pool of its
    # size, so its cost is small, while everything the tiling does - full-crop-size logits,
    # softmax, the overlap sums, argmax - happens at full resolution as with any model.
    net = create_model(
        "pspnet_r18", c, head_channels=16, ppm_channels=16, aux=False, output_stride=32
    )
    model = nn.Sequential(nn.AvgPool2d(int(opt["pool"])), net).eval()

    x = _normalised(_photo(h, w), Preprocessing())  # the uint8 photo is freed again
    hwm_setup = _status("VmHWM")
    reset = _reset_peak()
    base = _status("VmRSS")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with torch.inference_mode():
        labels = predict_labels_tiled(
            model, x, crop_size=int(opt["crop"]), stride=opt.get("stride"),
            batch_size=int(opt["batch"]), num_classes=c, align_corners=net.config.align_corners,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    peak = _status("VmHWM")
    lab = labels[0]
    counts = torch.bincount(lab.flatten().long(), minlength=c)
    out = {
        "shape": list(lab.shape),
        "batch_shape": list(labels.shape),
        "dtype": str(lab.dtype),
        "max_label": int(lab.max()),
        "classes_present": int((counts > 0).sum()),
        "hwm_setup": hwm_setup,
        "reset": reset,
        "base": base,
        "peak": peak,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if opt.get("control"):
        # Negative control: what holding full-resolution float32 logits for every class at
        # once (predict_sliding's (N, C, H, W) result) adds, measured the same way.
        del labels, lab
        full = torch.ones((1, c, h, w), dtype=torch.float32)  # every page written: resident
        out["control_peak"] = _status("VmHWM")
        out["control_bytes"] = full.numel() * full.element_size()
        del full
    print(json.dumps(out))


if __name__ == "__main__":
    main()
