"""Unsupervised contacts from a protein LM's attention maps (Rao et al. 2021, the ESM recipe).

Every layer × head of a transformer gives an attention map. ESM found that a sparse logistic
regression over those maps, fit on as few as 20 proteins, reads contacts out of them. The steps,
as in ESM's ``ContactPredictionHead``:

1. one forward pass with eager attention and ``output_attentions=True`` (SDPA/flash kernels do
   not return the maps);
2. keep only residue rows/columns (drop ``<cls>``/``<eos>``, ``[CLS]``/``[SEP]``, ``</s>`` —
   :func:`protlm.models.families.token_layout` knows where they are for every family);
3. symmetrise each map (A + Aᵀ) and apply the average product correction
   (APC: F − F_i· F_·j / F_··), which removes the per-residue background;
4. each pair (i, j) becomes a feature vector of length layers × heads, and a logistic
   regression maps it to a contact probability.

Choices (documented in docs/contacts.md): the features are standardised with the training set's
mean and spread before the regression, so that one regularisation strength ``C`` works across
models whose attention scales differ (ESM fit raw features; with standardisation the weights stay
comparable across heads). The penalty is L1 by default, as ESM's; ``penalty: l2`` is offered.
Training uses pairs with |i − j| ≥ 6 of a few dozen chains, subsampled to ``max_pairs`` so the fit
stays small for models with hundreds of heads.
"""

from __future__ import annotations

import logging

import numpy as np

from protlm.tasks.contacts.data import Chain, contact_map, scored_pairs
from protlm.embed.backends.hf import HFBackend
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError
from protlm.io.progress import progress_iter

log = logging.getLogger("protlm.tasks")

def load_lm(spec: str, *, seed: int = 0) -> HFBackend:
    """A protein LM (any Hugging Face family protlm knows) as its embedder backend with eager
    attention, on the CPU: the maps come from the backend's one forward
    (``forward_tokens(attentions=True)``), the same call that embeds and fine-tunes.

    ``random-init:PATH`` builds the model of PATH's config with random weights (torch seed
    ``seed``): the floor that shows how much of a result comes from training rather than from the
    architecture and the APC/regression pipeline.
    """
    return HFBackend(spec, EmbedOptions(device="cpu", seed=seed), attention="eager")


