"""The papers' metrics, implemented once, with bootstrap confidence intervals over proteins.

Definitions (ProtTrans, ProteinLM/TAPE, ``../shared/guides/measuring.md``):

- **Q3 / Q8** — per-residue accuracy over *all scored residues of the set* (masks honoured:
  unresolved residues and residues without an 8-state label are not scored). The papers also
  give the **per-protein mean** with its standard error (the mean of each protein's own
  accuracy, SE = sample standard deviation / √n).
- **Q10 / Q2** — per-protein accuracy; **MCC** the multi-class Matthews correlation
  (Gorodkin's R_K, which is the usual MCC for two classes).
- **Spearman ρ** for regression (stability, fluorescence).
- **top-1 accuracy** for fold classification (remote homology) — the same as accuracy.
- **Bootstrap 95% CIs**: proteins are resampled with replacement (≥ 1,000 times) and the
  statistic is recomputed on each resample; the interval is the percentile interval. For
  residue-level scores the resampling unit is still the protein, as residues of one protein
  are not independent.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = [
    "accuracy",
    "bootstrap_ci",
    "confusion_matrix",
    "mcc",
    "per_protein_accuracy",
    "residue_scores",
    "residue_value_scores",
    "sequence_class_scores",
    "spearman",
    "value_scores",
]

N_BOOT = 1000


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n_items: int, *, n_boot: int = N_BOOT,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``n_items`` resampled with replacement.

    ``statistic(idx)`` receives an int array of ``n_items`` item indices (drawn with replacement)
    and returns a float. Resamples where the statistic is undefined (NaN) are dropped.
    """
    if n_items < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        values[b] = statistic(rng.integers(0, n_items, size=n_items))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of items of true class i predicted as j."""
    return np.bincount(np.asarray(y_true) * n_classes + np.asarray(y_pred),
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mcc(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Multi-class Matthews correlation coefficient (Gorodkin 2004); 0 when undefined."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    c = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    s = c.sum()
    correct = np.trace(c)
    t = c.sum(axis=1)  # true counts per class
    p = c.sum(axis=0)  # predicted counts per class
    num = correct * s - t @ p
    den = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float(num / den) if den > 0 else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as Spearman's ρ needs."""
    from scipy.stats import rankdata

    return rankdata(x)


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks; NaN when a side is constant."""
    a, b = _rank(np.asarray(y_true, dtype=np.float64)), _rank(np.asarray(y_pred, dtype=np.float64))
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def per_protein_accuracy(y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray]) -> np.ndarray:
    """Each protein's own accuracy over its scored residues (NaN for a protein with none)."""
    return np.array([float((t == p).mean()) if len(t) else np.nan for t, p in zip(y_true, y_pred)])


def _ci_dict(value: float, ci: tuple[float, float]) -> dict:
    """``ci95`` is ``[None, None]`` where no interval exists (no resamples, ``n_boot`` 0)."""
    lo, hi = (None, None) if not (np.isfinite(ci[0]) and np.isfinite(ci[1])) else (ci[0], ci[1])
    return {"value": value, "ci95": [lo, hi]}


def residue_scores(y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray], *, n_boot: int = N_BOOT,
                   seed: int = 0) -> dict:
    """Q3/Q8-style scores for one task: ``y_true[k]``/``y_pred[k]`` hold protein k's *scored* residues.

    Returns the accuracy over all scored residues (the headline, with a bootstrap CI over
    proteins), the per-protein mean ± standard error, and counts.
    """
    keep = [k for k, t in enumerate(y_true) if len(t)]
    t_list = [np.asarray(y_true[k]) for k in keep]
    p_list = [np.asarray(y_pred[k]) for k in keep]
    correct = np.array([int((t == p).sum()) for t, p in zip(t_list, p_list)], dtype=np.int64)
    total = np.array([len(t) for t in t_list], dtype=np.int64)
    value = float(correct.sum() / total.sum()) if total.sum() else float("nan")
    ci = bootstrap_ci(lambda idx: correct[idx].sum() / total[idx].sum(), len(keep), n_boot=n_boot, seed=seed)
    per = correct / np.maximum(total, 1)
    se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")
    return {
        "accuracy": _ci_dict(value, ci),
        "per_protein_mean": {"value": float(per.mean()) if len(per) else float("nan"), "se": se},
        "proteins": len(keep),
        "residues": int(total.sum()),
    }


def sequence_class_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, *,
                          n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Q10/Q2/top-1: accuracy and MCC over proteins, each with a bootstrap CI."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    acc = accuracy(y_true, y_pred)
    m = mcc(y_true, y_pred, n_classes)
    n = len(y_true)
    return {
        "accuracy": _ci_dict(acc, bootstrap_ci(lambda i: accuracy(y_true[i], y_pred[i]), n, n_boot=n_boot, seed=seed)),
        "mcc": _ci_dict(m, bootstrap_ci(lambda i: mcc(y_true[i], y_pred[i], n_classes), n, n_boot=n_boot, seed=seed)),
        "proteins": n,
    }


def value_scores(y_true: np.ndarray, y_pred: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Regression: Spearman ρ (headline, with CI), Pearson r, MSE."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    n = len(y_true)
    rho = spearman(y_true, y_pred)
    pearson = float(np.corrcoef(y_true, y_pred)[0, 1]) if n > 1 and y_true.std() and y_pred.std() else float("nan")
    return {
        "spearman": _ci_dict(rho, bootstrap_ci(lambda i: spearman(y_true[i], y_pred[i]), n, n_boot=n_boot, seed=seed)),
        "pearson": pearson,
        "mse": float(((y_true - y_pred) ** 2).mean()) if n else float("nan"),
        "proteins": n,
    }


def residue_value_scores(y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray], *, n_boot: int = N_BOOT,
                         seed: int = 0) -> dict:
    """Per-residue regression: Spearman ρ over all scored residues of the set (headline, with a
    bootstrap CI over proteins), Pearson r and MSE over residues; ``y_true[k]``/``y_pred[k]`` hold
    protein k's scored residues."""
    keep = [k for k, t in enumerate(y_true) if len(t)]
    t_list = [np.asarray(y_true[k], dtype=np.float64) for k in keep]
    p_list = [np.asarray(y_pred[k], dtype=np.float64) for k in keep]
    yt = np.concatenate(t_list) if t_list else np.zeros(0)
    yp = np.concatenate(p_list) if p_list else np.zeros(0)

    def rho(idx: np.ndarray) -> float:
        return spearman(np.concatenate([t_list[i] for i in idx]), np.concatenate([p_list[i] for i in idx]))

    pearson = float(np.corrcoef(yt, yp)[0, 1]) if yt.size > 1 and yt.std() and yp.std() else float("nan")
    return {
        "spearman": _ci_dict(spearman(yt, yp) if yt.size else float("nan"),
                             bootstrap_ci(rho, len(keep), n_boot=n_boot, seed=seed)),
        "pearson": pearson,
        "mse": float(((yt - yp) ** 2).mean()) if yt.size else float("nan"),
        "proteins": len(keep),
        "residues": int(yt.size),
    }
