"""Numeric precision: which arithmetic this machine does fast, and the autocast for a step.

One home for what ``pspnet train``, inference fast paths and ``pspnet benchmark`` ask of the
hardware: whether a CPU computes bf16 natively (AVX512-BF16 or AMX; elsewhere bf16 is emulated
and slower than fp32), what ``precision: auto`` resolves to, and when channels-last pays.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Literal

import torch

from pspnet.config import ConfigError

#: An explicit arithmetic for a forward pass (``auto`` is resolved before it gets here).
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

#: The autocast dtype of each reduced precision (fp32 runs without autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); else it is emulated."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - private probes; treat failures as "no"
            pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where it is fast (native CPU bf16, or CUDA with bf16), fp16 on older
    GPUs, else fp32. Explicit choices are checked against the device."""
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16":
        raise ConfigError(
            "`train.precision` fp16 needs a CUDA device (it relies on a GradScaler); use bf16 "
            "or fp32 on the CPU"
        )
    if precision == "bf16" and not cpu_has_native_bf16():
        warnings.warn(
            "train.precision is bf16 but this CPU has no native bf16 (AVX512-BF16/AMX): it is "
            "emulated and usually slower than fp32",
            stacklevel=3,
        )
    return precision


def resolve_channels_last(value: bool | str, device: torch.device, precision: str) -> bool:
    """``train.channels_last``: an explicit bool as given; ``auto`` -> on for CUDA and for
    bf16/fp16 steps, off for fp32 on a CPU (slower there; see the config field)."""
    if isinstance(value, bool):
        return value
    return device.type == "cuda" or precision != "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for a bf16/fp16 step on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