def apc(x: np.ndarray) -> np.ndarray:
    """Average product correction over the last two axes (ESM's ``apc``)."""
    a1 = x.sum(-1, keepdims=True)
    a2 = x.sum(-2, keepdims=True)
    a12 = x.sum((-1, -2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(a12 != 0, a1 * a2 / np.where(a12 != 0, a12, 1), 0.0)
    return x - corr


def symmetrize_apc(maps: np.ndarray) -> np.ndarray:
    """C × L × L attention maps → symmetrised, APC-corrected maps (float32)."""
    maps = maps.astype(np.float32, copy=False)
    return apc(maps + np.swapaxes(maps, -1, -2)).astype(np.float32, copy=False)


def attention_maps(lm: HFBackend, sequence: str) -> np.ndarray:
    """Raw attention maps of every layer × head for the residues: (layers·heads) × L × L."""
    import torch

    if lm.max_residues and len(sequence) > lm.max_residues:
        raise InputError(f"a sequence of {len(sequence)} residues is longer than {lm.source}'s position limit "
                         f"({lm.max_residues}); attention maps need one window over the whole protein")
    if (lm.layout.encode(sequence) < 0).any():
        bad = sorted({c for c in sequence if lm.layout.lut[ord(c)] < 0})
        raise InputError(f"residues {''.join(bad)!r} are not in {lm.source}'s vocabulary")
    try:
        with torch.inference_mode():
            maps = lm.forward_tokens([sequence], attentions=True).attentions
    except ConfigError:
        raise InputError(f"{lm.source} does not return attention maps (output_attentions) in eager mode") from None
    return maps[0].float().numpy()


def attention_features(lm: HFBackend, chain: Chain) -> np.ndarray:
    """L × L × C pair features for the chain's structure stretch (the LM reads the full sequence)."""
    seq = chain.model_input
    feats = symmetrize_apc(attention_maps(lm, seq))
    if chain.full_seq is not None:
        o, n = chain.offset, len(chain)
        feats = feats[:, o:o + n, o:o + n]
    return np.ascontiguousarray(np.moveaxis(feats, 0, -1))


def training_pairs(lm: HFBackend, chains: list[Chain], *, min_separation: int = 6, max_pairs: int | None = None,
                   seed: int = 0, threshold: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and labels of every scored pair (i < j, |i − j| ≥ min_sep) of the chains, subsampled."""
    xs, ys = [], []
    for chain in progress_iter(chains, "attention maps (fit)", unit="chains"):
        feats = attention_features(lm, chain)
        contacts, observed = contact_map(chain.ca, chain.cb, threshold)
        mask = np.triu(scored_pairs(observed, min_separation))
        xs.append(feats[mask])
        ys.append(contacts[mask])
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    if max_pairs is not None and len(y) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), size=max_pairs, replace=False))
        x, y = x[keep], y[keep]
    return x, y


class AttentionLogReg:
    """Standardise → logistic regression over the layers × heads features of a pair."""

    def __init__(self, n_features: int, *, C: float = 0.15, penalty: str = "l1", max_iter: int = 1000):
        if penalty not in ("l1", "l2"):
            raise ConfigError(f"head.penalty must be l1 or l2, not {penalty!r}")
        if not C > 0:
            raise ConfigError(f"head.C must be positive, not {C!r}")
        self.n_features = n_features
        self.C = float(C)
        self.penalty = penalty
        self.max_iter = int(max_iter)
        self.mean = np.zeros(n_features, dtype=np.float64)
        self.scale = np.ones(n_features, dtype=np.float64)
        self.coef = np.zeros(n_features, dtype=np.float64)
        self.intercept = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> "AttentionLogReg":
        from sklearn.linear_model import LogisticRegression

        if y.all() or not y.any():
            raise InputError("the training chains hold only one class of pairs (no contacts, or only contacts); "
                             "use more or longer chains")
        x = x.astype(np.float64)
        self.mean = x.mean(0)
        sd = x.std(0)
        self.scale = np.where(sd > 0, sd, 1.0)
        z = (x - self.mean) / self.scale
        clf = LogisticRegression(C=self.C, l1_ratio=1.0 if self.penalty == "l1" else 0.0, solver="liblinear",
                                 max_iter=self.max_iter, random_state=seed)
        clf.fit(z, y.astype(np.int64))
        self.coef = clf.coef_[0].astype(np.float64)
        self.intercept = float(clf.intercept_[0])
        return self

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        """L × L × C features → L × L contact probabilities (symmetric when the features are)."""
        w = self.coef / self.scale
        b = self.intercept - float((self.mean * w).sum())
        logits = feats.astype(np.float64) @ w + b
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    # ---------------------------------------------------------------- persistence

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                "coef": self.coef.astype(np.float32), "intercept": np.array([self.intercept], dtype=np.float32)}

    def hparams(self) -> dict:
        return {"C": self.C, "penalty": self.penalty, "max_iter": self.max_iter}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], hparams: dict) -> "AttentionLogReg":
        obj = cls(len(state["coef"]), **hparams)
        obj.mean = state["mean"].astype(np.float64)
        obj.scale = state["scale"].astype(np.float64)
        obj.coef = state["coef"].astype(np.float64)
        obj.intercept = float(state["intercept"][0])
        return obj

    def top_maps(self, lm: HFBackend, k: int = 5) -> list[dict]:
        """The layer/head maps with the largest weights: which heads carry contact information."""
        order = np.argsort(-np.abs(self.coef))[:k]
        return [{"layer": int(c // lm.heads), "head": int(c % lm.heads), "weight": float(self.coef[c])}
                for c in order if self.coef[c] != 0]
