"""The contact-map picture of the ProteinLM paper: predicted above the diagonal, true below.

Upper triangle: the predicted probabilities as a light heat map, with the top-L predicted pairs
(|i − j| ≥ 6) drawn on top — filled blue where they are true contacts, red crosses where they are
not; true positives at long range (|i − j| ≥ 24) are ringed in black, since those are the ones the
headline metric counts. Lower triangle: the true contacts (CB–CB < 8 Å), grey. Without a
structure the lower triangle mirrors the prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protlm.io.atomic import write_with_path


def top_pairs(probs: np.ndarray, k: int, min_separation: int = 6,
              observed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-probability pairs i < j with |i − j| ≥ min_separation."""
    i, j = np.triu_indices(probs.shape[0], k=min_separation)
    if observed is not None:
        keep = observed[i] & observed[j]
        i, j = i[keep], j[keep]
    order = np.argsort(-probs[i, j], kind="stable")[:k]
    return i[order], j[order]


def contact_figure(probs: np.ndarray, contacts: np.ndarray | None, path: Path | str, *, title: str = "",
                   observed: np.ndarray | None = None, long_range: int = 24, dpi: int = 120) -> Path:
    """Write the picture to ``path`` (PNG, atomically) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = probs.shape[0]
    k = max(1, n)
    i, j = top_pairs(probs, k, observed=observed)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    fig, ax = plt.subplots(figsize=(6, 6.8))
    heat = np.where(upper, probs, np.nan)
    ax.imshow(heat, cmap="Blues", vmin=0, vmax=max(float(np.nanmax(heat)) if upper.any() else 1.0, 1e-6),
              alpha=0.45, origin="upper", interpolation="nearest")
    if contacts is not None:
        ti, tj = np.nonzero(np.tril(contacts, -6))
        ax.scatter(tj, ti, s=4, c="0.45", marker="s", linewidths=0, label="true contact (lower)")
        hit = contacts[i, j]
        ax.scatter(j[hit], i[hit], s=9, c="tab:blue", linewidths=0, label=f"top-L predicted: contact ({hit.sum()})")
        ax.scatter(j[~hit], i[~hit], s=9, c="tab:red", marker="x", linewidths=0.7,
                   label=f"top-L predicted: no contact ({(~hit).sum()})")
        far = hit & (j - i >= long_range)
        ax.scatter(j[far], i[far], s=40, facecolors="none", edgecolors="black", linewidths=0.7,
                   label=f"long-range hit, |i-j|>={long_range} ({far.sum()})")
        prec = hit.mean() if len(hit) else 0.0
        subtitle = f"upper: predicted (top L = {len(i)}), lower: true; P@L (>=6) = {prec:.2f}"
    else:
        ax.scatter(j, i, s=9, c="tab:blue", linewidths=0, label="top-L predicted")
        ax.scatter(i, j, s=9, c="tab:blue", linewidths=0)
        subtitle = f"predicted contacts (top L = {len(i)}); no structure given"
    ax.plot([0, n - 1], [0, n - 1], color="0.7", linewidth=0.5)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("residue j")
    ax.set_ylabel("residue i")
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=7, markerscale=1.5, frameon=False)
    fig.tight_layout()
    try:
        return write_with_path(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
