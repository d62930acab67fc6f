"""docs/architecture.md's layer rule, checked on the source: no import runs from a lower layer up to
a higher one, and no layer package imports a sibling."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "protlm"

BASE = {"errors", "protlm", "configfile", "plugins"}  # `from protlm import __version__`, errors, the config dialect, plug-ins
#: layer → the protlm packages it may import (besides BASE); docs/architecture.md
ALLOWED = {
    "errors": set(),
    "configfile": set(),
    "plugins": set(),
    "io": set(),
    "data": {"io"},
    "align": {"data", "io"},
    "models": {"data", "io"},
    "pretrain": {"models", "data", "io"},
    "embed": {"models", "data", "align", "io"},
    "tasks": {"embed", "models", "data", "align", "io"},
    "analysis": {"tasks", "embed", "models", "data", "io"},
    "predictors": {"tasks", "embed", "models", "data", "io"},
    "serve": {"predictors", "tasks", "embed", "models", "data", "io"},
    "demo": {"analysis", "tasks", "embed", "pretrain", "models", "data", "align", "io"},
    "cli": {"demo", "serve", "predictors", "analysis", "tasks", "embed", "pretrain", "models", "data", "align", "io"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "protlm" and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "protlm":
                    yield alias.name, node.lineno


def test_every_import_goes_down_the_layers():
    bad = []
    layers_seen = set()
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # protlm/__init__.py exposes the public API lazily
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        layers_seen.add(layer)
        assert layer in ALLOWED, f"{rel}: a package that docs/architecture.md does not place in a layer"
        for module, line in _imports(f):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else "protlm"
            if target == layer or target in BASE:
                continue
            if target not in ALLOWED[layer]:
                bad.append(f"{rel}:{line} imports {module} ({layer} may import {sorted(ALLOWED[layer])})")
    assert not bad, "\n".join(bad)
    assert {"io", "data", "models", "embed", "tasks", "cli"} <= layers_seen
