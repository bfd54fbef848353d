"""The architecture as a table of real import edges (docs/architecture.md draws the same).

A *component* is a top-level module or subpackage of ``pspnet`` (``pspnet.data``,
``pspnet.checkpoint``, ...); the engine's modules count one by one (``pspnet.engine.train``,
``pspnet.engine.evaluate``, ...). ``EDGES`` lists, for each component, the components its code
imports, found by parsing every module (imports inside functions included). The test fails when
code imports something the table does not list (a new dependency is a design decision: add it here
and to docs/architecture.md), when the table lists an edge no code uses any more, when it names a
component that does not exist, or when the edges form a cycle. Two rules hold whatever the table
says: models and data never import each other, and nothing imports the CLI.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pspnet

SRC = Path(pspnet.__file__).parent

EDGES: dict[str, set[str]] = {
    "pspnet.config": set(),
    "pspnet.precision": {"pspnet.config"},
    "pspnet.hub": set(),
    "pspnet.models": {"pspnet.config"},
    "pspnet.data": {"pspnet.config"},
    "pspnet.report": {"pspnet.config", "pspnet.data", "pspnet.precision"},
    "pspnet.inference": {"pspnet.config", "pspnet.precision"},  # LIMITS; autocast dtypes
    "pspnet.checkpoint": {"pspnet.config", "pspnet.data", "pspnet.hub", "pspnet.models"},
    "pspnet": {"pspnet.checkpoint", "pspnet.config", "pspnet.models"},
    "pspnet.engine": set(),
    "pspnet.engine.distributed": set(),
    "pspnet.engine.losses": set(),
    "pspnet.engine.optim": set(),
    "pspnet.engine.metrics": {"pspnet.report"},
    "pspnet.engine.predict": {"pspnet.config", "pspnet.data", "pspnet.inference"},
    "pspnet.engine.evaluate": {
        "pspnet.config", "pspnet.data", "pspnet.engine.distributed", "pspnet.engine.metrics",
        "pspnet.engine.optim", "pspnet.inference",
    },
    "pspnet.engine.budget": set(),
    "pspnet.engine.safety": {"pspnet.config", "pspnet.engine.distributed"},
    "pspnet.engine.run_log": {"pspnet.checkpoint"},
    "pspnet.engine.defaults": {  # what train chose where nothing set a value, and why
        "pspnet.config", "pspnet.data", "pspnet.engine.budget", "pspnet.engine.state",
        "pspnet.report",
    },
    "pspnet.engine.run_config": {
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.defaults",
        "pspnet.engine.distributed", "pspnet.precision", "pspnet.report",
    },
    "pspnet.engine.setup": {  # a run built before its first step
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.budget",
        "pspnet.engine.defaults", "pspnet.engine.distributed", "pspnet.engine.losses",
        "pspnet.engine.optim", "pspnet.engine.run_config", "pspnet.engine.run_log",
        "pspnet.engine.safety", "pspnet.engine.state", "pspnet.models", "pspnet.precision",
    },
    "pspnet.engine.state": {
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.budget",
        "pspnet.engine.distributed", "pspnet.engine.losses", "pspnet.engine.metrics",
        "pspnet.engine.optim", "pspnet.engine.run_log", "pspnet.engine.safety",
    },
    "pspnet.engine.run_report": {  # the report of a run: scores its weights, draws the page
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.evaluate",
        "pspnet.engine.metrics", "pspnet.engine.state", "pspnet.report",
    },
    "pspnet.engine.train": {
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.budget",
        "pspnet.engine.defaults", "pspnet.engine.distributed", "pspnet.engine.evaluate",
        "pspnet.engine.run_config", "pspnet.engine.run_log", "pspnet.engine.run_report",
        "pspnet.engine.safety", "pspnet.engine.setup",
        "pspnet.engine.state", "pspnet.precision",
    },
    "pspnet.export": {"pspnet", "pspnet.checkpoint", "pspnet.config"},
    "pspnet.serve": {
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.predict",
        "pspnet.inference",
    },
    "pspnet.demo": {
        "pspnet.checkpoint", "pspnet.config", "pspnet.data", "pspnet.engine.evaluate",
        "pspnet.engine.predict", "pspnet.engine.train", "pspnet.inference", "pspnet.report",
    },
    "pspnet.benchmark": {
        "pspnet.config", "pspnet.data", "pspnet.engine.distributed", "pspnet.inference",
        "pspnet.models", "pspnet.precision", "pspnet.report",
    },
    "pspnet.cli": {
        "pspnet",  # __version__ for --version
        "pspnet.benchmark", "pspnet.checkpoint", "pspnet.hub", "pspnet.config", "pspnet.data", "pspnet.demo",
        "pspnet.engine.distributed", "pspnet.engine.evaluate", "pspnet.engine.metrics",
        "pspnet.engine.predict", "pspnet.engine.run_config", "pspnet.engine.run_report",
        "pspnet.engine.train",
        "pspnet.export", "pspnet.inference", "pspnet.models", "pspnet.report", "pspnet.serve",
    },
    "pspnet.__main__": {"pspnet.cli"},
}
NEVER = {("pspnet.models", "pspnet.data"), ("pspnet.data", "pspnet.models")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _component(module: str) -> str:
    """``pspnet.data.io`` -> ``pspnet.data``; the engine's modules are components themselves."""
    parts = module.split(".")
    depth = 3 if parts[1:2] == ["engine"] and len(parts) > 2 else 2
    return ".".join(parts[:depth])


