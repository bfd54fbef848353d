"""pspnet.benchmark.data_pipeline: where CamVid is looked for (never beside the package)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pspnet.benchmark.data_pipeline import (
    CamVidNotFoundError,
    camvid_location,
    camvid_missing,
    find_camvid_root,
    require_camvid,
)


def _camvid(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("classes.txt", "train.txt", "test.txt"):
        (root / name).write_text("x\n")
    return root


def test_argument_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("PSPNET_CAMVID", raising=False)
    assert camvid_location() is None
    assert camvid_location(default=tmp_path / "d") == tmp_path / "d"
    monkeypatch.setenv("PSPNET_CAMVID", str(tmp_path / "env"))
    assert camvid_location(default=tmp_path / "d") == tmp_path / "env"
    assert camvid_location(tmp_path / "arg", default=tmp_path / "d") == tmp_path / "arg"


def test_nothing_is_assumed_without_a_location(monkeypatch):
    monkeypatch.delenv("PSPNET_CAMVID", raising=False)
    where, missing = camvid_missing()
    assert where is None and "classes.txt" in missing
    assert find_camvid_root() is None
    with pytest.raises(CamVidNotFoundError, match="PSPNET_CAMVID is not set"):
        require_camvid()


def test_a_usable_copy_is_found_and_a_partial_one_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PSPNET_CAMVID", raising=False)
    root = _camvid(tmp_path / "camvid")
    assert find_camvid_root(("train",), root) == root
    assert require_camvid(("test",), default=root) == root.resolve()
    with pytest.raises(CamVidNotFoundError, match=r"lacks val\.txt.*at .*camvid or point"):
        require_camvid(("val",), default=root)
    monkeypatch.setenv("PSPNET_CAMVID", str(root))
    with pytest.raises(CamVidNotFoundError, match="PSPNET_CAMVID=.*from the environment"):
        require_camvid(("val",))
