"""`serve` decodes an uploaded phone photo upright, as `predict` reads one from disk."""

from __future__ import annotations

from pathlib import Path

from helpers import sideways_jpeg

from pspnet.data.io import read_image
from pspnet.serve.request import decode_image


def test_an_uploaded_rotated_jpeg_is_decoded_upright(tmp_path: Path) -> None:
    body = sideways_jpeg(tmp_path / "phone.jpg", height=40, width=24).read_bytes()
    image = decode_image(body, max_pixels=10_000)
    assert image.shape == (40, 24, 3)
    assert image[5, 12, 0] > 200 and image[35, 12, 1] > 200  # red above green
    assert (image == read_image(tmp_path / "phone.jpg", apply_exif=True)).all()