def _imported(path: Path, module: str) -> set[str]:
    """Every ``pspnet`` module that ``path`` imports, at top level or inside functions."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from pspnet import hub` imports the module pspnet.hub, not the package's API
            found |= {f"{source}.{a.name}" if _is_module(f"{source}.{a.name}") else source
                      for a in node.names}
    return {m for m in found if m == "pspnet" or m.startswith("pspnet.")}


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _real_edges() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """(component -> components it imports, one example ``module imports target`` per edge)."""
    edges: dict[str, set[str]] = defaultdict(set)
    example: dict[tuple[str, str], str] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        source = _component(module)
        edges[source]  # every component appears, even one that imports nothing
        for target_module in _imported(path, module):
            target = _component(target_module)
            if target != source:
                edges[source].add(target)
                example.setdefault((source, target), f"{module} imports {target_module}")
    return edges, example


def test_every_import_edge_is_in_the_table() -> None:
    real, example = _real_edges()
    unlisted = sorted(f"{a} -> {b} ({example[a, b]})" for a in real for b in real[a]
                      if b not in EDGES.get(a, set()))
    assert not unlisted, "imports the architecture table does not allow:\n" + "\n".join(unlisted)


def test_the_table_lists_only_real_components_and_edges() -> None:
    real, _ = _real_edges()
    missing = sorted(set(EDGES) - set(real))
    assert not missing, f"components in the table that do not exist: {missing}"
    unlisted = sorted(set(real) - set(EDGES))
    assert not unlisted, f"components missing from the table: {unlisted}"
    stale = sorted(f"{a} -> {b}" for a in EDGES for b in EDGES[a] if b not in real.get(a, set()))
    assert not stale, "edges in the table that no code uses any more:\n" + "\n".join(stale)


def test_imports_run_one_way() -> None:
    """No cycles between components: a topological order exists."""
    remaining = {a: set(b) for a, b in EDGES.items()}
    while remaining:
        free = [a for a, deps in remaining.items() if not deps & remaining.keys()]
        assert free, f"import cycle among: {sorted(remaining)}"
        for a in free:
            del remaining[a]


def test_models_and_data_stay_apart_and_nothing_imports_the_cli() -> None:
    real, example = _real_edges()
    for a, b in NEVER:
        assert b not in real[a], example[a, b]
    importers = sorted(a for a in real if "pspnet.cli" in real[a] and a != "pspnet.__main__")
    assert not importers, f"the CLI is imported by {importers}"
