"""Prediction heads: one file per head, each registering itself (:mod:`.base`).

The papers' heads — ProtTrans' CNN (:mod:`.cnn`) and FFN (:mod:`.ffn`), light attention
(:mod:`.light_attention`), logistic regression (:mod:`.logreg`) — and the contact heads: the
pair MLP (:mod:`.pair_mlp`), the 2-D ResNet (:mod:`.resnet2d`) and ESM's attention regression
(:mod:`.attention_lr`). Every module of this package is imported here, so a new head is one new
file (docs/architecture.md, "A new head").
"""

from __future__ import annotations

import importlib
import pkgutil

from protlm.tasks.heads.base import (FittedPairHead, HeadConfig, HeadEntry, PairHead, Standardize, build_head_config,
                                     get_head, head_names, heads_for, make_head, masked_mean, register_head)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


def build_head(kind: str, dim: int, outputs: list[int], *, per_residue: bool, **settings):
    """A residue/protein head by name with settings as keywords (``kernel`` 0: the head's default)."""
    entry = get_head(kind)
    names = {f for f in entry.config.__dataclass_fields__}
    cfg = entry.config(type=kind, **{k: v for k, v in settings.items() if k in names})
    return entry.factory(cfg, dim, outputs, "residue" if per_residue else "protein")


__all__ = ["FittedPairHead", "HeadConfig", "HeadEntry", "PairHead", "Standardize", "build_head", "build_head_config",
           "get_head", "head_names", "heads_for", "make_head", "masked_mean", "register_head"]
