"""Tests for pspnet.engine.metrics: confusion matrix, IoU conventions, JSON and PNG output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pspnet.engine.metrics import (
    ConfusionMatrix,
    SegMetrics,
    metrics_from_confusion,
    save_confusion_png,
)


def _tiny() -> ConfusionMatrix:
    # K = 3; the last pixel is ignored.
    #   target: 0 0 1 1 2 255
    #   pred:   0 1 1 1 0 2
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 1, 1, 1, 0, 2]), torch.tensor([0, 0, 1, 1, 2, 255]))
    return cm


def test_hand_computed_example() -> None:
    cm = _tiny()
    # Rows = ground truth, columns = prediction, counted by hand from the pixels above.
    expected = np.array(
        [
            [1, 1, 0],  # gt 0: one predicted 0, one predicted 1
            [0, 2, 0],  # gt 1: both predicted 1
            [1, 0, 0],  # gt 2: predicted 0
        ]
    )
    np.testing.assert_array_equal(cm.numpy(), expected)
    m = cm.compute()
    # tp = [1, 2, 0], gt = [2, 2, 1], pred = [2, 3, 0], union = [3, 3, 1]
    np.testing.assert_allclose(m.iou, [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(m.acc, [1 / 2, 1.0, 0.0])
    assert m.miou == pytest.approx(1 / 3)
    assert m.macc == pytest.approx(1 / 2)
    assert m.all_acc == pytest.approx(3 / 5)
    assert m.convention == "nan"
    assert m.confusion.dtype == np.int64


def test_update_accepts_any_shape_and_numpy() -> None:
    pred = torch.tensor([[[0, 1], [1, 1]], [[0, 2], [0, 0]]])  # (2, 2, 2)
    target = torch.tensor([[[0, 0], [1, 1]], [[2, 255], [255, 255]]])
    a = ConfusionMatrix(3)
    a.update(pred, target)
    b = ConfusionMatrix(3)
    b.update(pred.numpy().astype(np.uint8), target.numpy().astype(np.uint8))
    np.testing.assert_array_equal(a.numpy(), _tiny().numpy())
    np.testing.assert_array_equal(b.numpy(), _tiny().numpy())


def test_nan_for_absent_classes_and_semseg_convention() -> None:
    cm = ConfusionMatrix(num_classes=4)
    # Class 2 is predicted but never labelled; class 3 appears nowhere.
    cm.update(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 1]))
    m = cm.compute()
    # tp = [2, 1, 0, 0]; gt = [2, 2, 0, 0]; pred = [2, 1, 1, 0]; union = [2, 2, 1, 0]
    np.testing.assert_allclose(m.iou[:3], [1.0, 0.5, 0.0])
    assert math.isnan(m.iou[3])
    np.testing.assert_allclose(m.acc[:2], [1.0, 0.5])
    assert math.isnan(m.acc[2]) and math.isnan(m.acc[3])
    assert m.miou == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert m.macc == pytest.approx(0.75)
    assert m.all_acc == pytest.approx(3 / 4)

    s = cm.compute("semseg")
    assert s.convention == "semseg"
    assert not np.isnan(s.iou).any() and not np.isnan(s.acc).any()
    np.testing.assert_allclose(s.iou, [1.0, 0.5, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(s.acc, [1.0, 0.5, 0.0, 0.0], atol=1e-9)
    assert s.miou == pytest.approx(1.5 / 4)
    assert s.macc == pytest.approx(1.5 / 4)
    # Same thing through the convention flag.
    assert cm.compute("semseg").miou == s.miou


def test_empty_matrix_gives_nan_without_warnings() -> None:
    with np.errstate(all="raise"):
        m = ConfusionMatrix(3).compute()
    assert math.isnan(m.miou) and math.isnan(m.macc) and math.isnan(m.all_acc)


def test_ignore_handling() -> None:
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(torch.full((4, 4), 1), torch.full((4, 4), 255))
    assert int(cm.matrix.sum()) == 0
    # A custom ignore label.
    cm = ConfusionMatrix(2, ignore_index=-1)
    cm.update(torch.tensor([1, 0, 1]), torch.tensor([-1, 0, 1]))
    np.testing.assert_array_equal(cm.numpy(), [[1, 0], [0, 1]])
    # ignore_index=None: nothing is skipped, so 255 is out of range.
    cm = ConfusionMatrix(2, ignore_index=None)
    with pytest.raises(ValueError, match="255"):
        cm.update(torch.tensor([0]), torch.tensor([255]))
    # Predictions at ignored pixels are irrelevant, even out-of-range ones.
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([7, 1]), torch.tensor([255, 1]))
    np.testing.assert_array_equal(cm.numpy(), [[0, 0], [0, 1]])


def test_out_of_range_values_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target.*3, 7"):
        cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 7, 3, 255]))
    with pytest.raises(ValueError, match="-1"):
        cm.update(torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(ValueError, match="pred"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
    assert int(cm.matrix.sum()) == 0  # failed updates add nothing


def test_bad_inputs_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    with pytest.raises(ValueError):
        metrics_from_confusion(np.zeros((2, 3)))


def test_merge_equals_single_pass() -> None:
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 5, (2, 7, 9), generator=g) for _ in range(4)]
    targets = [torch.randint(0, 6, (2, 7, 9), generator=g) for _ in range(4)]
    targets = [torch.where(t == 5, torch.tensor(255), t) for t in targets]

    single = ConfusionMatrix(5)
    single.update(torch.cat(preds), torch.cat(targets))
    parts = []
    for p, t in zip(preds, targets):
        c = ConfusionMatrix(5)
        c.update(p, t)
        parts.append(c)
    merged = ConfusionMatrix(5)
    for c in parts[:2]:
        merged.merge(c)
    merged += parts[2]
    before = merged.numpy()
    summed = merged + parts[3]
    np.testing.assert_array_equal(summed.numpy(), single.numpy())
    assert summed.compute().miou == single.compute().miou
    # `+` returns a new matrix and leaves its operands alone.
    np.testing.assert_array_equal(merged.numpy(), before)
    with pytest.raises(ValueError, match="num_classes"):
        merged.merge(ConfusionMatrix(4))
    summed.reset()
    assert int(summed.matrix.sum()) == 0


def test_all_reduce_is_noop_without_distributed() -> None:
    cm = _tiny()
    before = cm.numpy()
    assert cm.all_reduce() is cm
    np.testing.assert_array_equal(cm.numpy(), before)


def test_all_reduce_single_process_gloo(tmp_path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        cm = _tiny()
        cm.all_reduce()
        np.testing.assert_array_equal(cm.numpy(), _tiny().numpy())
    finally:
        dist.destroy_process_group()


def _brute_force(pred: list[int], target: list[int], k: int, ignore: int) -> np.ndarray:
    out = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(pred, target):
        if t == ignore:
            continue
        out[t, p] += 1
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    k=st.integers(min_value=1, max_value=6),
    n=st.integers(min_value=0, max_value=60),
)
def test_matches_brute_force(data, k: int, n: int) -> None:
    pred = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    target = data.draw(st.lists(st.sampled_from([*range(k), 255]), min_size=n, max_size=n))
    cm = ConfusionMatrix(k)
    cm.update(torch.tensor(pred, dtype=torch.long), torch.tensor(target, dtype=torch.long))
    expected = _brute_force(pred, target, k, 255)
    np.testing.assert_array_equal(cm.numpy(), expected)

    m = cm.compute()
    for c in range(k):
        tp = expected[c, c]
        union = expected[c].sum() + expected[:, c].sum() - tp
        if union == 0:
            assert math.isnan(m.iou[c])
        else:
            assert m.iou[c] == pytest.approx(tp / union)
    valid = sum(t != 255 for t in target)
    if valid:
        assert m.all_acc == pytest.approx(sum(p == t for p, t in zip(pred, target)) / valid)


def test_torchmetrics_oracle() -> None:
    tm = pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    g = torch.Generator().manual_seed(1)
    k = 6
    pred = torch.randint(0, k, (3, 17, 23), generator=g)
    target = torch.randint(0, k + 1, (3, 17, 23), generator=g)
    target[target == k] = 255
    target[target == 4] = 255  # class 4 absent from the ground truth
    pred[pred == 5] = 0  # class 5 never predicted
    cm = ConfusionMatrix(k)
    cm.update(pred, target)

    oracle_cm = MulticlassConfusionMatrix(num_classes=k, ignore_index=255)(pred, target)
    np.testing.assert_array_equal(cm.numpy(), oracle_cm.numpy())
    oracle_iou = MulticlassJaccardIndex(num_classes=k, average=None, ignore_index=255)(pred, target)
    m = cm.compute()
    present = ~np.isnan(m.iou)
    np.testing.assert_allclose(m.iou[present], oracle_iou.numpy()[present], rtol=1e-6)
    assert tm.__version__


def test_to_dict_is_json_safe() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))  # class 2 absent -> NaN
    d = cm.compute().to_dict(["sky", "road", "car"], include_confusion=True)
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["mIoU"] == pytest.approx(1.0)
    assert back["mAcc"] == pytest.approx(1.0)
    assert back["allAcc"] == pytest.approx(1.0)
    assert back["per_class"][2] == {
        "index": 2,
        "name": "car",
        "iou": None,
        "acc": None,
        "gt_pixels": 0,
        "pred_pixels": 0,
    }
    assert back["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert cm.compute().to_dict()["per_class"][0]["name"] == "class_0"
    with pytest.raises(ValueError, match="names"):
        cm.compute().to_dict(["a"])
    assert isinstance(cm.compute(), SegMetrics)


def test_save_confusion_png(tmp_path) -> None:
    from PIL import Image

    cm = ConfusionMatrix(3)
    # Class 0 perfect, class 1 half wrong, class 2 absent from the ground truth.
    cm.update(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]))
    path = save_confusion_png(
        cm.numpy(), ["background", "person", "car"], tmp_path / "sub" / "cm.png", cell_size=40
    )
    assert path.exists()
    img = Image.open(path).convert("RGB")
    arr = np.asarray(img)
    assert img.width > 3 * 40 and img.height > 3 * 40
    # The grid is the bottom-right 3x3 block of 40-px cells above an 8-px margin and a footer;
    # locate it from the darkest pixel (cell (0, 0) holds 100%) and compare shades.
    dark = np.argwhere((arr == [8, 48, 107]).all(axis=-1))
    assert len(dark) > 0
    y0, x0 = dark.min(axis=0)
    full = arr[y0 + 20, x0 + 5]  # cell (0, 0) = 1.0, away from the printed percentage
    zero = arr[y0 + 20, x0 + 40 + 5]  # cell (0, 1) = 0.0 -> white
    half = arr[y0 + 40 + 20, x0 + 5]  # cell (1, 0) = 0.5
    empty_row = arr[y0 + 80 + 20, x0 + 5]  # row 2 has no ground truth -> grey
    assert tuple(full) == (8, 48, 107)
    assert tuple(zero) == (255, 255, 255)
    assert 100 < int(half[0]) < 160
    assert tuple(empty_row) == (225, 225, 225)
    # Large K works with default sizing and torch input.
    big = torch.randint(0, 50, (150, 150))
    save_confusion_png(big, None, tmp_path / "big.png")
    with pytest.raises(ValueError):
        save_confusion_png(np.zeros((2, 2)), ["a"], tmp_path / "x.png")
