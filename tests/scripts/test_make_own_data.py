"""scripts/make_own_data.py: JPEG photos and colour masks paired by stem, and a class file
whose R G B columns give every colour the masks use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.data.classes import read_class_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_own_data.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_own_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_photos_masks_and_class_file(script, tmp_path: Path, capsys) -> None:
    out = tmp_path / "own"
    assert script.main([str(out), "--count", "3", "--size", "48", "64", "--seed", "1"]) == 0
    photos = sorted(p.stem for p in (out / "photos").iterdir())
    assert photos == sorted(p.stem for p in (out / "masks").iterdir()) == [
        "IMG_0000", "IMG_0001", "IMG_0002"]
    classes = read_class_file(out / "classes.txt")
    assert classes.names == ("sky", "water", "road", "grass", "vessel")
    assert classes.colours[255] == (0, 0, 0)
    known = set(classes.colours.values())
    for stem in photos:
        with Image.open(out / "photos" / f"{stem}.jpg") as photo:
            assert photo.format == "JPEG" and photo.size == (64, 48)
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png").convert("RGB"))
        colours = {tuple(int(v) for v in c) for c in np.unique(mask.reshape(-1, 3), axis=0)}
        assert colours <= known and len(colours) >= 3  # void, sky and a surface at least
        assert (mask[0] == 0).all() and (mask[:, -1] == 0).all()  # the unlabelled border
    # The same seed gives the same pictures; an existing folder is refused.
    again = tmp_path / "again"
    script.main([str(again), "--count", "1", "--size", "48", "64", "--seed", "1"])
    assert (again / "masks" / "IMG_0000.png").read_bytes() == (
        out / "masks" / "IMG_0000.png").read_bytes()
    assert script.main([str(out), "--count", "1"]) == 2
    assert "is not empty" in capsys.readouterr().err
