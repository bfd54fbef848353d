"""Losses: ignore handling (an all-ignore batch gives 0, not NaN) and the auxiliary weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import math

import numpy as np

from pspnet.engine.losses import PSPLoss, class_weights_from_counts, cross_entropy


def test_matches_mean_cross_entropy_with_ignore() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, :3] = 255
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, target), ref, atol=1e-6)


def test_all_ignore_batch_gives_zero_loss_and_zero_grad() -> None:
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), 255)
    # The plain mean reduction is 0/0 = NaN here: the reason for our loss.
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=255))
    loss, parts = PSPLoss(aux_weight=0.4)({"out": logits, "aux": logits * 2}, target)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert parts["main"].item() == 0.0 and parts["aux"].item() == 0.0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_aux_weight_and_bf16_logits() -> None:
    torch.manual_seed(1)
    out, aux = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    total, parts = PSPLoss(aux_weight=0.4)({"out": out, "aux": aux}, target)
    expected = F.cross_entropy(out, target) + 0.4 * F.cross_entropy(aux, target)
    assert torch.allclose(total, expected, atol=1e-6)
    assert torch.allclose(parts["aux"], F.cross_entropy(aux, target), atol=1e-6)
    # Without an aux output (eval mode, aux=False models) only the main loss counts.
    total2, parts2 = PSPLoss(0.4)({"out": out}, target)
    assert torch.allclose(total2, F.cross_entropy(out, target)) and parts2["aux"].item() == 0
    # bf16 logits are computed in float32.
    assert cross_entropy(out.bfloat16(), target).dtype == torch.float32


def test_shape_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        cross_entropy(torch.randn(1, 3, 4, 4), torch.zeros(1, 5, 5, dtype=torch.long))


def test_class_weighted_loss_matches_torch_weighted_mean() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 6, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 5))
    target[1, :2] = 255
    w = torch.tensor([0.5, 2.0, 1.0, 4.0])
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    ours = cross_entropy(logits, target, weight=w)
    assert torch.allclose(ours, ref, atol=1e-6)
    # Weighting changes the value (the test would pass trivially with uniform weights).
    assert not torch.allclose(ours, cross_entropy(logits, target), atol=1e-3)
    # The aux term is weighted the same way, and an all-ignore batch is still 0, not NaN.
    total, parts = PSPLoss(0.4, class_weights=w.tolist())({"out": logits, "aux": logits}, target)
    assert torch.allclose(total, 1.4 * ref, atol=1e-5)
    zero = cross_entropy(logits, torch.full((2, 6, 5), 255), weight=w)
    assert zero.item() == 0.0
    with pytest.raises(ValueError, match="class weights have shape"):
        cross_entropy(logits, target, weight=torch.ones(3))


def test_class_weights_from_counts() -> None:
    counts = np.array([700, 200, 100, 0])
    enet = class_weights_from_counts(counts, "enet")
    assert enet[0] == pytest.approx(1 / math.log(1.02 + 0.7))
    assert enet[2] == pytest.approx(1 / math.log(1.02 + 0.1))
    assert enet[3] == 1.0  # absent class: neutral
    assert enet[0] < enet[1] < enet[2]  # rarer classes weigh more
    med = class_weights_from_counts(counts, "median_freq")
    assert med == pytest.approx([0.2 / 0.7, 1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="unknown class weighting 'inverse'.*enet"):
        class_weights_from_counts(counts, "inverse")
    with pytest.raises(ValueError, match="at least one pixel"):
        class_weights_from_counts([0, 0], "enet")
