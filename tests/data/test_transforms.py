"""Tests for pspnet.data.transforms: alignment, ignore handling, shapes, determinism, seeding."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pspnet.config import IMAGENET_MEAN, IMAGENET_STD
from pspnet.data.steps import (
    Compose,
    Crop,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandRotate,
    RandScale,
    ToTensorNormalize,
    gaussian_blur5,
)
from pspnet.data.transforms import TrainAugment, eval_transform, sample_rng, train_transform

IGNORE = 255
MEAN = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
STD = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)

# derandomize: the same examples every run, so CI never flakes; raise max_examples locally to
# explore more (a 1500-example sweep found no alignment below 0.91 against the 0.85 bound).
FAST = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def blocky_label(rng: np.random.Generator, h: int, w: int, block: int, n_classes: int = 8):
    """(h, w) uint8 label made of ``block``-sized squares, so boundaries are a small fraction."""
    coarse = rng.integers(0, n_classes, (h // block + 1, w // block + 1))
    return np.kron(coarse, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)


def encode(label: np.ndarray) -> np.ndarray:
    """Image whose pixels encode the class in binary: bit k of the class -> channel k = 255.

    Bilinear mixing across a boundary only flips a decoded bit when the other side has the
    majority weight, so decoding is robust to interpolation (unlike ``channel = label * 20``).
    """
    bits = [((label >> k) & 1) * 255 for k in range(3)]
    return np.stack(bits, axis=-1).astype(np.uint8)  # (H, W, 3)


def decode(image_chw: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`encode` for a normalised (3, H, W) tensor."""
    raw = image_chw.numpy() * STD + MEAN  # back to 0..255
    bits = (raw > 127.5).astype(np.int64)
    return bits[0] | (bits[1] << 1) | (bits[2] << 2)


def both_pipelines(**kw):
    """The fused transform and its step-by-step reference with identical settings."""
    fused = train_transform(**kw)
    return {"fused": fused, "reference": train_transform(fused=False, **kw)}


sizes = st.integers(min_value=24, max_value=80)


# ------------------------------------------------------------------------------------------
# alignment
# ------------------------------------------------------------------------------------------


@FAST
@given(h=sizes, w=sizes, ch=st.integers(8, 96), cw=st.integers(8, 96), seed=st.integers(0, 2**31))
def test_flip_crop_alignment_is_exact(h, w, ch, cw, seed):
    rng = np.random.default_rng(seed)
    label = blocky_label(rng, h, w, block=5)
    image = encode(label)
    for name, t in both_pipelines(crop_size=(ch, cw), scale=None, rotate=None, blur=False).items():
        img, lab = t(image, label, np.random.default_rng(seed))
        valid = lab.numpy() != IGNORE
        assert np.array_equal(decode(img)[valid], lab.numpy()[valid]), name
        # Padding: the image is the mean colour (0 after normalisation, up to uint8 rounding).
        assert np.abs(img.numpy()[:, ~valid]).max(initial=0.0) < 0.01, name
        # Cropping never invents classes.
        assert set(np.unique(lab.numpy())) <= set(np.unique(label)) | {IGNORE}, name


@FAST
@given(h=sizes, w=sizes, ch=st.integers(16, 96), cw=st.integers(16, 96), seed=st.integers(0, 2**31))
def test_geometric_alignment_high_fraction(h, w, ch, cw, seed):
    """Scale + rotate + flip + crop: nearest labels and bilinear pixels agree off boundaries."""
    rng = np.random.default_rng(seed)
    label = blocky_label(rng, h, w, block=12)
    image = encode(label)
    for name, t in both_pipelines(crop_size=(ch, cw), blur=False).items():
        # rotate_p is 0.5 in the preset; force a rotation half the time through the seed.
        img, lab = t(image, label, np.random.default_rng(seed))
        lab = lab.numpy()
        valid = lab != IGNORE
        if valid.sum() < 20:
            continue
        agree = (decode(img)[valid] == lab[valid]).mean()
        assert agree > 0.85, (name, agree)


def test_geometric_alignment_on_average():
    """Over many samples the disagreement is only at boundaries (~1-3 % of pixels)."""
    rng = np.random.default_rng(0)
    label = blocky_label(rng, 96, 128, block=16)
    image = encode(label)
    for name, t in both_pipelines(crop_size=(80, 80), blur=False).items():
        agree = []
        for i in range(20):
            img, lab = t(image, label, sample_rng(1, 0, i))
            valid = lab.numpy() != IGNORE
            agree.append((decode(img)[valid] == lab.numpy()[valid]).mean())
        assert np.mean(agree) > 0.95, (name, np.mean(agree))


