"""Fixtures for the reliability tests (failure injection, bounded memory).

The tiny data set and config helpers are the engine tests' (tests/engine/_engine_tiny.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))

from _engine_tiny import make_tiny_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The engine tests' tiny list-file data set: 8 training images (read only)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))
