"""The authors' network, to the logit: golden outputs computed with hszhao/semseg's own code.

``tests/fixtures/semseg_golden.npz`` was written by ``bench/make_golden.py`` from semseg's
``model/pspnet.py`` with the deterministic weights of ``tests/golden.py``. Here the same weights
are saved in the authors' checkpoint layout (``{'epoch', 'state_dict', 'optimizer'}`` with the
``module.`` prefix), loaded through :func:`pspnet.load_model`, and compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pspnet
from golden import deterministic_images, fill_deterministic, to_semseg_layout

FIXTURE = Path(__file__).parents[1] / "fixtures" / "semseg_golden.npz"
CASES = [("pspnet50", (1, 3, 473, 473)), ("pspnet50", (1, 3, 377, 473)), ("pspnet101", (1, 3, 473, 473))]


def _semseg_checkpoint(tmp_path: Path, arch: str, seed: int) -> Path:
    sd = fill_deterministic(pspnet.create_model(arch, 5), seed)
    path = tmp_path / f"{arch}_train_epoch_100.pth"
    torch.save({"epoch": 100, "state_dict": to_semseg_layout(sd), "optimizer": {}}, path)
    return path


def _max_rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("arch, shape", CASES)
def test_authors_logits(tmp_path: Path, arch: str, shape: tuple[int, ...]) -> None:
    golden = np.load(FIXTURE)
    step, seed = int(golden["step"]), int(golden["seed"])
    key = f"{arch}_{shape[2]}x{shape[3]}"
    model = pspnet.load_model(_semseg_checkpoint(tmp_path, arch, seed))
    assert model.config.arch == arch and model.config.num_classes == 5  # inferred from the file
    with torch.no_grad():
        out = model(deterministic_images(shape, seed=1))["out"]
    assert out.shape == shape[:1] + (5,) + shape[2:]
    ref = golden[key + "_grid"]
    assert _max_rel_diff(out[:, :, ::step, ::step].numpy(), ref) <= 1e-4
    stats = golden[key + "_stats"]
    np.testing.assert_allclose(
        [out.mean().item(), out.abs().mean().item(), out.abs().max().item()], stats, rtol=1e-4
    )


@pytest.mark.slow
def test_golden_check_is_sensitive_to_the_dilation_convention(tmp_path: Path) -> None:
    """mmseg's contracted dilation has the same weights but must not pass as the authors' net."""
    golden = np.load(FIXTURE)
    path = _semseg_checkpoint(tmp_path, "pspnet50", int(golden["seed"]))
    model = pspnet.load_model(path, contract_dilation=True)
    with torch.no_grad():
        out = model(deterministic_images((1, 3, 473, 473), seed=1))["out"]
    grid = out[:, :, :: int(golden["step"]), :: int(golden["step"])].numpy()
    assert _max_rel_diff(grid, golden["pspnet50_473x473_grid"]) > 1e-2
