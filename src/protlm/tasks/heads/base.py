"""The head registry: every head is one file in this package that registers itself.

A head file defines its ``Config`` dataclass (the ``head:`` section of a task config, built by
:func:`protlm.configfile.build`, so an unknown key or a wrong type is one error naming the field)
and a factory, and registers both with :func:`register_head`::

    @dataclass
    class Config(HeadConfig):
        hidden: int = 32

    @register_head("my_head", config=Config, levels=("protein",), help="…")
    def build(cfg: Config, dim: int, outputs: list[int], level: str) -> nn.Module: ...

``levels`` says what the head predicts: ``residue`` (one output per residue), ``protein`` (one
per protein) or ``pair`` (an L × L map); a protocol takes every head whose levels include its
output level (:attr:`protlm.tasks.protocols.base.Protocol.output_level`). ``input`` says what the
head reads: ``residues`` (per-residue embeddings, never pooled), ``any`` (a per-protein head that
is given the mean-pooled embedding when the protocol allows it) or ``attention`` (an LM's
attention maps, not embeddings).

Residue and protein heads take ``x`` (B × L × D, zero-padded) and ``mask`` (B × L, 1 = residue)
and return a list of logits, one per target: B × L × C (residue) or B × C (protein).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from protlm.configfile import build
from protlm.errors import ConfigError

LEVELS = ("residue", "protein", "pair")
INPUTS = ("residues", "any", "attention")


@dataclass
class HeadConfig:
    type: str = ""

    def validate(self) -> None:
        """Checks beyond the field types; raise ConfigError naming ``head.<field>``."""


@dataclass
class ConvHeadConfig(HeadConfig):
    """Settings of the heads built on a 1-D convolution (CNN, light attention); each sets its defaults."""

    hidden: int = 32
    kernel: int = 0  # convolution window (odd); 0: the head's default
    dropout: float = 0.25

    def validate(self) -> None:
        need(self.hidden >= 1, "head.hidden", "must be >= 1")
        need(self.kernel == 0 or (self.kernel >= 1 and self.kernel % 2 == 1), "head.kernel",
             "must be 0 (the head's default) or a positive odd number")
        need(0 <= self.dropout < 1, "head.dropout", "must be in [0, 1)")


@dataclass
class HeadEntry:
    name: str
    config: type
    factory: Callable[..., Any]
    levels: tuple[str, ...]
    input: str = "any"
    min_batch: int = 1  # proteins a training batch needs (batch norm: 2); smaller batches are skipped
    help: str = ""
    legacy_keys: dict = dataclasses.field(default_factory=dict)  # keys old head.json files carry, ignored


_HEADS: dict[str, HeadEntry] = {}


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def register_head(name: str, *, config: type, levels: tuple[str, ...], input: str = "any", min_batch: int = 1,
                  help: str = "", legacy_keys: dict | None = None):
    """Decorator on a head factory ``f(cfg, dim, outputs, level) -> nn.Module`` (module docstring)."""
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or input not in INPUTS:
        raise ValueError(f"head {name}: levels must be drawn from {LEVELS} and input one of {INPUTS}")

    def deco(factory):
        old = _HEADS.get(name)
        if old is not None and _qualname(old.factory) != _qualname(factory):  # TAPE's registry refuses too
            raise ValueError(f"head {name!r} is registered already (by {_qualname(old.factory)}); choose another name")
        _HEADS[name] = HeadEntry(name, config, factory, tuple(levels), input, min_batch, help,
                                 dict(legacy_keys or {}))
        return factory

    return deco


def _plugins() -> None:
    from protlm.plugins import load_plugins

    load_plugins()


def head_names() -> list[str]:
    _plugins()
    return sorted(_HEADS)


def get_head(name: str) -> HeadEntry:
    _plugins()
    entry = _HEADS.get(name)
    if entry is None:
        from protlm.plugins import hint

        raise ConfigError(f"config head.type: unknown head {name!r}; choose one of {head_names()}{hint()}")
    return entry


def heads_for(level: str) -> list[str]:
    _plugins()
    return [n for n, e in sorted(_HEADS.items()) if level in e.levels]


def build_head_config(tree: Any, protocol, where: str = "head") -> HeadConfig:
    """The ``head:`` section as the head's own Config; the head must fit the protocol."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config {where}: must be a mapping with type and the head's settings, not {tree!r}")
    tree = dict(tree)
    kind = tree.get("type") or protocol.default_head
    _plugins()
    allowed = protocol.head_names()
    if kind not in _HEADS or kind not in allowed:
        raise ConfigError(f"config {where}.type: {kind!r} does not fit {protocol.name}; choose one of {allowed}")
    entry = _HEADS[kind]
    fields = {f.name for f in dataclasses.fields(entry.config)}
    for key, value in entry.legacy_keys.items():  # written by older versions for every head type
        if key in tree and key not in fields and tree[key] == value:
            del tree[key]
    tree["type"] = kind
    cfg = build(entry.config, tree, where)
    cfg.validate()
    return cfg


def make_head(cfg: HeadConfig, dim: int, outputs: list[int], level: str) -> torch.nn.Module:
    return get_head(cfg.type).factory(cfg, dim, outputs, level)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config {where}: {msg}")


class Standardize(torch.nn.Module):
    """Per-dimension (x − mean) / std with statistics fixed at training time (saved with the head)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, embeddings) -> None:
        import numpy as np

        x = np.concatenate(embeddings).astype(np.float64)
        sd = x.std(0)
        self.mean.copy_(torch.from_numpy(x.mean(0)).float())
        self.std.copy_(torch.from_numpy(np.where(sd > 1e-6, sd, 1.0)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------- the pair heads' interface


class PairHead(torch.nn.Module):
    """What ``residue_pairs_to_class`` asks of a trained pair head on embeddings (pair_mlp, resnet2d):

    - :meth:`set_stats`: fix the input standardisation on the training chains' embeddings;
    - :meth:`train_logits` ``(emb L × D, m L × L bool)``: logits of the scored pairs ``m`` of one crop;
    - ``forward(emb L × D, pair_budget)``: the L × L logits of a whole chain (symmetric).

    A pair head subclasses this (or :class:`FittedPairHead`); the protocol refuses any other module
    with one line, instead of failing on a missing attribute mid-training.
    """

    norm: Standardize

    def set_stats(self, embeddings) -> None:
        self.norm.set_stats(embeddings)

    def train_logits(self, emb: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FittedPairHead(torch.nn.Module):
    """A pair head fitted in closed form on attention features (attention_lr): ``fit(x, y, seed)``
    returns the fitted regression, ``regression()`` the one its saved state makes."""

    def fit(self, x, y, seed: int = 0):
        raise NotImplementedError

    def regression(self):
        raise NotImplementedError
