"""Embedder backends by name: each backend file registers a factory; ``resolve`` finds it.

A spec's name is matched, in this order, against:

1. an exact registered name (``onehot``, ``blosum62``, ``kmer``, ``unirep1900`` …);
2. a registered prefix (``profile:DB`` → the ``profile:`` factory gets ``DB``);
3. a folder (relative to the working directory, else a bundled checkpoint, ``checkpoints/NAME`` or
   ``NAME``: :func:`protlm.io.resources.model_source`): its marker file (a peft adapter's
   ``adapter_config.json``; a head folder of a fine-tuned LM reads as its ``lm/`` folder), then its
   ``config.json`` ``model_type`` (``esm``, ``bert``, ``protlm_kmer`` …);
4. a hub id ``owner/name``, whose ``config.json`` is fetched and matched as in 3 (an unreachable
   hub fails at once unless the id is in the local cache: :func:`protlm.io.resources.check_hub`).

Every module of :mod:`protlm.embed.backends` is imported on first use (TAPE's registry), so a new
family is one file there that calls :func:`register`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from protlm.embed.backend import Backend
from protlm.embed.spec import EmbedOptions
from protlm.errors import InputError, model_label
from protlm.io.resources import model_source

#: A factory builds a backend from the source (the name, the prefix's argument, or the folder) and options.
Factory = Callable[[str, EmbedOptions], Backend]


@dataclass(frozen=True)
class Entry:
    factory: Factory
    help: str


_NAMES: dict[str, Entry] = {}
_PREFIXES: dict[str, Entry] = {}
_MODEL_TYPES: dict[str, Entry] = {}
_MARKERS: dict[str, Entry] = {}
_loaded = False


def register(*, names: tuple[str, ...] = (), prefix: str | None = None, model_types: tuple[str, ...] = (),
             marker: str | None = None, help: str = "") -> Callable[[Factory], Factory]:
    """Decorator: ``@register(names=("onehot",), help="…")`` on a factory ``f(source, options) -> Backend``;
    ``marker``: a file name whose presence in a folder selects this factory (before config.json)."""
    def deco(factory: Factory) -> Factory:
        entry = Entry(factory, help)
        slots = [(_MARKERS, marker, "marker")] if marker else []
        slots += [(_NAMES, n, "name") for n in names] + ([(_PREFIXES, prefix, "prefix")] if prefix else [])
        slots += [(_MODEL_TYPES, t, "model_type") for t in model_types]
        for table, key, what in slots:  # a second owner of a name is refused (TAPE's registry does too)
            old = table.get(key)
            if old is not None and _qualname(old.factory) != _qualname(factory):
                raise ValueError(f"embedder {what} {key!r} is registered already (by {_qualname(old.factory)}); "
                                 f"choose another")
        for table, key, _ in slots:
            table[key] = entry
        return factory
    return deco


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _load_backends() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import protlm.embed.backends as pkg

        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    from protlm.plugins import load_plugins

    load_plugins()  # out-of-tree embedders (protlm.plugins entry points), after the built-in ones; once


def names() -> dict[str, str]:
    """Registered names and prefixes with their one-line help (for --help and error messages)."""
    _load_backends()
    out = {n: e.help for n, e in _NAMES.items()}
    out.update({f"{p}…": e.help for p, e in _PREFIXES.items()})
    return out


def model_types() -> list[str]:
    _load_backends()
    from protlm.models.families import FAMILIES

    return sorted({t for t in _MODEL_TYPES if not t.startswith("__")} | set(FAMILIES))


def _folder_model_type(source: str) -> str | None:
    cfg = Path(source) / "config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise InputError(f"{model_label()} {source}: config.json is not a JSON object ({exc})") from None
    return value if isinstance(value, str) else None


def resolve(source: str, options: EmbedOptions | None = None) -> Backend:
    """The backend for ``source`` (see the module docstring), built with ``options``."""
    source = str(source)
    if ":" not in source:  # no prefix: a folder here, a bundled checkpoint or a hub id (protlm.io.resources)
        source = model_source(source)  # before the backends' imports, so an unreachable hub fails at once
    _load_backends()
    options = options or EmbedOptions()
    options.validate()
    if source in _NAMES:
        return _NAMES[source].factory(source, options)
    for prefix, entry in _PREFIXES.items():
        if source.startswith(prefix):
            return entry.factory(source[len(prefix):], options)
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{model_label()} {source}: not a folder (a model folder, a hub id or one of "
                             f"{', '.join(sorted(names()))} is expected)")
        for marker, entry in _MARKERS.items():
            if (path / marker).is_file() and not (path / "config.json").is_file():
                return entry.factory(source, options)
        if (path / "head.json").is_file() and (path / "lm").is_dir() and not (path / "config.json").is_file():
            return resolve(str(path / "lm"), options)  # a head folder of a fine-tuned LM: that LM
        model_type = _folder_model_type(source)
        if model_type is None:
            raise InputError(f"{model_label()} {source}: no config.json with a model_type in this folder; is it a "
                             f"Hugging Face model folder?")
        if model_type not in _MODEL_TYPES:
            from protlm.models.families import FAMILIES

            if model_type in FAMILIES and "__hub__" in _MODEL_TYPES:
                # a family registered after the HF backend was imported (a plug-in's Architecture with
                # embedding conventions): the HF backend reads it through FAMILIES like the others
                return _MODEL_TYPES["__hub__"].factory(source, options)
            raise InputError(f"{model_label()} {source}: model_type {model_type!r} is not a protein LM family protlm "
                             f"knows ({', '.join(model_types())})")
        return _MODEL_TYPES[model_type].factory(source, options)
    if source.count("/") == 1 and not source.startswith((".", "/")):
        hub = _MODEL_TYPES.get("__hub__")
        if hub is not None:
            return hub.factory(source, options)
    from protlm.plugins import hint

    raise InputError(f"{model_label()} {source}: not an embedder name ({', '.join(sorted(names()))}), no such folder, "
                     f"and not a hub id of the form owner/name{hint()}")
