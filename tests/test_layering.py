"""Imports run one way: config -> models, data -> inference, checkpoint -> engine, export -> cli.

Each module may import only from strictly lower layers or from its own subpackage; models and
data never import each other, and nothing imports the CLI. Checked by parsing every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pspnet

SRC = Path(pspnet.__file__).parent

# Lower number = lower layer. Unlisted modules fail the test so the table stays complete.
LAYERS: dict[str, int] = {
    "pspnet.config": 0,
    "pspnet.report.charts": 0,  # Pillow only: the engine draws confusion.png with it
    "pspnet.precision": 1,
    "pspnet.models": 1,
    "pspnet.data": 1,
    "pspnet.engine.metrics": 1,
    "pspnet.engine.losses": 1,
    "pspnet.engine.distributed": 1,
    "pspnet.inference": 2,
    "pspnet.hub": 2,
    "pspnet.checkpoint": 3,
    "pspnet": 4,  # the package __init__: re-exports the public API
    "pspnet.engine": 5,
    "pspnet.export": 5,
    "pspnet.report": 2,  # run logs, tables, overlays: config, precision and data below
    "pspnet.serve": 6,
    "pspnet.demo": 6,
    "pspnet.benchmark": 6,
    "pspnet.cli": 7,
    "pspnet.__main__": 8,
}
# Siblings that must never import each other even though their layers allow nothing else.
FORBIDDEN = {("pspnet.models", "pspnet.data"), ("pspnet.data", "pspnet.models")}


def _group(module: str) -> str:
    """The LAYERS key a module belongs to (longest matching prefix)."""
    best = ""
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    return best


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                out.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                out.add(node.module)
    return {m for m in out if m == "pspnet" or m.startswith("pspnet.")}


def test_imports_run_one_way() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        group = _group(module)
        if not group:
            problems.append(f"{module} is not in the LAYERS table of this test")
            continue
        for imported in _imports(path, module):
            target = _group(imported)
            if target == group:
                continue  # same subpackage
            if (group, target) in FORBIDDEN or LAYERS[target] >= LAYERS[group]:
                problems.append(f"{module} imports {imported} ({group} -> {target})")
    assert not problems, "\n".join(problems)
