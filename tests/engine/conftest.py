"""Fixtures for the training-engine tests (helpers live in _engine_tiny.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _engine_tiny import make_tiny_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny list-file data set shared by the tests (read only)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))
