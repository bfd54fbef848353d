"""The weight zoo: public PSPNet and ImageNet weights, by name, with hash-checked downloads.

Every entry names its source and the mIoU its source reports, with the protocol, so a user can
check a converted model against the published number. Hashes: torchvision and OpenMMLab publish
the first 8 hex digits of the file's SHA-256 in the file name (``...-15a8b914.pth``); we check
that prefix (with ``torch.hub.download_url_to_file(..., hash_prefix=...)``, torch's own transfer
code). Only that prefix is known and checked: the full digest of a download is not recorded
anywhere, and a cached file is re-hashed against the prefix each time it is reused. Entries
without any published hash (mit-semseg) are refused unless the caller passes
``allow_unverified=True``; the computed digest is then printed (to stderr) so the caller can pin
it by hand. The authors' semseg weights live on Google Drive behind a confirmation page: their
entries carry the instructions and the file name to place in the cache instead of a URL.

:func:`resolve` turns a name into the file to load (downloaded into the cache when missing):
:func:`pspnet.load_model` calls it, so a zoo name works wherever a weights path does.

A download that cannot reach its server (no network, a proxy needed, an HTTP error) raises
:class:`DownloadError` naming the URL, and where to put a file downloaded by hand (the exact
cache path): a file placed there is used when its SHA-256 matches (or, for unverified entries,
with ``allow_unverified=True`` or through :func:`resolve`, which takes a file placed by hand).

Nothing here runs at import time, and nothing here is called by the tests with a network URL:
the tests exercise :func:`download` on local ``file://`` URLs and on a refused loopback port.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ZooEntry",
    "ZOO",
    "cache_dir",
    "download",
    "fetch",
    "resolve",
    "sha256_file",
    "HashMismatch",
    "DownloadError",
]

_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet"
_MIT = "http://sceneparsing.csail.mit.edu/model/pytorch"
_TV = "https://download.pytorch.org/models"


@dataclass(frozen=True)
class ZooEntry:
    """One public weight file (or pair, for mit-semseg)."""

    name: str
    urls: tuple[str, ...]
    """Direct download URLs (several for multi-file models); empty when manual download."""
    sha256: tuple[str | None, ...]
    """Expected SHA-256 (full or a published prefix of >= 8 hex digits) per URL; None = unknown."""
    source: str
    arch: str
    num_classes: int
    dataset: str
    miou: float | None
    """mIoU (percent) the source reports for these weights."""
    protocol: str
    """How the source measured ``miou``."""
    notes: str = ""
    kind: str = "segmenter"
    """``segmenter`` (convert/load as a PSPNet) or ``backbone`` (ImageNet initialisation)."""
    manual_file: str = ""
    """For entries without URLs: the file's name, placed by hand in ``cache_dir() / name``."""


