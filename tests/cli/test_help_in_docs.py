"""The ``pspnet VERB --help`` blocks in docs/usage are what the parser prints (at 100 columns)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pspnet.cli.parser import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs" / "usage"
BLOCK = re.compile(r"\$ pspnet ([a-z-]+) --help\n(.*?)```", re.S)


def _help(verb: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if getattr(a, "choices", None) and verb in a.choices)
    return action.choices[verb].format_help()


def test_every_help_block_in_the_usage_docs_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    blocks = [(doc.name, m.group(1), m.group(2)) for doc in sorted(DOCS.glob("*.md"))
              for m in BLOCK.finditer(doc.read_text())]
    assert len(blocks) >= 8
    stale = [f"{name}: pspnet {verb}" for name, verb, text in blocks
             if text.strip() != _help(verb).strip()]
    assert not stale, f"regenerate with COLUMNS=100 pspnet VERB --help: {stale}"
