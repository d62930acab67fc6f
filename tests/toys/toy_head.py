"""A toy head in one file: ``mean_max`` — the masked mean and the masked max over residues,
concatenated, scaled, then one linear layer per target. A per-protein head that reads residues.

Importing this file registers the head with its own Config; nothing else in protlm is changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protlm.errors import ConfigError
from protlm.tasks.heads import HeadConfig, masked_mean, register_head


@dataclass
class Config(HeadConfig):
    type: str = "mean_max"
    scale: float = 1.0

    def validate(self) -> None:
        if not self.scale > 0:
            raise ConfigError(f"config head.scale: must be positive, not {self.scale}")


class MeanMax(nn.Module):
    def __init__(self, dim: int, outputs: list[int], scale: float):
        super().__init__()
        self.scale = scale
        self.heads = nn.ModuleList(nn.Linear(2 * dim, n) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        maxed = x.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(dim=1).values
        h = torch.cat([masked_mean(x, mask), maxed], dim=-1) * self.scale
        return [head(h) for head in self.heads]


@register_head("mean_max", config=Config, levels=("protein",), input="residues",
               help="toy: mean and max over residues → linear")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return MeanMax(dim, outputs, cfg.scale)
