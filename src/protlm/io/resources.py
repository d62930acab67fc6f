"""Where protlm finds the benchmark data and its own bundled files.

- The data root: ``--data`` when given, else ``$PROTLM_DATA``, else ``../shared/data`` (relative to
  the working directory). One function, :func:`data_root`, so every command agrees.
- Bundled files (the committed checkpoints in ``checkpoints/``, the recipes in ``configs/``): in a
  source checkout they sit at the repository root next to ``src/``; an installed wheel puts them in
  ``<prefix>/share/protlm/`` (``[tool.setuptools.data-files]`` in ``pyproject.toml``).
  :func:`bundled` looks in both, the checkout first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from protlm.errors import InputError

DEFAULT_DATA = "../shared/data"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: ``explicit``, else ``$PROTLM_DATA``, else ``../shared/data``."""
    if explicit not in (None, ""):
        return Path(explicit)
    return Path(os.environ.get("PROTLM_DATA") or DEFAULT_DATA)


def _roots() -> list[Path]:
    package = Path(__file__).resolve().parents[1]  # …/protlm
    checkout = package.parents[1]  # src/protlm → the repository root
    roots = [checkout] if (checkout / "pyproject.toml").is_file() else []
    return roots + [Path(sys.prefix) / "share" / "protlm"]


def bundled(*parts: str, must_exist: bool = True) -> Path:
    """A bundled file or folder, e.g. ``bundled("checkpoints", "protlm-kmer3-swissprot")``."""
    for root in _roots():
        path = root.joinpath(*parts)
        if path.exists():
            return path
    if must_exist:
        raise InputError(f"{Path(*parts)}: not found in this protlm installation (looked in "
                         f"{', '.join(str(r) for r in _roots())}); reinstall protlm or run from a source checkout")
    return _roots()[-1].joinpath(*parts)


def checkpoint_folder(name: str) -> Path:
    """A committed checkpoint folder by name (may not exist: callers say what to do then)."""
    return bundled("checkpoints", name, must_exist=False)
