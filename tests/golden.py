"""Deterministic weights and inputs for golden-output tests, and the authors' key layout.

The golden fixtures in ``tests/fixtures/`` were computed once by running hszhao/semseg's own
``model/pspnet.py`` on exactly these weights and inputs (``bench/make_golden.py``), so the parity
tests need neither their code nor any download.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    # numpy's PCG64 `random` stream is stable across versions, unlike torch's normal sampler.
    return torch.from_numpy(lo + (hi - lo) * rng.random(shape, dtype=np.float64)).float()


def fill_deterministic(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fill every parameter and BN buffer of ``model`` with seeded, well-scaled values.

    Conv weights are uniform with the variance that keeps activations O(1) through a deep
    ResNet; BN statistics and affine parameters are non-trivial so a mapping error between
    BN tensors shows up in the logits.
    """
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    out = {}
    for k in sorted(sd):
        t = sd[k]
        shape = tuple(t.shape)
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros_like(t)
        elif t.dim() == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            a = float(np.sqrt(3.0 / fan_in))
            out[k] = _uniform(rng, shape, -a, a)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            out[k] = _uniform(rng, shape, -0.1, 0.1)
        elif k.endswith("running_var"):
            out[k] = _uniform(rng, shape, 0.5, 1.5)
        elif k.endswith(".weight"):  # BN scale
            out[k] = _uniform(rng, shape, 0.5, 1.0)
        else:
            raise KeyError(k)
    model.load_state_dict(out)
    return out


def deterministic_images(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """Normalised-looking inputs in [-2, 2]."""
    rng = np.random.default_rng(seed)
    return _uniform(rng, shape, -2.0, 2.0)


_TO_SEMSEG = [
    (r"^backbone\.conv1\.", "layer0.0."),
    (r"^backbone\.bn1\.", "layer0.1."),
    (r"^backbone\.conv2\.", "layer0.3."),
    (r"^backbone\.bn2\.", "layer0.4."),
    (r"^backbone\.conv3\.", "layer0.6."),
    (r"^backbone\.bn3\.", "layer0.7."),
    (r"^backbone\.(layer[1-4]\.)", r"\1"),
    (r"^head\.ppm\.branches\.(\d+)\.conv\.", r"ppm.features.\1.1."),
    (r"^head\.ppm\.branches\.(\d+)\.bn\.", r"ppm.features.\1.2."),
    (r"^head\.conv\.", "cls.0."),
    (r"^head\.bn\.", "cls.1."),
    (r"^head\.classifier\.", "cls.4."),
    (r"^aux_head\.conv\.", "aux.0."),
    (r"^aux_head\.bn\.", "aux.1."),
    (r"^aux_head\.classifier\.", "aux.4."),
]


def to_semseg_layout(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Our keys -> hszhao/semseg keys (as saved from their DDP-wrapped model)."""
    out = {}
    for k, v in sd.items():
        for pat, rep in _TO_SEMSEG:
            if re.match(pat, k):
                out[prefix + re.sub(pat, rep, k, count=1)] = v
                break
        else:
            raise KeyError(f"no semseg name for {k}")
    return out
