"""Downloads: hash-checked, atomic, refused on mismatch; exercised on local file:// URLs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pspnet import hub


def _file(tmp_path: Path, data: bytes) -> tuple[str, str]:
    src = tmp_path / "weights.pth"
    src.write_bytes(data)
    return src.as_uri(), hashlib.sha256(data).hexdigest()


def test_download_verifies_full_hash_and_prefix(tmp_path: Path) -> None:
    url, digest = _file(tmp_path, b"x" * 5000)
    out = hub.download(url, tmp_path / "dl" / "a.pth", sha256=digest, progress=False)
    assert out.read_bytes() == b"x" * 5000
    out2 = hub.download(url, tmp_path / "dl" / "b.pth", sha256=digest[:8], progress=False)
    assert out2.is_file()


def test_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    url, digest = _file(tmp_path, b"tampered")
    dest = tmp_path / "dl" / "a.pth"
    with pytest.raises(hub.HashMismatch, match="does not match"):
        hub.download(url, dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert not list(dest.parent.glob("*.part"))


def test_unknown_hash_needs_explicit_consent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, digest = _file(tmp_path, b"abc")
    with pytest.raises(ValueError, match="allow-unverified"):
        hub.download(url, tmp_path / "a", sha256=None, progress=False)
    hub.download(url, tmp_path / "a", sha256=None, allow_unverified=True, progress=False)
    assert digest in capsys.readouterr().err


def test_short_prefix_never_matches(tmp_path: Path) -> None:
    url, digest = _file(tmp_path, b"abc")
    with pytest.raises(hub.HashMismatch):
        hub.download(url, tmp_path / "a", sha256=digest[:4], progress=False)


def test_zoo_entries_are_well_formed_and_fetch_uses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pspnet

    for e in hub.ZOO.values():
        assert e.arch in pspnet.list_models()
        assert len(e.urls) == len(e.sha256)
        assert e.urls or e.notes  # manual entries say how
        for u, h in zip(e.urls, e.sha256):
            assert u.startswith(("https://", "http://"))
            assert h is None or (len(h) >= 8 and h in u)  # published prefix is in the file name
    url, digest = _file(tmp_path, b"zoo")
    entry = hub.ZooEntry("local", (url,), (digest,), "test", "pspnet_r18", 2, "x", None, "-")
    monkeypatch.setitem(hub.ZOO, "local", entry)
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "cache"))
    assert hub.fetch("local", progress=False) == tmp_path / "cache" / "local" / "weights.pth"
    with pytest.raises(ValueError, match="Did you mean 'local'"):
        hub.fetch("locl")
    with pytest.raises(ValueError, match="Google Drive"):
        hub.fetch("semseg_pspnet50_ade20k")


def test_no_network_is_a_clear_error_naming_url_and_manual_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "*")  # reach 127.0.0.1 directly even where a proxy is set
    url = "http://127.0.0.1:9/pspnet.pth"  # the discard port: refused at once, offline too
    digest = hashlib.sha256(b"weights").hexdigest()
    dest = tmp_path / "cache" / "w.pth"
    with pytest.raises(hub.DownloadError) as err:
        hub.download(url, dest, sha256=digest[:8], progress=False, timeout=5)
    msg = str(err.value)
    assert msg.startswith(f"cannot download {url}: ")
    assert "no network access" in msg and "proxy" in msg
    assert f"place it at {dest}" in msg and f"SHA-256 starts with {digest[:8]}" in msg
    assert isinstance(err.value, ValueError)  # the CLI prints it as one `error:` line
    assert not dest.exists() and not list(dest.parent.glob("*.part"))

    # following the message works: a file placed by hand is used without the network
    dest.write_bytes(b"weights")
    assert hub.download(url, dest, sha256=digest[:8], progress=False, timeout=5) == dest
    # ... also for an entry without a published hash, with the caller's consent
    other = tmp_path / "cache" / "unverified.pth"
    other.write_bytes(b"weights")
    assert hub.download(url, other, sha256=None, allow_unverified=True, progress=False) == other
    with pytest.raises(ValueError, match="allow-unverified"):
        hub.download(url, other, sha256=None, progress=False)
