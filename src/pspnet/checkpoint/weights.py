"""Our weight directories: ``model.safetensors`` + ``config.json`` (see :mod:`pspnet.checkpoint`).

Also the key-by-key loading every loader shares (:func:`load_state_dict_checked`).
"""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
import torch
from torch import Tensor, nn

from pspnet.checkpoint.files import CheckpointError, atomic_write_bytes, check_safetensors_header
from pspnet.config import LIMITS, ConfigError, ModelConfig, Preprocessing, from_dict, to_dict
from pspnet.models import PSPNet, build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class WeightsMeta:
    """Everything besides the tensors that a weight directory records."""

    model: ModelConfig
    classes: tuple[str, ...] | None = None
    """Class names, index order; None when unknown."""
    palette: tuple[tuple[int, int, int], ...] | None = None
    """One RGB colour per class; None when unknown."""
    preprocess: Preprocessing = field(default_factory=Preprocessing)
    ignore_index: int = 255
    source: str = ""
    """Where the weights came from (a file name, a zoo entry, a training run)."""

    def __post_init__(self) -> None:
        n = self.model.num_classes
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if len(self.classes) != n:
                raise ConfigError(
                    f"`classes` lists {len(self.classes)} names but the model has "
                    f"{n} classes (model.num_classes)"
                )
        if self.palette is not None:
            pal = checked_palette(self.palette)
            object.__setattr__(self, "palette", pal)
            if len(pal) != n:
                raise ConfigError(f"`palette` must have {n} RGB triples, got {len(pal)} entries")


def checked_palette(palette: Any) -> tuple[tuple[int, int, int], ...]:
    """``palette`` as RGB triples of integers in 0..255 (what a PNG palette can hold).

    Raises:
        ConfigError: An entry that is not three whole numbers in 0..255, naming it.
    """
    out = []
    for i, colour in enumerate(palette):
        try:
            values = [] if isinstance(colour, (str, bytes, Mapping)) else list(colour)
        except TypeError:  # a number where a triple belongs
            values = []
        ok = len(values) == 3 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer()
            and 0 <= v <= 255 for v in values
        )
        if not ok:
            raise ConfigError(
                f"`palette[{i}]` must be an RGB triple of whole numbers in 0..255, got "
                f"{colour!r}; fix the colour or remove `palette` (a default one is used)"
            )
        out.append(tuple(int(v) for v in colour))
    return tuple(out)  # type: ignore[return-value]