def _mm(cfg: str, stamp: str, h: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    return (f"{_MMSEG}/{cfg}/{cfg}_{stamp}-{h}.pth",), (h,)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("mmseg_pspnet_r50_ade20k",
                 *_mm("pspnet_r50-d8_512x512_80k_ade20k", "20200615_014128", "15a8b914"),
                 "open-mmlab/mmsegmentation configs/pspnet", "pspnet50", 150, "ade20k", 41.13,
                 "mmseg whole-image, single scale, ADE20K val, 512x512 crop training (80k iters)"),
        ZooEntry("mmseg_pspnet_r101_ade20k",
                 *_mm("pspnet_r101-d8_512x512_80k_ade20k", "20200614_031423", "b6e782f0"),
                 "open-mmlab/mmsegmentation configs/pspnet", "pspnet101", 150, "ade20k", 43.57,
                 "mmseg whole-image, single scale, ADE20K val (80k iters)"),
        ZooEntry("mmseg_pspnet_r50_voc12aug",
                 *_mm("pspnet_r50-d8_512x512_20k_voc12aug", "20200617_101958", "ed5dfbd9"),
                 "open-mmlab/mmsegmentation configs/pspnet", "pspnet50", 21, "voc2012", 76.78,
                 "mmseg whole-image, single scale, VOC 2012 val (20k iters, aug)"),
        ZooEntry("mmseg_pspnet_r101_voc12aug",
                 *_mm("pspnet_r101-d8_512x512_20k_voc12aug", "20200617_102003", "4aef3c9a"),
                 "open-mmlab/mmsegmentation configs/pspnet", "pspnet101", 21, "voc2012", 78.47,
                 "mmseg whole-image, single scale, VOC 2012 val (20k iters, aug)"),
        ZooEntry("mmseg_pspnet_r50_cityscapes",
                 *_mm("pspnet_r50-d8_512x1024_40k_cityscapes", "20200605_003338", "2966598c"),
                 "open-mmlab/mmsegmentation configs/pspnet", "pspnet50", 19, "cityscapes", 77.85,
                 "mmseg whole-image 2048x1024, single scale, Cityscapes val (40k iters)"),
        ZooEntry("mmseg_pspnet_r101_cityscapes",
                 *_mm("pspnet_r101-d8_512x1024_40k_cityscapes", "20200604_232751", "467e7cf4"),
                 "open-mmlab/mmsegmentation configs/pspnet", "pspnet101", 19, "cityscapes", 78.34,
                 "mmseg whole-image 2048x1024, single scale, Cityscapes val (40k iters)"),
        ZooEntry("mit_pspnet50_ade20k",
                 (f"{_MIT}/ade20k-resnet50dilated-ppm_deepsup/encoder_epoch_20.pth",
                  f"{_MIT}/ade20k-resnet50dilated-ppm_deepsup/decoder_epoch_20.pth"),
                 (None, None), "CSAILVision/semantic-segmentation-pytorch README", "pspnet50", 150,
                 "ade20k", 41.26, "mit-semseg README row 'MS test: No', ADE20K val; labels are "
                 "ADE ids - 1",
                 notes="no published hash: pass --allow-unverified and pin the printed SHA-256"),
        ZooEntry("semseg_pspnet50_ade20k", (), (), "hszhao/semseg README (Google Drive)",
                 "pspnet50", 150, "ade20k", 41.89,
                 "semseg test.py single scale with flip, base size 512, crop 473, ADE20K val",
                 notes="download train_epoch_100.pth from the Google Drive link of the "
                       "hszhao/semseg README", manual_file="train_epoch_100.pth"),
        ZooEntry("semseg_pspnet101_voc2012", (), (), "hszhao/semseg README (Google Drive)",
                 "pspnet101", 21, "voc2012", 79.07,
                 "semseg test.py single scale with flip, base size 512, crop 473, VOC 2012 val",
                 notes="download train_epoch_50.pth from the Google Drive link of the "
                       "hszhao/semseg README", manual_file="train_epoch_50.pth"),
        ZooEntry("semseg_pspnet101_cityscapes", (), (), "hszhao/semseg README (Google Drive)",
                 "pspnet101", 19, "cityscapes", 78.63,
                 "semseg test.py single scale with flip, base size 2048, crop 713, Cityscapes val",
                 notes="download train_epoch_200.pth from the Google Drive link of the "
                       "hszhao/semseg README", manual_file="train_epoch_200.pth"),
        ZooEntry("resnet18_imagenet", (f"{_TV}/resnet18-f37072fd.pth",), ("f37072fd",),
                 "torchvision IMAGENET1K_V1", "pspnet_r18", 1000, "imagenet", None,
                 "ImageNet top-1 69.76", kind="backbone"),
        ZooEntry("resnet34_imagenet", (f"{_TV}/resnet34-b627a593.pth",), ("b627a593",),
                 "torchvision IMAGENET1K_V1", "pspnet_r34", 1000, "imagenet", None,
                 "ImageNet top-1 73.31", kind="backbone"),
        ZooEntry("resnet50_imagenet", (f"{_TV}/resnet50-0676ba61.pth",), ("0676ba61",),
                 "torchvision IMAGENET1K_V1", "pspnet_r50", 1000, "imagenet", None,
                 "ImageNet top-1 76.13", kind="backbone"),
        ZooEntry("resnet101_imagenet", (f"{_TV}/resnet101-63fe2227.pth",), ("63fe2227",),
                 "torchvision IMAGENET1K_V1", "pspnet_r101", 1000, "imagenet", None,
                 "ImageNet top-1 77.37", kind="backbone"),
    ]
}


