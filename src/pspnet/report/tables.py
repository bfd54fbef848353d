"""Markdown tables and the number formats the run reports share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["md_table", "pct", "duration"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table as lines; ``align`` has one ``l`` or ``r`` per column (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def pct(v: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals; ``n/a`` for None or NaN."""
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def duration(seconds: float) -> str:
    """Seconds below 90 s, else minutes with one decimal."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
