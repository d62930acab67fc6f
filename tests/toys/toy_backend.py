"""A toy embedder family in one file: residue i → [position, letter code, protein length].

Importing this file registers ``toy-positions``; nothing else in protlm is changed.
"""

from __future__ import annotations

import numpy as np

from protlm.embed.backend import Backend
from protlm.embed.registry import register


class PositionsBackend(Backend):
    family = "toy"
    model_type = "toy_positions"
    dim = 3
    max_residues = 50  # to show that the runner windows longer proteins for any family
    default_tokens_per_batch = 64
    equal_length_on_cpu = True

    def __init__(self, source: str):
        self.source = source
        self.calls: list[int] = []

    def forward(self, seqs, *, cpu=False):
        self.calls.append(len(seqs))
        return [np.stack([np.arange(len(s), dtype=np.float32),
                          np.frombuffer(s.encode(), dtype=np.uint8).astype(np.float32),
                          np.full(len(s), len(s), dtype=np.float32)], axis=1) for s in seqs]


@register(names=("toy-positions",), help="a toy family for the architecture tests")
def _toy(source, options):
    return PositionsBackend(source)
