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
    assert not list(dest.parent.glob("*.part*"))


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
        assert e.urls or (e.notes and e.manual_file)  # manual entries say how, and which file
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
        hub.download(url, dest, sha256=digest[:8], progress=False)
    msg = str(err.value)
    assert msg.startswith(f"cannot download {url}: ")
    assert "no network access" in msg and "proxy" in msg
    assert f"place it at {dest}" in msg and f"SHA-256 starts with {digest[:8]}" in msg
    assert isinstance(err.value, ValueError)  # the CLI prints it as one `error:` line
    assert not dest.exists() and not list(dest.parent.glob("*.part*"))

    # following the message works: a file placed by hand is used without the network
    dest.write_bytes(b"weights")
    assert hub.download(url, dest, sha256=digest[:8], progress=False) == dest
    # ... also for an entry without a published hash, with the caller's consent
    other = tmp_path / "cache" / "unverified.pth"
    other.write_bytes(b"weights")
    assert hub.download(url, other, sha256=None, allow_unverified=True, progress=False) == other
    with pytest.raises(ValueError, match="allow-unverified"):
        hub.download(url, other, sha256=None, progress=False)


# --------------------------------------------------------------------------------------------
# Weights by name: load_model (and so every verb) resolves zoo names in the cache


def _zoo_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, url: str,
               sha256: str | None, kind: str = "segmenter") -> Path:
    """Put ``name`` in the zoo (pointing at ``url``) and the cache under ``tmp_path``."""
    entry = hub.ZooEntry(name, (url,), (sha256,), "test", "pspnet_r18", 2, "x", None, "-",
                         kind=kind)
    monkeypatch.setitem(hub.ZOO, name, entry)
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / name / url.rsplit("/", 1)[-1]


def _tiny_r18() -> tuple[object, dict]:
    import torch

    import pspnet

    model = pspnet.create_model("pspnet_r18", 2, head_channels=16, aux_channels=8, ppm_channels=4)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_zoo_names_load_from_file_urls_and_then_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import pspnet
    from layouts import to_mmseg, to_torchvision_backbone
    from pspnet.checkpoint import load_backbone_weights, load_model

    _, sd = _tiny_r18()
    seg = tmp_path / "src" / "pspnet_r18_test.pth"
    seg.parent.mkdir()
    torch.save({"state_dict": to_mmseg(sd)}, seg)
    cached = _zoo_entry(monkeypatch, tmp_path, "test_r18", seg.as_uri(), hub.sha256_file(seg))
    model = load_model("test_r18")
    assert cached.is_file() and model.meta.source == f"mmseg:{cached.name}"
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked"))
    seg.unlink()  # no source any more: the cached copy (hash checked again) is used
    assert load_model("test_r18").config.num_classes == 2

    backbone = tmp_path / "src" / "resnet18-test.pth"
    torch.save(to_torchvision_backbone(sd), backbone)
    _zoo_entry(monkeypatch, tmp_path, "test_backbone", backbone.as_uri(),
               hub.sha256_file(backbone)[:8], kind="backbone")
    target = pspnet.create_model("pspnet_r18", 5)
    load_backbone_weights(target, "test_backbone")  # --backbone-weights NAME
    assert torch.equal(target.state_dict()["backbone.layer4.1.conv2.weight"],
                       sd["backbone.layer4.1.conv2.weight"])


def test_a_zoo_name_with_a_wrong_hash_is_refused_and_nothing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pspnet.checkpoint import load_model

    url, digest = _file(tmp_path, b"not the published file")
    cached = _zoo_entry(monkeypatch, tmp_path, "test_bad", url, "0" * 8)
    with pytest.raises(hub.HashMismatch, match="does not match the expected 00000000"):
        load_model("test_bad")
    assert not cached.exists() and not list(cached.parent.glob("*.part*"))


def test_offline_a_zoo_name_says_which_file_to_fetch_and_where_to_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pspnet.checkpoint.init_weights import read_init_source
    from pspnet.cli import main

    monkeypatch.setenv("no_proxy", "*")
    url = "http://127.0.0.1:9/pspnet_r18_test-0123abcd.pth"  # refused at once, offline too
    cached = _zoo_entry(monkeypatch, tmp_path, "test_offline", url, "0123abcd")
    assert main(["info", "test_offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: zoo entry test_offline: cannot download {url}: ")
    assert f"place it at {cached};" in err and err.count("\n") == 1  # one line
    with pytest.raises(hub.DownloadError, match=f"place it at {cached}"):
        read_init_source("test_offline")  # --init-weights NAME: the same message


def test_manual_and_unverified_entries_say_what_to_place_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PSPNET_HOME", str(cache))
    drive = cache / "semseg_pspnet50_ade20k" / "train_epoch_100.pth"
    with pytest.raises(ValueError, match=f"Google Drive .* place it at {drive} "):
        hub.resolve("semseg_pspnet50_ade20k")
    drive.parent.mkdir(parents=True)
    drive.write_bytes(b"fetched by hand")
    assert hub.resolve("semseg_pspnet50_ade20k") == drive
    mit = cache / "mit_pspnet50_ade20k"
    with pytest.raises(ValueError) as err:
        hub.resolve("mit_pspnet50_ade20k")
    assert "pspnet zoo --download mit_pspnet50_ade20k --allow-unverified" in str(err.value)
    assert f"place them in {mit}" in str(err.value)
    mit.mkdir()
    for f in ("encoder_epoch_20.pth", "decoder_epoch_20.pth"):
        (mit / f).write_bytes(b"x")
    assert hub.resolve("mit_pspnet50_ade20k") == mit


def test_a_path_wins_over_a_zoo_name_and_typos_get_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pspnet.checkpoint import CheckpointError, load_model
    from pspnet.checkpoint.load import resolve_weights

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "cache"))
    (tmp_path / "resnet18_imagenet").mkdir()
    assert resolve_weights("resnet18_imagenet") == Path("resnet18_imagenet")  # no download
    with pytest.raises(CheckpointError) as err:
        load_model("mmseg_pspnet_r50_ade2k")
    assert "or a zoo name: `pspnet zoo` lists them); did you mean the zoo entry " \
           "'mmseg_pspnet_r50_ade20k'?" in str(err.value)
    assert not (tmp_path / "cache").exists()
