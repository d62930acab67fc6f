"""Contact precision as the field defines it (TAPE, ProteinLM, ESM), with bootstrap CIs.

For one protein of length L and one sequence-separation range, rank the pairs i < j whose
separation |i − j| lies in the range (and whose residues both have coordinates) by predicted
probability, take the top k = L // 5, L // 2 or L of them, and report the fraction that are true
contacts (CB–CB < 8 Å). L is the length of the scored chain (the structure stretch), not the
number of candidate pairs; when a range holds fewer than k candidates all of them are taken and
the denominator is their number. A protein with no candidate pair in a range (too short) is left
out of that range's average and counted in ``skipped``. A protein with no true contact in a range
is kept (it scores 0), as in ESM's evaluation.

The figure of a set is the **mean over proteins** (each protein weighs the same, whatever its
length), with a percentile bootstrap CI over proteins (≥1,000 resamples). TAPE's issue #122 showed
how much the range matters: a "P@L/5" without a range is not comparable across papers, so every
key here names its range. The headline is **P@L/5, long range (|i − j| ≥ 24)**.
"""

from __future__ import annotations

import numpy as np

from protlm.tasks.contacts.data import selection_lines
from protlm.tasks.metrics import bootstrap_ci

#: Sequence-separation ranges (inclusive bounds; None = no upper bound). "all" is everything ≥ 6.
RANGES: dict[str, tuple[int, int | None]] = {
    "short": (6, 11),
    "medium": (12, 23),
    "long": (24, None),
    "all": (6, None),
}
#: Top-k cut-offs as divisors of L.
CUTOFFS: dict[str, int] = {"L/5": 5, "L/2": 2, "L": 1}
HEADLINE = ("long", "L/5")


def range_label(name: str) -> str:
    lo, hi = RANGES[name]
    return f"{name} ({lo}–{hi})" if hi is not None else f"{name} (≥{lo})"


