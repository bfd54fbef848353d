"""Fixtures of the server tests: a tiny model's weights, the model, servers in threads.

tests/serve is put on the import path so that the test files share test_serve.py's helpers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

CLASSES = ("sky", "road", "tree")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pspnet
    from pspnet.checkpoint import WeightsMeta, save_weights

    model = pspnet.create_model("pspnet_r18", len(CLASSES), head_channels=32)
    return save_weights(model, tmp_path_factory.mktemp("serve") / "w",
                        WeightsMeta(model.config, classes=CLASSES))


@pytest.fixture(scope="module")
def model(weights: Path):  # noqa: ANN201 - torch is imported lazily (the extra may be missing)
    from pspnet.checkpoint import load_model

    return load_model(weights)


@pytest.fixture
def start() -> Iterator[Callable[..., object]]:
    """Start servers for a test (``start(model, options=None, **limits)``); all are stopped at
    its end."""
    pytest.importorskip("uvicorn", reason="the server needs the `serve` extra")
    from pspnet.serve import ServeLimits, ServerThread, create_app

    servers: list[ServerThread] = []

    def _start(m, options=None, **limits: object) -> ServerThread:  # noqa: ANN001
        lim = ServeLimits(**limits)  # type: ignore[arg-type]
        srv = ServerThread(create_app(m, limits=lim, options=options), limits=lim).start()
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        srv.stop()
