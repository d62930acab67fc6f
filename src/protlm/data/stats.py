"""Statistics of a FASTA file (``protlm inspect``) in one streaming pass."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from protlm.data.alphabet import CleaningPolicy
from protlm.data.fasta import FastaStats, read_fasta
from protlm.data.prepare import LENGTH_EDGES


def fasta_statistics(
    path: str | os.PathLike,
    policy: CleaningPolicy | None = None,
    *,
    skip_invalid: bool = False,
    rename_duplicates: bool = False,
) -> dict:
    """Counts, length distribution and residue composition after cleaning."""
    policy = policy or CleaningPolicy()
    stats = FastaStats()
    lengths: list[int] = []
    composition: Counter = Counter()
    longest = ("", 0)
    for rec in read_fasta(
        path, policy, skip_invalid=skip_invalid, rename_duplicates=rename_duplicates, stats=stats
    ):
        n = len(rec.sequence)
        lengths.append(n)
        composition.update(rec.sequence)
        if n > longest[1]:
            longest = (rec.id, n)
    arr = np.array(lengths, dtype=np.int64)
    hist, _ = np.histogram(arr, bins=LENGTH_EDGES + [max(LENGTH_EDGES[-1] + 1, int(arr.max(initial=0)) + 1)])
    total = int(arr.sum())
    return {
        "file": str(path),
        "records": len(lengths),
        "residues": total,
        "skipped_invalid": stats.skipped,
        "skipped_messages": stats.skipped_messages,
        "renamed_duplicates": stats.renamed,
        "length": {
            "min": int(arr.min()) if len(arr) else 0,
            "max": int(arr.max()) if len(arr) else 0,
            "mean": round(float(arr.mean()), 2) if len(arr) else 0.0,
            "median": float(np.median(arr)) if len(arr) else 0.0,
            "longest_id": longest[0],
            "histogram": {"edges": LENGTH_EDGES + ["inf"], "counts": hist.tolist()},
        },
        "composition": {aa: round(c / total, 5) for aa, c in sorted(composition.items())} if total else {},
        "cleaning": policy.as_dict(),
    }
