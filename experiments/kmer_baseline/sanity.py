"""Sanity checks of a 3-mer model (`protlm kmer-train`): neighbours and agreement with BLOSUM62.

    .venv/bin/python experiments/kmer_baseline/sanity.py checkpoints/protlm-kmer3-swissprot

Prints JSON: the 5 nearest 3-mers (cosine) of a few 3-mers, and Spearman correlations between
the cosine similarity of two 3-mers' vectors and their BLOSUM62 similarity (the sum of the
three position-wise scores), over (a) random pairs of 3-mers and (b) pairs that differ at one
position (score of that substitution). Deterministic (seed 0).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from scipy.stats import spearmanr

from protlm.data.alphabet import STANDARD
from protlm.embed.backends.baselines import blosum62
from protlm.models.kmer import KmerModel

QUERIES = ["LLL", "KKK", "EEE", "GGG", "PPP", "CGC", "WWW", "HHH"]


def main(folder: str, pairs: int = 20000) -> dict:
    model = KmerModel.load(folder)
    kmers = model.kmers
    unit = model.vectors / np.maximum(np.linalg.norm(model.vectors, axis=1, keepdims=True), 1e-12)
    row = {k: i for i, k in enumerate(kmers)}
    b = blosum62(STANDARD)
    aa = {a: i for i, a in enumerate(STANDARD)}
    code = np.array([[aa[c] for c in k] for k in kmers])

    neighbours = {}
    for q in QUERIES:
        if q in row:
            sims = unit @ unit[row[q]]
            order = [i for i in np.argsort(-sims) if i != row[q]][:5]
            neighbours[q] = " ".join(f"{kmers[i]}:{sims[i]:.3f}" for i in order)

    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(kmers), (2, pairs))
    i, j = i[i != j], j[i != j]
    cos = np.einsum("nd,nd->n", unit[i], unit[j])
    score = b[code[i], code[j]].sum(axis=1)
    random_pairs = spearmanr(cos, score)

    # pairs differing at exactly one position: cosine vs the BLOSUM score of that substitution
    k = rng.integers(0, len(kmers), pairs)
    pos = rng.integers(0, 3, pairs)
    new = rng.integers(0, 20, pairs)
    keep = code[k, pos] != new
    k, pos, new = k[keep], pos[keep], new[keep]
    mutated = code[k].copy()
    mutated[np.arange(len(k)), pos] = new
    other = np.array([row.get("".join(STANDARD[c] for c in m), -1) for m in mutated])
    ok = other >= 0
    cos1 = np.einsum("nd,nd->n", unit[k[ok]], unit[other[ok]])
    sub = b[code[k[ok], pos[ok]], new[ok]]
    single = spearmanr(cos1, sub)
    return {
        "model": folder, "kmers": len(kmers), "dim": model.dim,
        "nearest_neighbours_cosine": neighbours,
        "spearman_cosine_vs_blosum_random_pairs": {"rho": round(float(random_pairs.statistic), 3),
                                                   "pairs": int(len(cos))},
        "spearman_cosine_vs_blosum_single_substitutions": {"rho": round(float(single.statistic), 3),
                                                           "pairs": int(ok.sum())},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=1))
