"""TAPE-style 2-D ResNet contact head: a linear projection to ``proj`` channels, the outer
concatenation ``[a_i, a_j, a_i ⊙ a_j]`` as a 3·proj-channel image, a 1×1 convolution to
``channels``, ``blocks`` residual blocks (two dilated 3×3 convolutions each, dilations 1, 2, 4,
8, …) and a 1×1 convolution to one logit, symmetrised as (Z + Zᵀ)/2. It sees the whole map at
once (the convolutions' receptive field), so its memory grows as channels · L². The second
convolution of each block starts at zero (blocks start as the identity) and the output bias at
the base rate's log-odds: without that, the first short run trained too slowly to beat chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protlm.tasks.heads.base import HeadConfig, PairHead, Standardize, need, register_head

#: Initial output bias: the log-odds of a ~3% contact rate among scored pairs, so training
#: starts from the base rate instead of spending its first steps learning it.
PRIOR_LOGIT = -3.5


@dataclass
class Config(HeadConfig):
    type: str = "resnet2d"
    proj: int = 32
    channels: int = 32
    blocks: int = 4
    kernel: int = 3
    dropout: float = 0.1

    def validate(self) -> None:
        need(min(self.proj, self.channels, self.blocks) >= 1 and self.kernel >= 1 and self.kernel % 2 == 1,
             "head", "head.proj, head.channels, head.blocks must be positive and head.kernel a positive odd integer")
        need(0 <= self.dropout < 1, "head.dropout", "must be in [0, 1)")


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


class ResNet2D(PairHead):
    """TAPE-style 2-D ResNet over outer-concatenated, projected residue embeddings."""

    def __init__(self, dim: int, proj: int = 32, channels: int = 32, blocks: int = 4, kernel: int = 3,
                 dropout: float = 0.1):
        super().__init__()
        self.norm = Standardize(dim)
        self.proj = nn.Linear(dim, proj)
        self.inp = nn.Conv2d(3 * proj, channels, 1)
        self.blocks = nn.ModuleList(_Block(channels, kernel, 2 ** (k % 4), dropout) for k in range(blocks))
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)
        # channels_last weights and maps: a training step ×1.04-1.17 faster on one AVX2 core than NCHW
        # (benchmarks/bench_resnet_step.py, docs/benchmarks.md); the same numbers up to rounding
        self.to(memory_format=torch.channels_last)

    def train_logits(self, emb: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self(emb)[m]

    def forward(self, emb: torch.Tensor, pair_budget: int | None = None) -> torch.Tensor:
        """L × D → L × L symmetric logits (the whole map at once; ``pair_budget`` is not used here)."""
        a = self.proj(self.norm(emb))  # L × p
        n = a.shape[0]
        ai = a[:, None, :].expand(n, n, -1)
        aj = a[None, :, :].expand(n, n, -1)
        x = torch.cat([ai, aj, ai * aj], dim=-1).permute(2, 0, 1)[None]  # 1 × 3p × L × L
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        z = self.out(torch.relu(x))[0, 0]
        return (z + z.T) / 2


@register_head("resnet2d", config=Config, levels=("pair",), input="residues",
               help="TAPE-style 2-D ResNet over outer-concatenated residue embeddings")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return ResNet2D(dim, cfg.proj, cfg.channels, cfg.blocks, cfg.kernel, cfg.dropout)
