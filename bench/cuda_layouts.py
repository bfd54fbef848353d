"""pspnet50 on one CUDA GPU: precision x memory format, eager, plus a bf16 training step.

    python bench/cuda_layouts.py          # needs a CUDA GPU; prints one line per case

Inference at batch 1 (473 and 713, 150 classes): fp32 with TF32 on (PyTorch's default for
cuDNN convolutions) and off, bf16 autocast and bf16 weights, each in NCHW and NHWC
(channels-last). Then one SGD step of batch 8 at 473 with bf16 autocast, NCHW against NHWC.
Times from CUDA events: the mean of 20 calls after 3 warm-ups (10 and 3 for training).
This is what chose :func:`pspnet.models.fuse.default_channels_last` on CUDA.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import pspnet


def cuda_ms(fn: Callable[[], object], n: int = 20, warmup: int = 3) -> float:
    """Mean milliseconds of ``fn`` over ``n`` calls, from CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; this benchmark measures cuDNN's layouts",
              file=sys.stderr)
        return 2
    dev = "cuda"
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    formats = {False: torch.contiguous_format, True: torch.channels_last}
    for size in (473, 713):
        model = pspnet.create_model("pspnet50", 150).eval().to(dev)
        x = torch.randn(1, 3, size, size, device=dev)
        rows = []
        with torch.no_grad():
            for tf32 in (True, False):
                torch.backends.cudnn.allow_tf32 = tf32
                rows.append((f"fp32 NCHW tf32={tf32}", cuda_ms(lambda: model(x))))
            torch.backends.cudnn.allow_tf32 = True
            for cl, fmt in formats.items():
                m, xx = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)

                def autocast(m: torch.nn.Module = m, xx: torch.Tensor = xx) -> object:
                    with torch.autocast("cuda", torch.bfloat16):
                        return m(xx)

                rows.append((f"bf16 autocast cl={cl}", cuda_ms(autocast)))
                mb = pspnet.create_model("pspnet50", 150).eval().to(dev, torch.bfloat16)
                mb, xb = mb.to(memory_format=fmt), xx.to(torch.bfloat16)
                rows.append((f"bf16 weights cl={cl}", cuda_ms(lambda mb=mb, xb=xb: mb(xb))))
        for name, ms in rows:
            print(f"{size} inference b1 {name:28s} {ms:7.2f} ms")
    model = pspnet.create_model("pspnet50", 150).train().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for cl, fmt in formats.items():
        model = model.to(memory_format=fmt)
        x = torch.randn(8, 3, 473, 473, device=dev).contiguous(memory_format=fmt)
        y = torch.randint(0, 150, (8, 473, 473), device=dev)

        def step() -> None:
            with torch.autocast("cuda", torch.bfloat16):
                out = model(x)
                loss = F.cross_entropy(out["out"], y) + 0.4 * F.cross_entropy(out["aux"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        ms = cuda_ms(step, n=10, warmup=3)
        print(f"train b8 473 bf16 autocast cl={cl}: {ms:.1f} ms/step, {8000 / ms:.1f} img/s, "
              f"max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
