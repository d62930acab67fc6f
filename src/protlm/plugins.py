"""Out-of-tree plug-ins: packages that add embedders, heads, protocols or label file formats.

A plug-in is an installed package that names a module under the entry-point group
``protlm.plugins`` in its metadata, e.g. in its ``pyproject.toml``::

    [project.entry-points."protlm.plugins"]
    my_model = "my_package.protlm_plugin"

Importing that module registers what it adds with protlm's own decorators
(:func:`protlm.embed.registry.register`, :func:`protlm.tasks.heads.register_head`,
:func:`protlm.tasks.protocols.register_protocol`, :func:`protlm.tasks.formats.register_format`),
exactly as a file inside protlm does. Every registry calls :func:`load_plugins` before it answers
a lookup, so a plug-in's names work everywhere protlm takes a name (CLI flags, task configs,
``--help`` lists) with no change to protlm. Registries refuse a name that is taken, so a plug-in
cannot silently replace a built-in. A plug-in that fails to import is skipped with one warning
naming it and the error, once per process.
"""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger("protlm")

GROUP = "protlm.plugins"
_loaded: dict[str, str] = {}  # entry-point name -> "ok" or the error text
_done = False


def load_plugins(force: bool = False) -> dict[str, str]:
    """Import every ``protlm.plugins`` entry point once; returns name → "ok" or its error.
    ``force``: look again (a package installed since, in tests)."""
    global _done
    if _done and not force:
        return dict(_loaded)
    _done = True
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in _loaded and _loaded[ep.name] == "ok":
            continue
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take protlm down with it
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            text = f"{type(exc).__name__}: {exc}"
            _loaded[ep.name] = text
            log.warning("protlm plug-in %r (package %s, module %s) failed to load and is skipped: %s",
                        ep.name, dist, ep.value, text)
        else:
            _loaded[ep.name] = "ok"
    return dict(_loaded)


def failed() -> dict[str, str]:
    """The plug-ins that failed to load, with their errors (for 'unknown name' messages)."""
    return {k: v for k, v in _loaded.items() if v != "ok"}


def hint() -> str:
    """A sentence for an 'unknown name' error when a plug-in failed to load ("" otherwise)."""
    bad = failed()
    if not bad:
        return ""
    return " (plug-in(s) that failed to load: " + "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())) + ")"
