"""Protocols: one file per protocol, each a registered class (:mod:`.base`).

The six label protocols of biotrainer, with biotrainer's names and meanings —
``residue_to_class``, ``residue_to_value``, ``residues_to_class``, ``residues_to_value``,
``sequence_to_class``, ``sequence_to_value`` — and contact prediction,
``residue_pairs_to_class``. Every module of this package is imported here, so a new protocol is
one new file (docs/architecture.md, "A new protocol").
"""

from __future__ import annotations

import importlib
import pkgutil

from protlm.tasks.protocols.base import (FitState, Protocol, TaskData, get_protocol, protocol_names,
                                         register_deprecated_name, register_protocol, resolve_name)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["FitState", "Protocol", "TaskData", "get_protocol", "protocol_names", "register_deprecated_name",
           "register_protocol", "resolve_name"]