class HashMismatch(ValueError):
    """A downloaded file does not have the expected SHA-256."""


class DownloadError(ValueError):
    """A download failed before its hash could be checked (no network, a proxy, HTTP errors).

    A ValueError like :class:`HashMismatch`, so the ``pspnet`` command reports it as one line.
    """


def _download_failed(url: str, dest: Path, sha256: str | None, error: BaseException) -> str:
    """The message for a failed download: what failed, why, and how to place the file by hand."""
    if isinstance(error, urllib.error.HTTPError):
        why = f"the server answered HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        why = str(error.reason)
    else:
        why = str(error) or type(error).__name__
    if url.startswith("file:"):
        return f"cannot read {url}: {why}"
    check = (
        f"it is used only if its SHA-256 starts with {sha256} (compare `sha256sum {dest.name}`)"
        if sha256
        else "it has no published SHA-256, so pass --allow-unverified (allow_unverified=True) "
        "to use it, after checking `sha256sum` against a digest you trust"
    )
    return (
        f"cannot download {url}: {why}. This machine may have no network access, or may need a "
        "proxy (set https_proxy / http_proxy). To install the file by hand, download it on a "
        f"machine that has access and place it at {dest}; {check}."
    )


def cache_dir() -> Path:
    """Where downloads go: ``$PSPNET_HOME`` or ``~/.cache/pspnet``."""
    return Path(os.environ.get("PSPNET_HOME", Path.home() / ".cache" / "pspnet"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _matches(digest: str, expected: str) -> bool:
    e = expected.lower()
    return len(e) >= 8 and digest.startswith(e)


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None,
    allow_unverified: bool = False,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its SHA-256.

    The transfer is ``torch.hub.download_url_to_file``: it streams to a temporary name beside
    ``dest``, checks the hash prefix, and renames only after it matched, so an interrupted or
    tampered download never leaves a file that looks valid. An existing ``dest`` whose hash
    matches is reused without downloading. Socket time-outs are Python's default (none unless
    ``socket.setdefaulttimeout`` set one): torch's transfer takes no time-out argument.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        dest: Target file.
        sha256: Expected digest, full or a prefix of at least 8 hex digits; None when unknown.
        allow_unverified: Accept a file with no known digest (its digest is printed).
        progress: Show a progress bar on stderr.

    An existing ``dest`` with no known digest is reused when ``allow_unverified`` is True (its
    digest is printed), so a file placed by hand is used instead of downloaded again.

    Raises:
        HashMismatch: The digest differs (nothing is kept), or ``sha256`` is a prefix shorter
            than 8 hex digits (too short to be a check; refused before downloading).
        DownloadError: The server cannot be reached or refuses the file (no network, a proxy
            needed, an HTTP error, a connection cut): the message names the URL and where to
            place the file downloaded by hand. No partial file is left.
        ValueError: No digest is known and ``allow_unverified`` is False.
    """
    from torch.hub import download_url_to_file  # lazy: `import pspnet.hub` stays light

    dest = Path(dest)
    if sha256 is None and not allow_unverified:
        raise ValueError(
            f"{url} has no published SHA-256, so its integrity cannot be checked; pass "
            "--allow-unverified (allow_unverified=True) to accept it and pin the digest printed"
        )
    expected = sha256.lower() if sha256 is not None else None
    if expected is not None and len(expected) < 8:
        raise HashMismatch(
            f"{url}: the expected SHA-256 {sha256!r} is shorter than 8 hex digits, too short to "
            "check; give at least the 8 digits the source publishes"
        )
    if dest.is_file() and expected and _matches(sha256_file(dest), expected):
        return dest
    if dest.is_file() and expected is None:
        print(f"unverified file {dest}: sha256 {sha256_file(dest)}", file=sys.stderr)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(url, str(dest), hash_prefix=expected, progress=progress)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
            ConnectionError) as e:  # fmt: skip
        raise DownloadError(_download_failed(url, dest, sha256, e)) from None
    except RuntimeError as e:  # torch's hash check: 'invalid hash value (expected .., got ..)'
        if "invalid hash value" not in str(e):
            raise
        raise HashMismatch(
            f"{url}: SHA-256 does not match the expected {sha256} ({e}); the download is "
            "corrupt or the file was changed upstream. Nothing was kept; try again, and "
            "report it if it persists."
        ) from None
    if expected is None:
        print(f"unverified download {dest.name}: sha256 {sha256_file(dest)}", file=sys.stderr)
    return dest


def _entry(name: str) -> ZooEntry:
    """The zoo entry ``name``, or a ValueError suggesting the closest name."""
    entry = ZOO.get(name)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(name, ZOO, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown zoo entry {name!r}.{hint} Available: {', '.join(ZOO)}")
    return entry


def _file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def fetch(name: str, *, allow_unverified: bool = False, progress: bool = True) -> Path:
    """Download a zoo entry into the cache; returns the file (or the directory for pairs).

    Raises:
        ValueError: An unknown name (with the closest one), or an entry that cannot be
            downloaded automatically (the message says how to get it).
        DownloadError: No network (the message names the URL and the cache path to fill).
        HashMismatch: A download with the wrong SHA-256.
    """
    entry = _entry(name)
    if not entry.urls:
        raise ValueError(
            f"{name} cannot be downloaded automatically: {entry.notes}, and place it at "
            f"{cache_dir() / name / entry.manual_file} (then the name {name} loads it), or "
            "pass the file's path instead of the name"
        )
    target = cache_dir() / name
    files = [
        download(u, target / _file_name(u), sha256=h, allow_unverified=allow_unverified,
                 progress=progress)
        for u, h in zip(entry.urls, entry.sha256)
    ]
    return target if len(files) > 1 else files[0]


def resolve(name: str, *, progress: bool = True) -> Path:
    """The weights a zoo name stands for: from the cache, downloaded (hash-checked) if missing.

    Entries without a published hash (mit-semseg) are used when their files are in the cache
    (put there by ``pspnet zoo --download NAME --allow-unverified`` or by hand), never
    downloaded unverified behind the caller's back; entries without a URL (the authors' Google
    Drive files) are used when their file was placed at ``cache_dir() / NAME / FILE``.

    Args:
        name: A key of :data:`ZOO`.
        progress: Show a progress bar while downloading.

    Returns:
        The file, or the directory of a mit-semseg encoder/decoder pair.

    Raises:
        ValueError: Unknown name; or an entry that needs a manual step, naming the file(s) and
            the exact cache path to put them at.
        DownloadError: No network: names the URL to fetch and the exact cache path.
        HashMismatch: A download with the wrong SHA-256.
    """
    entry = _entry(name)
    target = cache_dir() / name
    if entry.urls and None in entry.sha256:
        files = [target / _file_name(u) for u in entry.urls]
        if all(f.is_file() for f in files):
            return target if len(files) > 1 else files[0]
        raise ValueError(
            f"{name} has no published SHA-256, so it is not downloaded implicitly: run "
            f"`pspnet zoo --download {name} --allow-unverified` once (and compare the printed "
            f"digests with ones you trust), or download {' and '.join(entry.urls)} and place "
            f"them in {target}"
        )
    if not entry.urls and (target / entry.manual_file).is_file():
        return target / entry.manual_file
    try:
        return fetch(name, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"zoo entry {name}: {e}") from None
