"""Logistic (or linear) regression: one linear layer on the embedding — per residue for residue
protocols, on the mean per protein otherwise. The floor every head must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protlm.tasks.heads.base import HeadConfig, masked_mean, register_head


@dataclass
class Config(HeadConfig):
    type: str = "logreg"


class LogisticRegression(nn.Module):
    def __init__(self, dim: int, outputs: list[int], per_residue: bool):
        super().__init__()
        self.per_residue = per_residue
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        h = x if self.per_residue else masked_mean(x, mask)
        return [head(h) for head in self.heads]


@register_head("logreg", config=Config, levels=("residue", "protein"), input="any",
               legacy_keys={"hidden": 32, "kernel": 0, "dropout": 0.25},
               help="a linear layer per residue, or on the mean per protein")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return LogisticRegression(dim, outputs, per_residue=level == "residue")
