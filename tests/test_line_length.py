"""The package's source keeps to 100 columns (pyproject.toml's ``[tool.ruff] line-length``).

No linter runs in CI (the README's test command installs only what the tests need), so this
test holds the limit for ``src/pspnet``: a longer line fails it with its file and number.
"""

from __future__ import annotations

from pathlib import Path

import pspnet

SRC = Path(pspnet.__file__).parent
LIMIT = 100


def test_package_lines_fit_in_100_columns() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the package itself, not an empty or wrong folder
    long = [f"{p.relative_to(SRC.parent)}:{n}: {len(line)} columns"
            for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > LIMIT]
    assert not long, f"lines over {LIMIT} columns:\n" + "\n".join(long)