def precision_at(probs: np.ndarray, contacts: np.ndarray, observed: np.ndarray | None = None, *,
                 rng: str = "long", divisor: int = 5) -> float | None:
    """Precision of the top L // divisor pairs in one separation range for one protein.

    ``probs`` (L × L, any real scores; only i < j is read), ``contacts`` (L × L bool),
    ``observed`` (L bool, residues with coordinates; default all). None when the range holds no
    candidate pair.
    """
    length = contacts.shape[0]
    lo, hi = RANGES[rng]
    i, j = np.triu_indices(length, k=lo)
    sep = j - i
    keep = np.ones(len(i), dtype=bool) if hi is None else sep <= hi
    if observed is not None:
        keep &= observed[i] & observed[j]
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return None
    k = min(max(1, length // divisor), len(i))
    scores = np.asarray(probs)[i, j]
    # A stable sort on -score: ties keep the (i, j) order, so results are deterministic.
    top = np.argsort(-scores, kind="stable")[:k]
    return float(np.asarray(contacts)[i[top], j[top]].mean())


def per_protein_precisions(probs: list[np.ndarray], contacts: list[np.ndarray],
                           observed: list[np.ndarray | None] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``table[range][cutoff]``: per-protein precisions (NaN where the range had no candidates)."""
    observed = observed if observed is not None else [None] * len(probs)
    if not (len(probs) == len(contacts) == len(observed)):
        raise ValueError("probs, contacts and observed must hold one entry per protein")
    table: dict[str, dict[str, np.ndarray]] = {}
    for rng in RANGES:
        table[rng] = {}
        for cut, div in CUTOFFS.items():
            vals = [precision_at(p, c, o, rng=rng, divisor=div) for p, c, o in zip(probs, contacts, observed)]
            table[rng][cut] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    return table


def summarize(table: dict[str, dict[str, np.ndarray]], *, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict:
    """Mean over proteins and bootstrap CI for every range × cut-off; names the headline."""
    out: dict = {"ranges": {r: range_label(r) for r in RANGES}, "precision": {}, "n_boot": n_boot,
                 "ci_level": level, "averaging": "mean over proteins"}
    for rng, cuts in table.items():
        out["precision"][rng] = {}
        for cut, vals in cuts.items():
            ok = vals[~np.isnan(vals)]
            entry = {"mean": float(ok.mean()) if len(ok) else None, "n_proteins": int(len(ok)),
                     "skipped": int(len(vals) - len(ok))}
            if len(ok) >= 2 and n_boot > 0:
                lo, hi = bootstrap_ci(lambda idx, v=ok: float(v[idx].mean()), len(ok), n_boot=n_boot,
                                      seed=seed, level=level)
                entry["ci"] = [lo, hi]
            else:
                entry["ci"] = None
            out["precision"][rng][cut] = entry
    rng, cut = HEADLINE
    head = out["precision"][rng][cut]
    out["headline"] = {"name": f"P@{cut}, {range_label(rng)}", "value": head["mean"], "ci": head["ci"],
                       "n_proteins": head["n_proteins"]}
    return out


def chance_levels(contacts: list[np.ndarray], observed: list[np.ndarray | None] | None = None) -> dict[str, float]:
    """Expected precision of a random ranking per range: each protein's contact density there, averaged.

    The floor every precision should be read against (a predictor that knows nothing scores this
    in expectation, at every top-L/k cut-off).
    """
    observed = observed if observed is not None else [None] * len(contacts)
    out = {}
    for rng, (lo, hi) in RANGES.items():
        dens = []
        for c, o in zip(contacts, observed):
            i, j = np.triu_indices(c.shape[0], k=lo)
            keep = np.ones(len(i), dtype=bool) if hi is None else (j - i) <= hi
            if o is not None:
                keep &= o[i] & o[j]
            if keep.any():
                dens.append(float(c[i[keep], j[keep]].mean()))
        out[rng] = float(np.mean(dens)) if dens else None
    return out


def evaluate_maps(probs: list[np.ndarray], contacts: list[np.ndarray], observed: list[np.ndarray | None] | None = None,
                  *, n_boot: int = 1000, seed: int = 0, ids: list[str] | None = None) -> dict:
    """Per-protein precisions → the summary of :func:`summarize`, plus the chance level per range.

    With ``ids`` the per-protein values are kept too (``per_protein``), so two predictors scored
    on the same proteins can be compared pairwise (``protlm benchmark --compare``, :mod:`protlm.tasks.suite`).
    """
    table = per_protein_precisions(probs, contacts, observed)
    summary = summarize(table, n_boot=n_boot, seed=seed)
    summary["chance"] = chance_levels(contacts, observed)
    if ids is not None:
        summary["per_protein"] = {"ids": list(ids), "precision": {
            r: {c: [None if np.isnan(v) else float(v) for v in vals] for c, vals in cuts.items()}
            for r, cuts in table.items()}}
    return summary


def format_table(summary: dict) -> str:
    """A small text table (rows: ranges, columns: L/5, L/2, L) with CIs, for CLI summaries and docs."""
    lines = [f"{'range':16s} " + " ".join(f"{'P@' + c:>22s}" for c in CUTOFFS)]
    for rng in RANGES:
        cells = []
        for cut in CUTOFFS:
            e = summary["precision"][rng][cut]
            if e["mean"] is None:
                cells.append(f"{'—':>22s}")
            elif e["ci"]:
                cells.append(f"{e['mean']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]".rjust(22))
            else:
                cells.append(f"{e['mean']:.3f}".rjust(22))
        lines.append(f"{range_label(rng):16s} " + " ".join(cells))
    chance = summary.get("chance")
    if chance:
        lines.append("chance (random ranking, the contact density): "
                     + ", ".join(f"{r} {v:.3f}" for r, v in chance.items() if v is not None))

    lines += selection_lines(summary.get("selection") or {})
    return "\n".join(lines)