@dataclass
class LoadReport:
    """What did not line up when loading a state dict into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 10) -> str:
        def cut(items: list[str]) -> str:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = []
        if self.mismatched:
            lines.append(
                "shape mismatch: "
                + cut([f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in self.mismatched])
            )
        if self.missing:
            lines.append(f"missing in the file: {cut(self.missing)}")
        if self.unexpected:
            lines.append(f"not used by the model: {cut(self.unexpected)}")
        return "; ".join(lines) if lines else "all keys matched"


def load_state_dict_checked(
    model: nn.Module, sd: Mapping[str, Tensor], *, strict: bool = True, source: str = ""
) -> LoadReport:
    """Load ``sd`` into ``model`` after checking every key and shape.

    Args:
        model: The target module.
        sd: A state dict in our layout.
        strict: Raise on any missing, unexpected or mis-shaped key (shape errors always raise).
        source: File name for the error message.

    Raises:
        CheckpointError: Naming the offending keys and shapes.
    """
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for k, v in sd.items():
        if k not in own:
            if not k.endswith("num_batches_tracked"):
                report.unexpected.append(k.lstrip("?"))
        elif tuple(own[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            usable[k] = v
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    where = f" from {source}" if source else ""
    if report.mismatched or (strict and not report.ok):
        raise CheckpointError(
            f"weights{where} do not fit the model: {report.format()}. Check --arch, "
            "--num-classes and the model options (or let them be inferred from the file)."
        )
    check_tensor_values(usable, own, source)
    model.load_state_dict(usable, strict=False)
    return report


def check_tensor_values(
    sd: Mapping[str, Tensor], own: Mapping[str, Tensor], source: str = ""
) -> None:
    """Refuse weights that would load but predict nonsense: integer tensors where the model
    holds floats (``load_state_dict`` would cast them silently) and NaN or infinite values
    (every pixel would become class 0).

    Args:
        sd: The tensors about to be loaded, by our key.
        own: The model's own state dict (its dtypes say which tensors must be floats).
        source: File name for the message.

    Raises:
        CheckpointError: Naming the file, the key, what is wrong and the fix.
    """
    where = source or "the weights"
    for k, v in sd.items():
        if k not in own or not own[k].is_floating_point():
            continue  # e.g. BatchNorm's integer step counter
        if not v.is_floating_point():
            raise CheckpointError(
                f"{where}: `{k}` holds {str(v.dtype).replace('torch.', '')} values, but the "
                "model's weights are floating point; the file is damaged or was converted "
                "wrongly: save or convert it again from the original weights"
            )
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            raise CheckpointError(
                f"{where}: `{k}` has {bad} non-finite value(s) (NaN or infinity) of "
                f"{v.numel()}; the weights are damaged (a training that diverged?): use an "
                "earlier checkpoint or train again"
            )


# --------------------------------------------------------------------------------------------
# Our weight directories


def save_weights(model: nn.Module, directory: str | Path, meta: WeightsMeta) -> Path:
    """Save ``model`` as ``directory/model.safetensors`` + ``directory/config.json``.

    Both files are written atomically (the tensors first, so a reader never sees a config that
    points at half-written weights).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={"format": "pspnet"})
        os.replace(tmp, d / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    doc = {"format": "pspnet", "version": FORMAT_VERSION, **to_dict(meta)}
    atomic_write_bytes(d / CONFIG_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    return d


def read_json_file(p: Path, what: str) -> Any:
    """Parse a small JSON file that travels with weights, refusing what could exhaust memory.

    Args:
        p: The file.
        what: What it is, for the messages (``"config"``).

    Raises:
        CheckpointError: Missing, larger than ``LIMITS["json_bytes"]``, not JSON, or nested too
            deeply to parse (Python's recursion limit), naming the file and the fix.
    """
    bound = int(LIMITS["json_bytes"].maximum)
    try:
        size = p.stat().st_size
        if size > bound:
            raise CheckpointError(
                f"{p} is {size:,} bytes, above the {bound:,} a {what} file may have "
                "(LIMITS['json_bytes'] in pspnet.config.limits); it is damaged or not a pspnet "
                f"{what}: save the weights again"
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{p} is missing: not a pspnet weight directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {p}: {e}; the directory is damaged") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}); the directory is damaged") from None
    except RecursionError:
        raise CheckpointError(
            f"{p} nests its values too deeply to read (a {what} is a flat mapping of a few "
            "levels); the file is damaged or hostile: save the weights again"
        ) from None


def read_meta(directory: str | Path) -> WeightsMeta:
    """Read and validate ``config.json`` of a weight directory.

    Raises:
        CheckpointError: The file is missing, damaged or hostile (see :func:`read_json_file`),
            has a ``version`` that is not a whole number, or a value out of range or bound
            (naming the file, the key, the value and the fix).
    """
    p = Path(directory) / CONFIG_FILE
    doc = read_json_file(p, "config")
    if not isinstance(doc, dict) or doc.get("format") != "pspnet":
        raise CheckpointError(f"{p} is not a pspnet config (no \"format\": \"pspnet\")")
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(
            f"{p}: `version` must be a whole number (this pspnet writes {FORMAT_VERSION}), got "
            f"{version!r}; set \"version\": {FORMAT_VERSION} or save the weights again"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has format version {version}; this pspnet reads up to "
            f"{FORMAT_VERSION}. Upgrade pspnet."
        )
    body = {k: v for k, v in doc.items() if k not in ("format", "version")}
    try:
        return from_dict(WeightsMeta, body)
    except ConfigError as e:
        raise CheckpointError(f"{p}: {e}") from None


def load_weights(directory: str | Path) -> tuple[PSPNet, WeightsMeta]:
    """Rebuild a model from one of our weight directories (train mode; see :func:`load_model`)."""
    d = Path(directory)
    meta = read_meta(d)
    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{wpath} is missing: the weight directory is incomplete")
    check_safetensors_header(wpath)  # before any tensor is allocated
    try:
        sd = load_file(wpath)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {wpath}: {e}. The file is corrupt or truncated; save it again."
        ) from None
    model = build_model(meta.model)
    load_state_dict_checked(model, sd, strict=True, source=str(wpath))
    model.config = meta.model  # type: ignore[assignment]
    return model, meta


def is_weight_dir(p: Path) -> bool:
    """Whether ``p`` is one of our weight directories (it has a ``config.json``)."""
    return p.is_dir() and (p / CONFIG_FILE).is_file()
