"""ProtTrans' per-protein FFN: the mean-pooled embedding → one dense layer of 32 → one output per
target (Q10 and Q2 trained jointly)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protlm.tasks.heads.base import HeadConfig, masked_mean, need, register_head


@dataclass
class Config(HeadConfig):
    type: str = "ffn"
    hidden: int = 32
    dropout: float = 0.25

    def validate(self) -> None:
        need(self.hidden >= 1, "head.hidden", "must be >= 1")
        need(0 <= self.dropout < 1, "head.dropout", "must be in [0, 1)")


class ProteinFFN(nn.Module):
    def __init__(self, dim: int, outputs: list[int], hidden: int = 32, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(masked_mean(x, mask))
        return [head(h) for head in self.heads]


@register_head("ffn", config=Config, levels=("protein",), input="any", legacy_keys={"kernel": 0},
               help="ProtTrans' per-protein FFN on the mean (32 units)")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return ProteinFFN(dim, outputs, cfg.hidden, cfg.dropout)