@pytest.mark.parametrize("angle", [-10.0, 10.0])
def test_rotation_direction_matches(angle):
    """Image and label turn the same way (a mismatch would break the alignment)."""
    label = np.zeros((64, 64), np.uint8)
    label[:, 40:] = 7
    image = encode(label)
    for name, t in both_pipelines(
        crop_size=(64, 64), scale=None, rotate=(angle, angle), blur=False, flip=False
    ).items():
        # find a seed that rotates (p = 0.5)
        for seed in range(20):
            img, lab = t(image, label, np.random.default_rng(seed))
            if (lab.numpy() == IGNORE).any():
                break
        valid = lab.numpy() != IGNORE
        assert (decode(img)[valid] == lab.numpy()[valid]).mean() > 0.97, name


# ------------------------------------------------------------------------------------------
# ignore, dtypes, shapes
# ------------------------------------------------------------------------------------------


@FAST
@given(h=st.integers(1, 60), w=st.integers(1, 60), ch=st.integers(1, 64), cw=st.integers(1, 64),
       seed=st.integers(0, 2**31), blur=st.booleans())
def test_all_ignore_stays_all_ignore(h, w, ch, cw, seed, blur):
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.full((h, w), IGNORE, np.uint8)
    for name, t in both_pipelines(crop_size=(ch, cw), blur=blur).items():
        _, lab = t(image, label, np.random.default_rng(seed))
        assert (lab == IGNORE).all(), name


@FAST
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    ch=st.integers(1, 80),
    cw=st.integers(1, 80),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([np.uint8, np.int32, np.int64, np.uint16]),
)
def test_shapes_dtypes_and_values(h, w, ch, cw, seed, dtype):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    high = 20 if dtype == np.uint8 else 1000  # wide labels: classes above 255 must survive
    label = rng.integers(0, high, (h, w)).astype(dtype)
    label[rng.random((h, w)) < 0.1] = IGNORE
    for name, t in both_pipelines(crop_size=(ch, cw)).items():
        img, lab = t(image, label, np.random.default_rng(seed))
        assert img.dtype == torch.float32 and img.shape == (3, ch, cw), name
        assert lab.dtype == torch.int64 and lab.shape == (ch, cw), name
        assert torch.isfinite(img).all(), name
        # Nearest neighbour only: every output value is an input value or ignore.
        assert set(np.unique(lab.numpy())) <= set(np.unique(label).tolist()) | {IGNORE}, name


def test_reference_steps_keep_label_dtype():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = rng.integers(0, 1000, (30, 40)).astype(np.int32)
    steps = [
        RandScale((1.5, 1.5)),
        RandRotate((5, 5), p=1.0),
        RandomGaussianBlur(p=1.0),
        RandomHorizontalFlip(p=1.0),
        Crop((50, 70)),
    ]
    for step in steps:
        out_img, out_lab = step(image, label, rng)
        assert out_img.dtype == np.uint8 and out_img.ndim == 3
        assert out_lab.dtype == np.int32 and out_lab.shape == out_img.shape[:2]


def test_blur_never_touches_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (20, 30)).astype(np.uint8)
    out_img, out_lab = RandomGaussianBlur(p=1.0)(image, label, rng)
    assert out_lab is label
    assert not np.array_equal(out_img, image)


def test_gaussian_blur5_is_opencv_binomial():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    k = np.array([1, 4, 6, 4, 1], np.float64) / 16
    p = np.pad(image.astype(np.float64), ((2, 2), (2, 2), (0, 0)), mode="reflect")  # reflect-101
    v = sum(k[i] * p[i : i + 17] for i in range(5))
    ref = sum(k[i] * v[:, i : i + 23] for i in range(5))
    assert np.array_equal(gaussian_blur5(image), np.floor(ref + 0.5).astype(np.uint8))


def test_crop_pads_with_mean_and_ignore():
    image = np.full((10, 12, 3), 200, np.uint8)
    label = np.ones((10, 12), np.uint8)
    img, lab = Crop((20, 16), crop_type="center")(image, label)
    assert img.shape == (20, 16, 3) and lab.shape == (20, 16)
    assert (lab == IGNORE).sum() == 20 * 16 - 10 * 12
    assert tuple(img[0, 0]) == tuple(int(round(m)) for m in IMAGENET_MEAN)
    # The authors centre the image in the padded canvas.
    assert lab[5, 2] == 1 and lab[4, 2] == IGNORE and lab[5, 1] == IGNORE


# ------------------------------------------------------------------------------------------
# normalisation / eval
# ------------------------------------------------------------------------------------------


