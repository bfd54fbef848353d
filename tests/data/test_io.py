"""Tests for pspnet.data.io: safe image and label decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pspnet.data.io import (
    DataError,
    LabelFormatError,
    MissingDataFileError,
    OversizedImageError,
    exif_orientation,
    image_size,
    read_image,
    read_label,
)

# ------------------------------------------------------------------------------ labels


def test_palette_label_read_as_indices_not_luminance(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 3], [3, 2, 0]], dtype=np.uint8)
    im = Image.fromarray(indices, "P")
    palette = [0, 0, 0, 10, 10, 10, 20, 20, 20, 255, 255, 0]  # index 3 -> bright yellow
    im.putpalette(palette + [0] * (768 - len(palette)))
    path = tmp_path / "pal.png"
    im.save(path)

    label = read_label(path)
    assert label.dtype == np.uint8 and label.flags.writeable
    np.testing.assert_array_equal(label, indices)
    # The trap this guards against: luminance of the bright colour is not the class index.
    luminance = np.asarray(Image.open(path).convert("L"))
    assert luminance[0, 2] != 3 and label[0, 2] == 3


def test_16bit_label_values_preserved(tmp_path: Path, write_image) -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    path = write_image(tmp_path / "l16.png", values, "I;16")
    label = read_label(path)
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, values)


def test_l_and_mode1_labels(tmp_path: Path, write_image) -> None:
    values = np.array([[0, 7], [255, 12]], dtype=np.uint8)
    np.testing.assert_array_equal(read_label(write_image(tmp_path / "l.png", values, "L")), values)
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    bits.save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_label(tmp_path / "b.png"), [[0, 1], [1, 0]])


def test_rgb_label_refused_with_fix(tmp_path: Path, write_image) -> None:
    colours = np.zeros((4, 4, 3), dtype=np.uint8)
    colours[:2] = (128, 64, 128)
    path = write_image(tmp_path / "rgb.png", colours)
    with pytest.raises(LabelFormatError) as e:
        read_label(path)
    msg = str(e.value)
    assert str(path) in msg and "colour-coded" in msg and "index PNG" in msg
    # Colour labels are allowed on request (for a colour map).
    assert read_label(path, allow_rgb=True).shape == (4, 4, 3)


def test_gray_saved_as_rgb_label_gets_specific_message(tmp_path: Path, write_image) -> None:
    gray = np.repeat(np.array([[1, 2], [3, 4]], dtype=np.uint8)[:, :, None], 3, axis=2)
    path = write_image(tmp_path / "grayrgb.png", gray)
    with pytest.raises(LabelFormatError, match="grayscale label saved as colour"):
        read_label(path)


def test_jpeg_label_refused(tmp_path: Path, write_image) -> None:
    path = write_image(tmp_path / "l.jpg", np.zeros((8, 8), np.uint8), "L")
    with pytest.raises(LabelFormatError, match="JPEG"):
        read_label(path)


# ------------------------------------------------------------------------------ bad files


def _png_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("load_truncated", [False, True])
@pytest.mark.parametrize("ext, data", [(".png", _png_bytes()), (".jpg", _jpeg_bytes())])
def test_truncated_files_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, data: bytes, load_truncated: bool
) -> None:
    # Another library may have set Pillow's global flag; we must still refuse.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value)


def test_text_file_named_png_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(DataError, match="not an image") as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_disallowed_format_detected_by_content(tmp_path: Path) -> None:
    gif = tmp_path / "anim.png"  # a GIF with a PNG name: the content decides
    Image.new("P", (4, 4)).save(gif, format="GIF")
    with pytest.raises(DataError, match="not an image, or not in an allowed format"):
        read_label(gif)
    with pytest.raises(DataError, match="extension '.gif'"):
        read_image(tmp_path / "x.gif")


def test_decompression_bomb_refused_by_own_limit(tmp_path: Path, write_image) -> None:
    path = write_image(tmp_path / "big.png", np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(OversizedImageError) as e:
        read_image(path, max_pixels=1000)
    msg = str(e.value)
    assert str(path) in msg and "1,200 pixels" in msg and "--max-pixels" in msg
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)


def test_pillow_bomb_error_becomes_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_image
) -> None:
    path = write_image(tmp_path / "big.png", np.zeros((30, 40, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow errors above 2x this
    with pytest.raises(OversizedImageError, match="1,200 pixels.*limit of 1,000.*--max-pixels"):
        read_image(path, max_pixels=1000)
    # Our limit allows it, Pillow's does not: the message must not blame --max-pixels.
    with pytest.raises(OversizedImageError, match=r"Pillow's own .* of 200 pixels") as e:
        read_image(path)
    assert str(path) in str(e.value) and "1,200 pixels" in str(e.value)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        read_image(tmp_path / "nope.png")
    assert isinstance(e.value, MissingDataFileError) and "nope.png" in str(e.value)


# ------------------------------------------------------------------------------ images


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_images_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    im = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode)
    im.save(tmp_path / "x.png")
    arr = read_image(tmp_path / "x.png")
    assert arr.shape == (3, 5, 3) and arr.dtype == np.uint8
    assert arr.flags.c_contiguous and arr.flags.writeable


def test_16bit_image_scaled_not_clipped(tmp_path: Path, write_image) -> None:
    path = write_image(tmp_path / "g16.png", np.full((2, 2), 0x8000, np.uint16), "I;16")
    arr = read_image(path)
    assert arr.shape == (2, 2, 3) and (arr == 0x80).all()


def test_exif_orientation_reported_but_not_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (6, 4), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif.tobytes())
    assert exif_orientation(path) == 6
    assert read_image(path).shape == (4, 6, 3)  # as stored, not rotated
    assert image_size(path) == (6, 4)
    plain = tmp_path / "plain.png"
    im.save(plain)
    assert exif_orientation(plain) == 1


def test_exif_orientation_applied_on_request_for_prediction(tmp_path: Path) -> None:
    from helpers import sideways_jpeg

    path = sideways_jpeg(tmp_path / "phone.jpg", height=40, width=24)
    stored = read_image(path)
    assert stored.shape == (24, 40, 3) and stored[12, 5, 0] > 200  # sideways: red on the left
    upright = read_image(path, apply_exif=True)
    assert upright.shape == (40, 24, 3)
    assert upright[5, 12, 0] > 200 and upright[5, 12, 1] < 50  # red on top
    assert upright[35, 12, 1] > 200 and upright[35, 12, 0] < 50  # green below
    plain = tmp_path / "plain.png"
    Image.fromarray(upright).save(plain)  # no tag: unchanged either way
    assert np.array_equal(read_image(plain, apply_exif=True), read_image(plain))
