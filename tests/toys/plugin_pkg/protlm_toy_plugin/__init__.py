"""An out-of-tree protlm plug-in package (tests/test_architecture.py installs it on sys.path).

Its metadata (``protlm_toy_plugin-0.1.dist-info/entry_points.txt``) names this module under the
``protlm.plugins`` group; importing it registers an embedder (``toy-composition``: per residue,
the running fraction of hydrophobic residues and the residue's charge) and a label file format
(``toy_tsv``: ``id<TAB>sequence<TAB>label<TAB>split`` lines). Nothing in protlm names it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protlm.data.records import ProteinRecord
from protlm.embed.backend import Backend
from protlm.embed.registry import register
from protlm.tasks.formats import register_format

HYDROPHOBIC = set("AILMFVW")
CHARGE = {"K": 1.0, "R": 1.0, "D": -1.0, "E": -1.0}


class CompositionBackend(Backend):
    family = "toy_composition"
    model_type = "toy_composition"
    dim = 2
    max_residues = None
    default_tokens_per_batch = 4096

    def __init__(self, source: str):
        self.source = source

    def forward(self, seqs, *, cpu=False):
        out = []
        for s in seqs:
            hyd = np.cumsum([c in HYDROPHOBIC for c in s]) / np.arange(1, len(s) + 1)
            out.append(np.stack([hyd, [CHARGE.get(c, 0.0) for c in s]], axis=1).astype(np.float32))
        return out


@register(names=("toy-composition",), help="a plug-in's toy embedder (tests)")
def _composition(source, options):
    return CompositionBackend(source)


@register_format("toy_tsv", help="a plug-in's toy format: id, sequence, label, split per line")
def _toy_tsv(path: Path, source, per_residue=None) -> list:
    records = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        pid, seq, label, split = line.split("\t")
        records.append(ProteinRecord(id=pid, sequence=seq, labels={source.label or "target": label}, split=split))
    return records