def test_eval_transform_normalises_like_the_authors():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (7, 9)).astype(np.uint8)
    t = eval_transform()
    img, lab = t(image, label, None)
    expect = (image.transpose(2, 0, 1).astype(np.float64) - MEAN) / STD
    assert img.dtype == torch.float32 and img.shape == (3, 7, 9) and img.is_contiguous()
    np.testing.assert_allclose(img.numpy(), expect, atol=1e-5)
    assert lab.dtype == torch.int64 and torch.equal(lab, torch.from_numpy(label.astype(np.int64)))
    img2, lab2 = t(image, None)
    assert torch.equal(img, img2) and lab2 is None


# ------------------------------------------------------------------------------------------
# determinism and seeding
# ------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), fused=st.booleans())
def test_same_seed_same_output(seed, fused):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    label = rng.integers(0, 10, (50, 60)).astype(np.uint8)
    t = train_transform((40, 40), fused=fused)
    a = t(image, label, sample_rng(seed, 3, 7))
    b = t(image, label, sample_rng(seed, 3, 7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_different_seeds_differ():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    label = rng.integers(0, 10, (50, 60)).astype(np.uint8)
    t = train_transform((40, 40))
    outs = {t(image, label, sample_rng(0, 0, i))[0].numpy().tobytes() for i in range(8)}
    assert len(outs) == 8


def test_fused_matches_reference_decisions():
    """Same generator -> same scale/rotation/flip/crop decisions in both implementations."""
    rng = np.random.default_rng(3)
    label = blocky_label(rng, 90, 120, block=15)
    image = encode(label)
    aug = TrainAugment((64, 96))
    ref = aug.reference()
    for i in range(10):
        img_f, lab_f = aug(image, label, sample_rng(0, 0, i))
        img_r, lab_r = ref(image, label, sample_rng(0, 0, i))
        assert (lab_f == lab_r).float().mean() > 0.95
        assert (lab_f == IGNORE).float().mean().item() == pytest.approx(
            (lab_r == IGNORE).float().mean().item(), abs=0.03
        )
        assert (img_f - img_r).abs().mean() < 0.1  # normalised units (~0.1 = 6 grey levels)


def _load_epoch(transform, image, label, n, num_workers, seed=5, epoch=2):
    """Simulate a DataLoader: worker k loads indices k, k+W, ... in its own order."""
    out = {}
    for worker in range(num_workers):
        for index in reversed(range(worker, n, num_workers)):  # any order within a worker
            out[index] = transform(image, label, sample_rng(seed, epoch, index))
    return [out[i] for i in range(n)]


def test_worker_count_does_not_matter():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    label = rng.integers(0, 10, (40, 50)).astype(np.uint8)
    t = train_transform((32, 32))
    base = _load_epoch(t, image, label, n=9, num_workers=1)
    for workers in (2, 4):
        other = _load_epoch(t, image, label, n=9, num_workers=workers)
        for (a, la), (b, lb) in zip(base, other):
            assert torch.equal(a, b) and torch.equal(la, lb)


def test_sample_rng_streams():
    a = sample_rng(0, 0, 0).random(4)
    assert np.array_equal(a, sample_rng(0, 0, 0).random(4))
    for other in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert not np.array_equal(a, sample_rng(*other).random(4))
    for bad in [(-1, 0, 0), (0, 1.5, 0), (0, 0, True)]:
        with pytest.raises(ValueError):
            sample_rng(*bad)


# ------------------------------------------------------------------------------------------
# user errors
# ------------------------------------------------------------------------------------------


def test_user_errors_raise():
    image = np.zeros((10, 10, 3), np.uint8)
    label = np.zeros((10, 10), np.uint8)
    t = train_transform((8, 8))
    with pytest.raises(TypeError):
        t(image.astype(np.float32), label, np.random.default_rng(0))
    with pytest.raises(TypeError):
        t(image, label.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError):
        t(image, np.zeros((10, 11), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        t(image[..., :2], label, np.random.default_rng(0))
    with pytest.raises(TypeError):
        t(image, label, None)  # random transforms need an explicit generator
    with pytest.raises(TypeError):
        Compose([RandomHorizontalFlip()])(image, label, 0)
    with pytest.raises(ValueError):
        train_transform((0, 8))
    with pytest.raises(ValueError):
        train_transform((8, 8), scale=(2.0, 0.5))
    with pytest.raises(ValueError):
        RandRotate(p=1.5)
    with pytest.raises(ValueError):
        ToTensorNormalize(std=(1.0, 0.0, 1.0))


def test_read_only_inputs_and_pickling():
    """Images read with np.asarray(PIL) are read-only; DataLoader workers may pickle transforms."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (30, 40)).astype(np.uint8)
    image.flags.writeable = False
    label.flags.writeable = False
    for fused in (True, False):
        t = train_transform((24, 24), fused=fused)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
            a = t(image, label, sample_rng(0, 0, 0))
            eval_transform()(image, label)
        b = pickle.loads(pickle.dumps(t))(image, label, sample_rng(0, 0, 0))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
