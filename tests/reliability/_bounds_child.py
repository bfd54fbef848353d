"""Child process of test_bounds.py: one file prediction (``predict_array``) and its memory.

Run as ``python _bounds_child.py '<json options>'`` (under an address-space limit set by the
parent); prints one JSON object on the last line of stdout: the mode that ran, the estimate
:func:`pspnet.inference.bounds.bounded_options` made, and the resident memory before
(``VmRSS``) and at the peak (``VmHWM``, reset just before the prediction where the kernel
allows) of the prediction, read from ``/proc/self/status``.

Models: ``"r18"`` is a real PSPNet-R18 (a 32-channel head, output stride 8: the estimate's
activation term matters); ``"pooled"`` is a tiny PSPNet behind a 16x average pool, so a
16-megapixel image runs in seconds while the scores, softmax and sums are full-size.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from torch import nn

from pspnet.config import Preprocessing
from pspnet.engine.predict import predict_array
from pspnet.inference import InferenceOptions
from pspnet.inference.bounds import bounded_options
from pspnet.models.registry import create_model

from _proc_memory import reset_peak as _reset_peak  # noqa: E402 - beside this script
from _proc_memory import status as _status  # noqa: E402




def _model(kind: str, classes: int) -> nn.Module:
    if kind == "r18":
        return create_model("pspnet_r18", classes, head_channels=32, aux=False).eval()
    net = create_model("pspnet_r18", classes, head_channels=16, ppm_channels=16, aux=False,
                       output_stride=32)
    return nn.Sequential(nn.AvgPool2d(16), net).eval()


def main() -> None:
    opt = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    h, w, c = int(opt["height"]), int(opt["width"]), int(opt["num_classes"])
    model = _model(opt["model"], c)
    image = np.empty((h, w, 3), np.uint8)
    image[...] = (np.arange(w, dtype=np.uint8) * 7)[None, :, None]  # every page written
    opts = InferenceOptions(mode=opt.get("mode", "whole"))
    if "max_memory" in opt:
        opts = opts.replace(max_memory=opt["max_memory"])
    plan = bounded_options(model, h, w, c, opts)
    reset = _reset_peak()
    base = _status("VmRSS")
    labels = predict_array(model, image, Preprocessing(), opts, num_classes=c)
    out = {
        "mode": plan.options.mode, "crop": plan.options.crop_size, "estimate": plan.estimate,
        "notice": plan.notice, "shape": list(labels.shape), "max_label": int(labels.max()),
        "base": base, "peak": _status("VmHWM"), "reset": reset, "vmpeak": _status("VmPeak"),
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
