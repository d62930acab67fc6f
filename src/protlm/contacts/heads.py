"""Supervised contact heads on per-residue embeddings, and their training loop.

Two heads, both reading an L × D embedding (standardised per dimension with the training set's
mean and spread, so LM, one-hot and BLOSUM inputs start on the same footing) and writing an
L × L map of contact logits:

- :class:`PairMLP` — ProteinLM's pair head: the pair (i, j), i < j, becomes
  ``[e_i, e_j, |e_i − e_j|, e_i ⊙ e_j]`` (the last two are optional, ``features``) → one hidden
  layer → a logit. Pairs are always ordered N- to C-terminal and the map is mirrored, so the
  prediction is symmetric by construction. The first layer is applied blockwise (the ``e_i`` and
  ``e_j`` parts once per residue, only the |difference| and product parts per pair), and maps
  are computed in row blocks of at most ``pair_budget`` pairs, so memory stays bounded at any L.
- :class:`ResNet2D` — TAPE-style: a linear projection to ``proj`` channels, the outer
  concatenation ``[a_i, a_j, a_i ⊙ a_j]`` as a 3·proj-channel image, a 1×1 convolution to
  ``channels``, ``blocks`` residual blocks (two dilated 3×3 convolutions each, dilations 1, 2,
  4, 8, …) and a 1×1 convolution to one logit, symmetrised as (Z + Zᵀ)/2. It sees the whole map
  at once (the convolutions' receptive field), so its memory grows as channels · L². The second
  convolution of each block starts at zero (blocks start as the identity) and the output bias at
  the base rate's log-odds: without that, the first short run trained too slowly to beat chance.

Training (:func:`fit_head`): binary cross-entropy on every pair with |i − j| ≥ 6 whose residues
both have coordinates. Chains longer than ``crop`` are cut to a random ``crop``-residue window
each epoch (ESM/trRosetta practice; evaluation always uses the full length). Crops are grouped
into optimisation steps by a budget of pairs (at most ``batch_size`` crops). After every epoch
the head is scored on validation chains; the best epoch by **P@L/5 long range** (the headline
metric) is kept, and training stops after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from protlm.errors import ConfigError

log = logging.getLogger("protlm.contacts")

PAIR_FEATURES = ("concat", "absdiff", "product")
#: Initial output bias of the ResNet: the log-odds of a ~3% contact rate among scored pairs, so
#: training starts from the base rate instead of spending its first steps learning it.
PRIOR_LOGIT = -3.5


class Standardize(nn.Module):
    """Per-dimension (x − mean) / std with statistics fixed at training time (saved with the head)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, embeddings: list[np.ndarray]) -> None:
        x = np.concatenate(embeddings).astype(np.float64)
        sd = x.std(0)
        self.mean.copy_(torch.from_numpy(x.mean(0)).float())
        self.std.copy_(torch.from_numpy(np.where(sd > 1e-6, sd, 1.0)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PairMLP(nn.Module):
    """ProteinLM's pair head: [e_i, e_j (, |e_i − e_j|, e_i ⊙ e_j)] → hidden → logit."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.1,
                 features: tuple[str, ...] | list[str] = PAIR_FEATURES):
        super().__init__()
        features = tuple(features)
        if "concat" not in features or any(f not in PAIR_FEATURES for f in features):
            raise ConfigError(f"head.features must include concat and be drawn from {list(PAIR_FEATURES)}, "
                              f"not {list(features)}")
        if hidden < 1:
            raise ConfigError("head.hidden must be a positive integer")
        self.features = features
        self.norm = Standardize(dim)
        self.left = nn.Linear(dim, hidden)
        self.right = nn.Linear(dim, hidden, bias=False)
        self.diff = nn.Linear(dim, hidden, bias=False) if "absdiff" in features else None
        self.prod = nn.Linear(dim, hidden, bias=False) if "product" in features else None
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def pair_logits(self, e: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Logits of the pairs (i[k], j[k]) of one L × D (standardised) embedding."""
        h = self.left(e)[i] + self.right(e)[j]
        if self.diff is not None:
            h = h + self.diff((e[i] - e[j]).abs())
        if self.prod is not None:
            h = h + self.prod(e[i] * e[j])
        return self.out(self.drop(torch.relu(h))).squeeze(-1)

    def forward(self, emb: torch.Tensor, pair_budget: int = 1 << 17) -> torch.Tensor:
        """L × D embedding → L × L logits: pairs i ≤ j in row blocks of ≤ ``pair_budget`` pairs, then mirrored."""
        e = self.norm(emb)
        n = e.shape[0]
        out = torch.zeros(n, n, dtype=torch.float32)
        left, right = self.left(e), self.right(e)
        a = 0
        while a < n:
            # rows a..b-1 need only columns j >= a (the map is mirrored from i < j)
            b = min(n, a + max(1, pair_budget // (n - a)))
            h = left[a:b, None, :] + right[None, a:, :]
            if self.diff is not None:
                h = h + self.diff((e[a:b, None, :] - e[None, a:, :]).abs())
            if self.prod is not None:
                h = h + self.prod(e[a:b, None, :] * e[None, a:, :])
            out[a:b, a:] = self.out(self.drop(torch.relu(h))).squeeze(-1)
            a = b
        upper = torch.triu(out, diagonal=1)
        return upper + upper.T + torch.diag(torch.diagonal(out))


class _Block(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        pad = dilation * (kernel // 2)
        self.c1 = nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation)
        self.c2 = nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation)
        nn.init.zeros_(self.c2.weight)  # each block starts as the identity: a deep stack trains from step one
        nn.init.zeros_(self.c2.bias)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(self.drop(torch.relu(self.c1(torch.relu(x)))))


class ResNet2D(nn.Module):
    """TAPE-style 2-D ResNet over outer-concatenated, projected residue embeddings."""

    def __init__(self, dim: int, proj: int = 32, channels: int = 32, blocks: int = 4, kernel: int = 3,
                 dropout: float = 0.1):
        super().__init__()
        if min(proj, channels, blocks) < 1 or kernel < 1 or kernel % 2 == 0:
            raise ConfigError("head.proj, head.channels, head.blocks must be positive and head.kernel a positive odd "
                              "integer")
        self.norm = Standardize(dim)
        self.proj = nn.Linear(dim, proj)
        self.inp = nn.Conv2d(3 * proj, channels, 1)
        self.blocks = nn.ModuleList(_Block(channels, kernel, 2 ** (k % 4), dropout) for k in range(blocks))
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)

    def forward(self, emb: torch.Tensor, pair_budget: int | None = None) -> torch.Tensor:
        """L × D → L × L symmetric logits (the whole map at once; ``pair_budget`` is not used here)."""
        a = self.proj(self.norm(emb))  # L × p
        n = a.shape[0]
        ai = a[:, None, :].expand(n, n, -1)
        aj = a[None, :, :].expand(n, n, -1)
        x = torch.cat([ai, aj, ai * aj], dim=-1).permute(2, 0, 1)[None]  # 1 × 3p × L × L
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        z = self.out(torch.relu(x))[0, 0]
        return (z + z.T) / 2


HEADS = {"pair_mlp": PairMLP, "resnet2d": ResNet2D}


def build_head(kind: str, dim: int, hparams: dict) -> nn.Module:
    if kind not in HEADS:
        raise ConfigError(f"head.type {kind!r} is not a supervised contact head ({', '.join(HEADS)})")
    try:
        return HEADS[kind](dim, **hparams)
    except TypeError as exc:
        raise ConfigError(f"head: {exc}".replace("__init__() ", "")) from None


# --------------------------------------------------------------------------- training


@dataclass
class TrainOptions:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8  # crops per optimisation step, at most
    pair_budget: int = 131072  # pairs per optimisation step (sum of crop² / 2), at most
    crop: int = 256  # residues; longer training chains are cut to a random window each epoch
    patience: int = 3  # epochs without a better validation P@L/5 (long) before stopping
    seed: int = 0

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "pair_budget", "crop", "patience"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"train.{key} must be a positive integer, not {value!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError("train.lr must be positive and train.weight_decay non-negative")


@dataclass
class Example:
    """One training/validation chain: its embedding (stretch rows), contact map and scored-pair mask."""

    id: str
    emb: np.ndarray  # L × D float32
    contacts: np.ndarray  # L × L bool
    observed: np.ndarray  # L bool
    mask: np.ndarray = field(repr=False, default=None)  # L × L bool: scored pairs


def _crops(examples: list[Example], crop: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    out = []
    for k in rng.permutation(len(examples)):
        n = len(examples[k].emb)
        start = int(rng.integers(0, n - crop + 1)) if n > crop else 0
        out.append((int(k), start, min(n, start + crop)))
    return out


def _steps(crops: list[tuple[int, int, int]], opts: TrainOptions) -> list[list[tuple[int, int, int]]]:
    steps, cur, pairs = [], [], 0
    for c in crops:
        p = (c[2] - c[1]) ** 2 // 2
        if cur and (pairs + p > opts.pair_budget or len(cur) >= opts.batch_size):
            steps.append(cur)
            cur, pairs = [], 0
        cur.append(c)
        pairs += p
    if cur:
        steps.append(cur)
    return steps


def predict_map(head: nn.Module, emb: np.ndarray, pair_budget: int = 1 << 17) -> np.ndarray:
    """L × L contact probabilities for one embedding (eval mode, no gradients)."""
    head.eval()
    with torch.inference_mode():
        return torch.sigmoid(head(torch.from_numpy(np.asarray(emb, dtype=np.float32)), pair_budget)).numpy()


def validation_score(head: nn.Module, examples: list[Example], pair_budget: int) -> float:
    """Mean P@L/5 long-range over the examples: the early-stopping criterion."""
    from protlm.contacts.metrics import precision_at

    vals = [precision_at(predict_map(head, ex.emb, pair_budget), ex.contacts, ex.observed, rng="long", divisor=5)
            for ex in examples]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else 0.0


def fit_head(head: nn.Module, train: list[Example], valid: list[Example], opts: TrainOptions,
             pair_budget_eval: int = 1 << 17) -> dict:
    """Train with BCE on scored pairs, early stopping on validation P@L/5 long; loads the best state."""
    from tqdm import tqdm

    opts.validate()
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    head.norm.set_stats([ex.emb for ex in train])
    optim = torch.optim.AdamW(head.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    best, best_state, best_epoch, since = -math.inf, None, 0, 0
    history = []
    t0 = time.time()
    for epoch in range(1, opts.epochs + 1):
        head.train()
        steps = _steps(_crops(train, opts.crop, rng), opts)
        total, count = 0.0, 0
        for step in tqdm(steps, desc=f"epoch {epoch}", file=sys.stderr, disable=None, leave=False, dynamic_ncols=True):
            optim.zero_grad()
            n_pairs = 0
            losses = []
            for k, a, b in step:
                ex = train[k]
                m = torch.from_numpy(np.triu(ex.mask[a:b, a:b]))
                if not m.any():
                    continue
                y = torch.from_numpy(ex.contacts[a:b, a:b])[m].float()
                emb = torch.from_numpy(ex.emb[a:b])
                if isinstance(head, PairMLP):
                    i, j = torch.nonzero(m, as_tuple=True)
                    logits = head.pair_logits(head.norm(emb), i, j)
                else:
                    logits = head(emb)[m]
                losses.append(nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
                n_pairs += len(y)
            if not losses:
                continue
            loss = torch.stack(losses).sum() / n_pairs
            loss.backward()
            optim.step()
            total += float(loss.detach()) * n_pairs
            count += n_pairs
        score = validation_score(head, valid, pair_budget_eval)
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), "valid_p_at_l5_long": score,
                        "seconds": time.time() - t0})
        log.info("epoch %d: train loss %.4f, validation P@L/5 long %.4f", epoch, total / max(count, 1), score)
        print(f"epoch {epoch}: train loss {total / max(count, 1):.4f}  validation P@L/5 (long) {score:.4f}",
              file=sys.stderr)
        if score > best:
            best, best_state, best_epoch, since = score, copy.deepcopy(head.state_dict()), epoch, 0
        else:
            since += 1
            if since >= opts.patience:
                break
    head.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "best_valid_p_at_l5_long": best, "epochs_run": len(history),
            "history": history, "seconds": time.time() - t0,
            "early_stopping": "validation P@L/5, long range (>=24), mean over validation chains"}
