"""Several embedders side by side: ``concat:A+B+…`` joins their per-residue vectors column-wise.

The ProtTrans paper's suggested next step after showing LM embeddings approach profile-based
inputs is to feed both; ``--model concat:profile:DB.fasta+checkpoints/my-lm`` does that for any
registered embedders (each part is resolved through :func:`protlm.embed.registry.resolve` with
the same options, so ``--layer``/``--dtype`` reach the parts that take them). Columns are the
parts' columns in the order given (D = the sum of the parts' D); row i is residue i of every
part.

The combined backend takes the strictest of its parts' batching needs: the smallest position
limit (the runner then windows the whole combination), the most special tokens, the smallest
default token budget and batch cap, equal-length CPU batches if any part wants them, and a GPU if
any part runs on one. Its fingerprint lists every part's, in order, so a cached combination never
matches another order or another part.
"""

from __future__ import annotations

import numpy as np

from protlm.embed.backend import Backend
from protlm.embed.registry import register, resolve
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, model_label

SEPARATOR = "+"


class ConcatBackend(Backend):
    family = "concat"
    model_type = "protlm_concat"

    def __init__(self, parts: list[Backend], names: list[str]):
        if len(parts) < 2:
            raise ConfigError(f"{model_label()} concat:A+B: give at least two embedders joined by '+'")
        self.parts = parts
        self.names = names
        self.source = "concat:" + SEPARATOR.join(names)
        self.dim = sum(p.dim for p in parts)
        limits = [p.max_residues for p in parts if p.max_residues]
        self.max_residues = min(limits) if limits else None
        self.extra_tokens = max(p.extra_tokens for p in parts)
        self.default_tokens_per_batch = min(p.default_tokens_per_batch for p in parts)
        self.default_max_sequences = min(p.default_max_sequences for p in parts)
        self.default_alone_above = min(p.default_alone_above for p in parts)
        self.equal_length_on_cpu = any(p.equal_length_on_cpu for p in parts)
        self.device = next((str(p.device) for p in parts if str(p.device) != "cpu"), "cpu")

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        outputs = [p.forward(seqs, cpu=cpu) for p in self.parts]
        joined = []
        for i, seq in enumerate(seqs):
            arrays = [out[i] for out in outputs]
            for name, a, p in zip(self.names, arrays, self.parts):
                if a.shape != (len(seq), p.dim):
                    raise RuntimeError(f"concat part {name} returned {a.shape} for a {len(seq)}-residue protein "
                                       f"(expected {(len(seq), p.dim)})")
            joined.append(np.concatenate(arrays, axis=1).astype(np.float32, copy=False))
        return joined

    def describe(self) -> dict:
        return {**super().describe(), "parts": SEPARATOR.join(self.names),
                "part_dims": ",".join(str(p.dim) for p in self.parts)}

    def fingerprint(self) -> str:
        return "concat(" + " + ".join(p.fingerprint() for p in self.parts) + ")"


@register(prefix="concat:", help="per-residue concatenation of embedders: concat:onehot+profile:DB.fasta "
                                 "(D = the sum)")
def _concat(source: str, options: EmbedOptions) -> Backend:
    names = [n.strip() for n in source.split(SEPARATOR)]
    if len(names) < 2 or any(not n for n in names):
        raise ConfigError(f"{model_label()} concat:{source}: give at least two embedder names joined by '+' "
                          f"(e.g. concat:onehot+blosum62)")
    if any(n.startswith("concat:") for n in names):
        raise ConfigError(f"{model_label()} concat:{source}: a concat part cannot itself be concat:…; list all parts "
                          f"in one concat:")
    return ConcatBackend([resolve(n, options) for n in names], names)
