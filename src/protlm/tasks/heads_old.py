"""The papers' small prediction heads, multi-task: one output per target, losses summed.

- :class:`ResidueCNN` — ProtTrans' per-residue predictor: a convolution (window 7) from the
  embedding down to 32 channels, ReLU, dropout, then one convolution (window 7) per target
  (3-state and 8-state secondary structure trained jointly).
- :class:`ProteinFFN` — ProtTrans' per-protein predictor: the mean-pooled embedding → one dense
  layer of 32 → one output per target (localization Q10 and membrane Q2 trained jointly).
- :class:`LightAttention` — Stärk et al. 2021 (the DeepLoc state of the art on embeddings): two
  convolutions (window 9) over the residues give values and attention logits; the
  attention-weighted sum and the max over residues are concatenated → dense 32 → outputs.
- :class:`LogisticRegression` — a linear layer on the embedding (per residue, or on the mean per
  protein): the floor every head must beat.

Every head takes ``x`` (B × L × D, zero-padded) and ``mask`` (B × L, 1 = residue) and returns a
list of logits, one per target: B × L × C for per-residue heads, B × C for per-protein heads.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class ResidueCNN(nn.Module):
    per_residue = True

    def __init__(self, dim: int, outputs: list[int], hidden: int = 32, kernel: int = 7, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(dim, hidden, kernel, padding=kernel // 2), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Conv1d(hidden, n, kernel, padding=kernel // 2) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        m = mask.unsqueeze(1).to(x.dtype)
        h = self.body(x.transpose(1, 2) * m) * m  # padding never leaks into real residues' windows
        return [head(h).transpose(1, 2) for head in self.heads]


class ProteinFFN(nn.Module):
    per_residue = False

    def __init__(self, dim: int, outputs: list[int], hidden: int = 32, dropout: float = 0.25, **_):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(masked_mean(x, mask))
        return [head(h) for head in self.heads]


class LightAttention(nn.Module):
    per_residue = False

    def __init__(self, dim: int, outputs: list[int], hidden: int = 32, kernel: int = 9, dropout: float = 0.25):
        super().__init__()
        self.values = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.attention = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.body = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.BatchNorm1d(hidden))
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        xt = x.transpose(1, 2)  # B × D × L
        v = self.dropout(self.values(xt))
        a = self.attention(xt)
        pad = ~mask.bool().unsqueeze(1)
        a = a.masked_fill(pad, float("-inf"))
        pooled = (v * torch.softmax(a, dim=-1)).sum(-1)
        maxed = v.masked_fill(pad, float("-inf")).max(dim=-1).values
        h = self.body(torch.cat([pooled, maxed], dim=-1))
        return [head(h) for head in self.heads]


class LogisticRegression(nn.Module):
    def __init__(self, dim: int, outputs: list[int], per_residue: bool, **_):
        super().__init__()
        self.per_residue = per_residue
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        h = x if self.per_residue else masked_mean(x, mask)
        return [head(h) for head in self.heads]


DEFAULT_KERNEL = {"cnn": 7, "light_attention": 9}


def build_head(kind: str, dim: int, outputs: list[int], *, per_residue: bool, hidden: int = 32, kernel: int = 0,
               dropout: float = 0.25) -> nn.Module:
    """A head by name (``cnn``, ``ffn``, ``light_attention``, ``logreg``); ``kernel`` 0: its default."""
    kernel = kernel or DEFAULT_KERNEL.get(kind, 0)
    if kind == "cnn":
        return ResidueCNN(dim, outputs, hidden, kernel, dropout)
    if kind == "ffn":
        return ProteinFFN(dim, outputs, hidden, dropout)
    if kind == "light_attention":
        return LightAttention(dim, outputs, hidden, kernel, dropout)
    if kind == "logreg":
        return LogisticRegression(dim, outputs, per_residue)
    raise ValueError(f"unknown head {kind!r}")
