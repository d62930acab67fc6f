"""Per-protein values of a head's test sets, kept beside its metrics (``per_protein.json``).

A protocol's :meth:`~protlm.tasks.protocols.Protocol.per_protein` gives, for one target of one
scored set, the values its headline is computed from protein by protein (correct/total residues,
hits, (truth, prediction) pairs, P@L/5 per chain) — what a paired bootstrap resamples. The
engine writes them when it scores a test set, so comparing two heads on the same proteins
(``protlm benchmark --compare``) reads them instead of predicting every test set again.

The file is ``{"sets": {SET: {"proteins": N, "targets": [ENCODED, …]}}}``, one entry per target
in the config's order; an encoded value keeps every array's dtype, so the values read back are
the values computed (float32 stays float32, exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from protlm.io.atomic import json_bytes, write_bytes

PER_PROTEIN_JSON = "per_protein.json"
FORMAT = 1  # bump when the encoding changes: older files are then ignored (predicted again)


def _encode(value: Any) -> dict:
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list) and value and not all(np.isscalar(v) for v in value):
        return {"list": [_encode(v) for v in value]}  # ragged: one entry per protein
    a = np.asarray(value)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"per-protein values must be numbers, not {a.dtype}")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.ravel().tolist()}


def _decode(doc: dict) -> Any:
    if "tuple" in doc:
        return tuple(_decode(v) for v in doc["tuple"])
    if "list" in doc:
        return [_decode(v) for v in doc["list"]]
    return np.asarray(doc["data"], dtype=np.dtype(doc["dtype"])).reshape(doc["shape"])


def encode(n: int, values: Any) -> dict:
    """(n, values) of ``Protocol.per_protein`` as JSON: arrays (any dtype and shape), tuples and
    ragged per-protein lists of them, nested as they come."""
    return {"n": int(n), "values": _encode(values)}


def decode(doc: dict) -> tuple[int, Any]:
    """What :func:`encode` took, with every array's dtype and shape (lists of numbers come back as
    arrays, which every protocol's ``statistic`` indexes the same way)."""
    return int(doc["n"]), _decode(doc["values"])


def set_values(protocol, config, preds, dataset) -> dict:
    """The stored entry of one scored set: every target's encoded per-protein values."""
    return {"proteins": len(dataset),
            "targets": [encode(*protocol.per_protein(config, preds, dataset, k)) for k in range(len(config.targets))]}


def write(folder: Path, sets: dict[str, dict]) -> None:
    write_bytes(Path(folder) / PER_PROTEIN_JSON, json_bytes({"format": FORMAT, "sets": sets}))


def read(folder: Path) -> dict[str, dict]:
    """The stored sets of a head folder ({} when it has none: a head made before protlm kept them,
    or a file that cannot be read — the caller then predicts again)."""
    path = Path(folder) / PER_PROTEIN_JSON
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("sets"), dict):
        return {}
    return doc["sets"]
