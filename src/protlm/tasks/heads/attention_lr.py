"""ESM's unsupervised contact head: a logistic regression over the symmetrised, APC-corrected
attention maps of every layer × head of an LM (:mod:`protlm.tasks.contacts.attention`), fit in
closed form (scikit-learn's liblinear) on a few dozen training chains — no training loop. It reads
attention maps, not embeddings (``input="attention"``). The fitted standardisation and weights are
kept as float64 buffers, so a reloaded head predicts exactly what the fitted one did."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from protlm.tasks.contacts.attention import AttentionLogReg
from protlm.tasks.heads.base import FittedPairHead, HeadConfig, need, register_head


@dataclass
class Config(HeadConfig):
    type: str = "attention_lr"
    C: float = 0.15  # inverse regularisation strength
    penalty: str = "l1"  # l1 (ESM) | l2
    max_iter: int = 1000
    max_pairs: int = 200000  # training pairs (a seeded subsample)

    def validate(self) -> None:
        need(self.penalty in ("l1", "l2"), "head.penalty", f"must be l1 or l2, not {self.penalty!r}")
        need(self.C > 0, "head.C", f"must be positive, not {self.C!r}")
        need(self.max_iter >= 1 and self.max_pairs >= 1, "head.max_pairs", "max_iter and max_pairs must be >= 1")


class AttentionLR(FittedPairHead):
    """The fitted regression as buffers (mean, scale, coef, intercept), float64."""

    def __init__(self, n_features: int, cfg: Config):
        super().__init__()
        self.hparams = {"C": cfg.C, "penalty": cfg.penalty, "max_iter": cfg.max_iter}
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("coef", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> AttentionLogReg:
        lr = AttentionLogReg(x.shape[1], **self.hparams).fit(x, y, seed=seed)
        for name in ("mean", "scale", "coef"):
            getattr(self, name).copy_(torch.from_numpy(np.asarray(getattr(lr, name), dtype=np.float64)))
        self.intercept.fill_(lr.intercept)
        return lr

    def regression(self) -> AttentionLogReg:
        state = {k: getattr(self, k).numpy() for k in ("mean", "scale", "coef", "intercept")}
        return AttentionLogReg.from_state(state, self.hparams)


@register_head("attention_lr", config=Config, levels=("pair",), input="attention",
               help="ESM's logistic regression on APC-corrected attention maps")
def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module:
    return AttentionLR(dim, cfg)
