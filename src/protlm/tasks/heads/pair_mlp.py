"""ProteinLM's contact head: the pair (i, j), i < j, becomes ``[e_i, e_j, |e_i − e_j|, e_i ⊙ e_j]``
(the last two optional, ``features``) → one hidden layer → a logit.

The embedding is standardised per dimension with the training set's mean and spread
(:class:`~protlm.tasks.heads.base.Standardize`), so LM, one-hot and BLOSUM inputs start on the same
footing. Pairs are always ordered N- to C-terminal and the map is mirrored, so the prediction is
symmetric by construction. The first layer is applied blockwise (the ``e_i`` and ``e_j`` parts once
per residue, only the |difference| and product parts per pair), in blocks of rows against the
columns to their right, by broadcasting: no per-pair gather of e_i and e_j (a training step on a
256-residue crop of UniRep-1900 ×2.1 faster than pair by pair on a quiet CPU, ``benchmarks/bench_pair_mlp_train.py``;
docs/benchmarks.md), and memory stays bounded at any L.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from protlm.tasks.heads.base import HeadConfig, PairHead, Standardize, need, register_head

PAIR_FEATURES = ("concat", "absdiff", "product")
#: Pairs per block of rows: a block's pairs × D intermediates stay a few MB per 100 input
#: dimensions (4 to 16 rows of a 256-residue crop measured fastest; 64 rows 1.4× slower at D = 1900).
BLOCK_PAIRS = 4096


@dataclass
class Config(HeadConfig):
    type: str = "pair_mlp"
    hidden: int = 128
    dropout: float = 0.1
    features: list[str] = field(default_factory=lambda: list(PAIR_FEATURES))

    def validate(self) -> None:
        need(self.hidden >= 1, "head.hidden", "must be a positive integer")
        need(0 <= self.dropout < 1, "head.dropout", "must be in [0, 1)")
        need("concat" in self.features and all(f in PAIR_FEATURES for f in self.features), "head.features",
             f"must include concat and be drawn from {list(PAIR_FEATURES)}, not {list(self.features)}")


class PairMLP(PairHead):
    """ProteinLM's pair head: [e_i, e_j (, |e_i − e_j|, e_i ⊙ e_j)] → hidden → logit."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.1,
                 features: tuple[str, ...] | list[str] = PAIR_FEATURES):
        super().__init__()
        self.features = tuple(features)
        self.norm = Standardize(dim)
        self.left = nn.Linear(dim, hidden)
        self.right = nn.Linear(dim, hidden, bias=False)
        self.diff = nn.Linear(dim, hidden, bias=False) if "absdiff" in self.features else None
        self.prod = nn.Linear(dim, hidden, bias=False) if "product" in self.features else None
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def pair_logits(self, e: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Logits of the pairs (i[k], j[k]) of one L × D (standardised) embedding: the head's
        definition, pair by pair (the other methods compute the same in blocks)."""
        h = self.left(e)[i] + self.right(e)[j]
        if self.diff is not None:
            h = h + self.diff((e[i] - e[j]).abs())
        if self.prod is not None:
            h = h + self.prod(e[i] * e[j])
        return self.out(self.drop(torch.relu(h))).squeeze(-1)

    def _block(self, e: torch.Tensor, left: torch.Tensor, right: torch.Tensor, a: int, b: int,
               c: int) -> torch.Tensor:
        """Logits of the pairs (rows a..b-1) × (columns c..L-1), (b − a) × (L − c), by broadcasting."""
        ea, ec = e[a:b, None, :], e[None, c:, :]
        h = left[a:b, None, :] + right[None, c:, :]
        if self.diff is not None:
            h = h + self.diff((ea - ec).abs())
        if self.prod is not None:
            h = h + self.prod(ea * ec)
        return self.out(self.drop(torch.relu(h))).squeeze(-1)

    def train_logits(self, emb: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Logits of the scored pairs ``m`` (L × L bool, upper triangle) of one crop, in the order
        of ``m.nonzero()`` (row-major); each block of rows is computed from its first scored column."""
        e = self.norm(emb)
        left, right = self.left(e), self.right(e)
        n = e.shape[0]
        step = max(1, BLOCK_PAIRS // n)
        parts = []
        for a in range(0, n, step):
            block = m[a:a + step]
            cols = torch.nonzero(block.any(dim=0))
            if len(cols):
                c = int(cols[0])
                parts.append(self._block(e, left, right, a, a + len(block), c)[block[:, c:]])
        return torch.cat(parts) if parts else e.new_zeros(0)

    def forward(self, emb: torch.Tensor, pair_budget: int = 1 << 17) -> torch.Tensor:
        """L × D embedding → L × L logits: pairs i ≤ j in row blocks of ≤ ``pair_budget`` (and
        ≤ :data:`BLOCK_PAIRS`) pairs, then mirrored."""
        e = self.norm(emb)
        n = e.shape[0]
        out = torch.zeros(n, n, dtype=torch.float32, device=e.device)
        left, right = self.left(e), self.right(e)
        a = 0
        while a < n:
            # rows a..b-1 need only columns j >= a (the map is mirrored from i < j)
            b = min(n, a + max(1, min(pair_budget, BLOCK_PAIRS) // (n - a)))
            out[a:b, a:] = self._block(e, left, right, a, b, a)
            a = b
        upper = torch.triu(out, diagonal=1)
        return upper + upper.T + torch.diag(torch.diagonal(out))


@register_head("pair_mlp", config=Config, levels=("pair",), input="residues",
               help="ProteinLM's pair MLP on [e_i, e_j, |e_i - e_j|, e_i * e_j]")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return PairMLP(dim, cfg.hidden, cfg.dropout, cfg.features)
