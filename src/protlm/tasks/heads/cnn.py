"""ProtTrans' per-residue CNN: a convolution (window 7) from the embedding down to 32 channels,
ReLU, dropout, then one convolution (window 7) per target (Q3 and Q8 trained jointly)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protlm.tasks.heads.base import ConvHeadConfig, register_head


@dataclass
class Config(ConvHeadConfig):
    type: str = "cnn"
    hidden: int = 32  # the paper's 32 channels
    kernel: int = 7  # convolution window (odd); 0: the default, 7


class ResidueCNN(nn.Module):
    def __init__(self, dim: int, outputs: list[int], hidden: int = 32, kernel: int = 7, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(dim, hidden, kernel, padding=kernel // 2), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Conv1d(hidden, n, kernel, padding=kernel // 2) for n in outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        m = mask.unsqueeze(1).to(x.dtype)
        h = self.body(x.transpose(1, 2) * m) * m  # padding never leaks into real residues' windows
        return [head(h).transpose(1, 2) for head in self.heads]


@register_head("cnn", config=Config, levels=("residue",), input="residues",
               help="ProtTrans' per-residue CNN (window 7, 32 channels)")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return ResidueCNN(dim, outputs, cfg.hidden, cfg.kernel or 7, cfg.dropout)
