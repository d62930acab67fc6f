"""Light attention (Stärk et al. 2021, the DeepLoc state of the art on embeddings): two
convolutions (window 9) over the residues give values and attention logits; the attention-weighted
sum and the max over residues are concatenated → dense 32 → outputs. Reads per-residue embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protlm.tasks.heads.base import ConvHeadConfig, register_head


@dataclass
class Config(ConvHeadConfig):
    type: str = "light_attention"
    hidden: int = 32
    kernel: int = 9  # convolution window (odd); 0: the default, 9


class LightAttention(nn.Module):
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


@register_head("light_attention", config=Config, levels=("protein",), input="residues", min_batch=2,
               help="light attention over per-residue embeddings (Stärk et al. 2021)")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return LightAttention(dim, outputs, cfg.hidden, cfg.kernel or 9, cfg.dropout)
