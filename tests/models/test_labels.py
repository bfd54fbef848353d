"""Labels of upsampled logits found at the coarse resolution: exactly the compiled argmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import pspnet
from golden import deterministic_images, fill_deterministic
from pspnet.inference import predict_labels
from pspnet.models.fuse import _freezing, optimize_for_inference
from pspnet.models.labels import bilinear_as_compiled, labels_from_coarse


def _coarse(seed: int, shape: tuple[int, int, int, int], dtype: torch.dtype) -> Tensor:
    """Logits with clear regions, exact ties, near ties and signed zeros.

    A smooth field per class (regions where one class leads by far: decided cells), values
    rounded to quarters in part of the image (many classes exactly equal: ties that only the
    first-maximum rule settles), and -0.0 next to 0.0.
    """
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    yy = torch.linspace(0, 1, h)[:, None]
    xx = torch.linspace(0, 1, w)[None, :]
    centres = torch.rand(c, 2, generator=g)
    field = -((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) * 40
    x = field.expand(n, c, h, w) + 0.3 * torch.randn(n, c, h, w, generator=g)
    quarter = torch.rand(n, 1, h, w, generator=g) < 0.4
    x = torch.where(quarter, (x * 4).round() / 4, x)
    zero = torch.rand(n, c, h, w, generator=g) < 0.1
    x = torch.where(zero, torch.where(torch.rand(n, c, h, w, generator=g) < 0.5, 0.0, -0.0), x)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ac", [False, True])
def test_labels_are_the_first_maximum_of_the_upsampled_logits(dtype: torch.dtype,
                                                              ac: bool) -> None:
    cases = [((2, 7, 5, 6), (37, 45)), ((1, 4, 4, 4), (29, 29)), ((1, 3, 6, 5), (6, 9)),
             ((1, 1, 3, 3), (17, 17)), ((1, 5, 1, 7), (3, 50)),
             ((1, 4, 10, 10), (5, 7)), ((1, 3, 5, 5), (1, 1)), ((1, 3, 1, 1), (9, 9))]
    for seed in range(6):
        for shape, size in cases:
            coarse = _coarse(seed, shape, dtype)
            for memory in (torch.contiguous_format, torch.channels_last):
                x = coarse.contiguous(memory_format=memory)
                expected = bilinear_as_compiled(x, size, ac).max(dim=1).indices
                got = labels_from_coarse(x, size, ac, max_work=1 << 40)
                assert got is not None and got.dtype == torch.int64
                assert torch.equal(got, expected), (seed, shape, size, memory)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_lead_of_one_rounding_step_is_not_taken_for_granted(dtype: torch.dtype) -> None:
    # Class 1 leads class 0 by one step of the dtype at every corner, across binades: between
    # corners the two interpolated values often round to the same number, and then the first
    # maximum is class 0. Only the interpolated values can tell.
    g = torch.Generator().manual_seed(3)
    base = (torch.rand(1, 1, 6, 6, generator=g) * 6 - 3).exp().to(dtype)
    signed = torch.where(torch.rand(1, 1, 6, 6, generator=g) < 0.3, -base, base)
    bigger = torch.nextafter(signed.float(), torch.tensor(float("inf"))) if dtype == \
        torch.float32 else _next_up(signed)
    coarse = torch.cat([signed, bigger.to(dtype)], dim=1)
    assert bool((coarse[:, 1].float() > coarse[:, 0].float()).all())
    for ac in (False, True):
        expected = bilinear_as_compiled(coarse, (41, 43), ac).max(dim=1).indices
        assert 0 < int(expected.sum()) < expected.numel()  # class 0 wins some ties
        assert torch.equal(labels_from_coarse(coarse, (41, 43), ac, max_work=1 << 40), expected)


def _next_up(x: Tensor) -> Tensor:
    """The next representable bf16/fp16 value above each (nonzero) value."""
    bits = x.view(torch.int16)
    return torch.where(x > 0, bits + 1, bits - 1).to(torch.int16).view(x.dtype)


def test_both_kinds_of_cell_occur_in_the_cases_above() -> None:
    coarse = _coarse(0, (2, 7, 5, 6), torch.bfloat16)
    # Some cells undecided: with no work allowed the function gives up ...
    assert labels_from_coarse(coarse, (37, 45), False, max_work=0) is None
    # ... and a cell with one clear leader at its corners needs none.
    clear = torch.zeros(1, 3, 2, 2)
    clear[:, 1] = 5.0
    labels = labels_from_coarse(clear, (9, 9), True, max_work=0)
    assert labels is not None and bool((labels == 1).all())


def test_it_gives_up_where_it_is_not_exact_or_not_cheaper() -> None:
    coarse = _coarse(1, (1, 4, 4, 4), torch.float32)
    for bad in (float("nan"), float("inf")):
        x = coarse.clone()
        x[0, 2, 1, 1] = bad
        assert labels_from_coarse(x, (20, 20), False) is None
    assert labels_from_coarse(coarse.to(torch.float64), (20, 20), False) is None
    # Equal logits everywhere: every class is a candidate in every cell, more work than
    # upsampling all of them.
    assert labels_from_coarse(torch.zeros(1, 6, 4, 4), (30, 30), False) is None


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ac", [False, True])
def test_the_reference_is_what_the_compiled_upsampling_computes(dtype: torch.dtype,
                                                                ac: bool) -> None:
    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, (37, 45), mode="bilinear", align_corners=ac)

    compiled = torch.compile(up, dynamic=False)
    for seed in range(2):
        coarse = _coarse(seed, (2, 7, 5, 6), dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), _freezing(True):
            out = compiled(coarse)
        assert torch.equal(out, bilinear_as_compiled(coarse, (37, 45), ac))
        got = labels_from_coarse(coarse, (37, 45), ac, max_work=1 << 40)
        assert torch.equal(got, out.max(dim=1).indices)


@pytest.mark.slow
def test_compiled_inference_model_labels_skip_the_full_size_logits(monkeypatch) -> None:
    from pspnet.models import fuse

    torch._dynamo.reset()  # this test counts graphs: none of other tests' may be in the way
    net = pspnet.create_model("pspnet_r18", 5, head_channels=16, aux_channels=16,
                              ppm_channels=8, output_stride=8)
    fill_deterministic(net, 4)
    x = deterministic_images((2, 3, 41, 50), seed=2)
    few = optimize_for_inference(net.eval(), precision="bf16", compile=True)
    # 5 classes x 41 x 50 values: fewer than it takes for the coarse way to pay.
    assert few.native_labels(x) is None and not few._graphs
    monkeypatch.setattr(fuse, "COARSE_LABELS_MIN_VALUES", 0)
    for precision in ("fp32", "bf16"):
        fast = optimize_for_inference(net.eval(), precision=precision, compile=True)
        # (max_work: these noisy tiny logits are cheaper to upsample in full by default)
        got = fast.native_labels(x, max_work=1 << 40)
        assert got is not None
        labels, c = got
        assert c == 5 and labels.shape == (2, 41, 50)
        # Neither the full-size logits graph nor the upsampling-only one was needed ...
        assert set(fast._graphs) == {"coarse"}
        # ... and the labels are those of the compiled network's own logits.
        assert torch.equal(labels, fast.native_logits(x).max(dim=1).indices), precision
        assert torch.equal(predict_labels(fast, x), labels)  # with the default budget
        # Forced onto the fallback (a compiled upsampling of the coarse logits): the same.
        forced, _ = fast.native_labels(x, max_work=0)
        assert "upsample" in fast._graphs and torch.equal(forced, labels), precision
    eager = optimize_for_inference(net.eval(), precision="bf16")
    assert eager.native_labels(x) is None  # ATen's eager upsampling is not the replicated one


class _FixedLogits(torch.nn.Module):
    """A "network" whose coarse logits are a given tensor, upsampled as PSPNet does."""

    align_corners = True

    def __init__(self, coarse: Tensor) -> None:
        super().__init__()
        self.coarse = torch.nn.Parameter(coarse, requires_grad=False)

    def coarse_logits(self, images: Tensor) -> Tensor:
        return self.coarse * 1  # (N, C, h, w); a new tensor, as a network's would be

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"out": F.interpolate(self.coarse_logits(images), images.shape[-2:],
                                     mode="bilinear", align_corners=True)}


def test_a_graph_that_ran_eagerly_gets_the_labels_of_the_eager_upsampling(monkeypatch) -> None:
    """dynamo runs a frame eagerly past its recompile limit (8 graphs per code object); the
    network's logits are then ATen's upsampling, whose float32 results differ from inductor's
    in the last bit: the labels must be theirs, not the compiled formula's."""
    from pspnet.models import fuse

    monkeypatch.setattr(torch, "compile", lambda m, **_: m)  # every "compiled" call eager
    monkeypatch.setattr(fuse, "COARSE_LABELS_MIN_VALUES", 0)
    g = torch.Generator().manual_seed(10)  # logits where the two upsamplings' labels differ
    coarse = (torch.randn(2, 5, 6, 7, generator=g) * 0.1 + 0.3).to(torch.bfloat16)
    x = torch.zeros(2, 3, 41, 50)
    formula = labels_from_coarse(coarse, (41, 50), True, max_work=1 << 40)
    eager = F.interpolate(coarse, (41, 50), mode="bilinear", align_corners=True)
    assert not torch.equal(formula, eager.max(dim=1).indices)  # else this test shows nothing
    fast = optimize_for_inference(_FixedLogits(coarse), precision="bf16", fold_bn=False,
                                  compile=True)
    labels, c = fast.native_labels(x, max_work=1 << 40)
    assert c == 5 and torch.equal(labels, fast.native_logits(x).max(dim=1).indices)
    assert torch.equal(labels, eager.max(dim=1).indices)
