"""What a model must provide to be an embedder: the :class:`Backend` interface.

protlm splits an embedder in two (biotrainer's ``EmbedderInterface``, ESM's ``toks_per_batch``
runner): a **backend** knows one model family — how to turn a batch of cleaned protein
sequences into per-residue arrays — and the **batch runner**
(:class:`protlm.embed.runner.Embedder`) does everything else, identically for every family:
length sorting, token-budget plans, equal-length or packed CPU batches, out-of-memory halving → CPU
fallback → skip-with-record, overlapping windows over a position limit, statistics and the
crash-safe journal of ``protlm embed``.

A backend is one file in :mod:`protlm.embed.backends` that registers a factory with
:func:`protlm.embed.registry.register`; nothing else needs to change (docs/architecture.md).

The contract:

- ``forward(seqs, cpu=False)`` takes a batch of cleaned sequences (upper case, the 20 standard
  residues, X and possibly B/Z/U/O) that the runner has already sized, and returns one float32
  array per sequence with **exactly** ``len(seq)`` rows and ``dim`` columns (special tokens
  stripped), in the same order. ``cpu=True`` asks for the same computation on the CPU (the
  runner's fallback after a device out-of-memory error); backends that always run on the CPU
  ignore it. Out-of-memory errors are left to propagate: the runner handles them.
- ``dim``: width of the per-residue vectors. ``max_residues``: the longest protein ``forward``
  accepts (a position table), or None; the runner windows longer ones.
- ``describe()``: what ``protlm embed`` records in the HDF5 file's attributes (model, family,
  model_type, and any option that changes the numbers: layer, precision…).
- ``fingerprint()``: a string that changes whenever the numbers would (weights checksum and
  those options). Caches, resume checks and heads use it to refuse a mismatch.

**Torch backends** (every LM: the Hugging Face families, ProtTXL, UniRep) are
:class:`TorchBackend`s and offer more: their ``module`` (the ``torch.nn.Module`` that holds the
weights) and one tensor forward, ``forward_tokens(seqs, layers=…, attentions=…, logits=…)``,
that returns an :class:`LMOutput` — the hidden states of the chosen layers at the residue
positions (special tokens stripped, zero-padded, with the residue mask), and when asked the
attention maps and the LM's logits — *with gradients* when grad mode is on and the module's
parameters require them (fair-esm's ``forward(tokens, repr_layers, need_head_weights)``). The
numpy ``forward`` the runner calls is that same forward under ``torch.inference_mode()``;
fine-tuning (:mod:`protlm.tasks.finetune`) calls it in training mode. The numpy baselines
(one-hot, BLOSUM, k-mer, profiles) stay plain :class:`Backend`s.

**Packed batches** (optional): a backend that sets ``packed_batches`` runs a batch of proteins
of mixed lengths in its numpy ``forward`` without computing any padding — the proteins
concatenated along the token axis, attention per protein (:mod:`protlm.embed.packed`) — so the
runner plans batches by real tokens and lets any lengths share one. Such a backend also offers
``forward_packed(seqs, layers=…)``, an inference-only twin of ``forward_tokens`` returning the same
:class:`LMOutput` (hidden states only). The Hugging Face backend does this on a CPU for ESM and
BERT-like encoders (:class:`protlm.embed.backends.hf.HFBackend`).
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from protlm.errors import ConfigError
from protlm.io.checksums import sha256_file


class Backend(abc.ABC):
    """One model family's forward pass; see the module docstring for the contract."""

    #: Registry name of the family ("esm", "onehot", "unirep", …); recorded as the HDF5 ``family``.
    family: str = ""
    #: ``model_type`` recorded in the HDF5 attributes (a config.json ``model_type`` where there is one).
    model_type: str = ""
    #: What the user named (``--model``): a name, a folder, a hub id.
    source: str = ""
    #: Width of the per-residue vectors.
    dim: int = 0
    #: Longest protein ``forward`` accepts (residues), or None for any length.
    max_residues: int | None = None
    #: Tokens added around each protein (special tokens); counted in the token budget.
    extra_tokens: int = 0
    #: Where ``forward`` runs ("cpu", "cuda", "cuda:1"); the runner falls back to the CPU from a GPU.
    device: str = "cpu"
    #: The runner's batch plan when the user gives none: padded tokens and proteins per batch.
    default_tokens_per_batch: int = 4000
    default_max_sequences: int = 100
    #: Proteins longer than this run alone (attention memory grows with the batch's longest protein);
    #: backends whose cost is per protein, not per padded token, raise it.
    default_alone_above: int = 1000
    #: On a CPU, only proteins of equal length share a batch (padding costs more than it saves there).
    equal_length_on_cpu: bool = False
    #: ``forward`` packs a batch of mixed lengths with no padding computed (see the module
    #: docstring): the runner's token budget then counts real tokens, and lengths need not be equal.
    packed_batches: bool = False

    @abc.abstractmethod
    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        """Per-residue float32 arrays (len(seq) × dim), one per sequence, in order."""

    def memory_bytes(self, length: int) -> int:
        """Host memory one protein of ``length`` residues needs in ``forward`` (a rough upper
        estimate; 0 = unknown). The runner windows or skips a protein that would not fit, instead
        of letting the kernel's OOM killer end the run without a word."""
        return 0

    def describe(self) -> dict:
        """HDF5 attributes that say what made the numbers."""
        return {"model": self.source, "family": self.family, "model_type": self.model_type,
                "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """Changes whenever the numbers would; the default: family + source."""
        return f"{self.family}:{self.source}"


@dataclass
class LMOutput:
    """What :meth:`TorchBackend.forward_tokens` returns for a batch of B proteins (longest: L residues).

    ``hidden``: asked layer → B × L × D float tensor at the residue positions only (row ``b`` holds
    protein ``b``'s residues in order, zeros after its end); ``mask``: B × L float, 1 at residues;
    ``attentions``: B × (layers · heads) × L × L (residue positions) when asked; ``logits``:
    B × L × V when asked (the LM head's output at each residue position)."""

    hidden: dict[int, Any]
    mask: Any
    attentions: Any = None
    logits: Any = None
    extra: dict = field(default_factory=dict)


class TorchBackend(Backend):
    """A backend whose forward is a torch module: trainable, and one forward for every output."""

    #: The ``torch.nn.Module`` holding the weights (what fine-tuning trains, peft wraps, DDP shares).
    module: Any = None
    #: The layer the numpy ``forward`` returns (−1: the last).
    layer: int = -1
    #: Whether the forward runs under bf16 autocast (fine-tuning's ``precision: bf16``).
    autocast_bf16: bool = True

    @abc.abstractmethod
    def forward_tokens(self, seqs: Sequence[str], *, layers: Sequence[int] = (-1,), attentions: bool = False,
                       logits: bool = False, cpu: bool = False) -> LMOutput:
        """One batch through the module; differentiable when grad mode is on (see LMOutput)."""

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.forward_tokens(seqs, layers=(self.layer,), cpu=cpu)
            hidden = out.hidden[self.layer].float().cpu().numpy()
        return [hidden[row, :len(s)].copy() for row, s in enumerate(seqs)]

    # ------------------------------------------------------------------ what fine-tuning needs

    def blocks(self) -> list:
        """The module's layers in order, input side first (``finetune.method: top`` unfreezes the last k)."""
        raise ConfigError(f"{self.family}: this model family does not list its layers; use finetune.method full "
                          f"or lora")

    def lora_targets(self) -> list[str]:
        """Names of the linear layers LoRA adapts by default (``lora_target_modules: auto``)."""
        raise ConfigError(f"{self.family}: LoRA is not offered for this model family; use finetune.method full "
                          f"or top")

    def enable_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them (less memory, more time)."""
        raise ConfigError(f"{self.family}: activation checkpointing is not offered for this model family")

    def save_lm(self, folder) -> None:
        """Write the module's weights as a model folder that ``--model`` loads (fine-tuned LMs)."""
        raise ConfigError(f"{self.family}: saving a fine-tuned model is not offered for this model family")


def residue_positions(hidden, starts: Sequence[int], lengths: Sequence[int]):
    """B × T × D token states → (B × L × D residue states zero-padded, B × L mask), row ``b``
    taking tokens ``starts[b] … starts[b] + lengths[b]``; differentiable."""
    import torch

    B = hidden.shape[0]
    L = max(lengths) if len(lengths) else 0
    pos = torch.arange(L, device=hidden.device)
    lens = torch.as_tensor(list(lengths), device=hidden.device)
    mask = (pos[None, :] < lens[:, None])
    index = (torch.as_tensor(list(starts), device=hidden.device)[:, None] + pos[None, :]).clamp_max(hidden.shape[1] - 1)
    out = torch.gather(hidden, 1, index[..., None].expand(B, L, hidden.shape[2]))
    return out * mask[..., None].to(out.dtype), mask.to(torch.float32)


def files_sha256(paths: list[Path]) -> str:
    """SHA-256 over several files (their names and digests, in the order given)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def folder_weights_sha256(folder: str | os.PathLike) -> str:
    """Checksum of a model folder's weights: every ``*.safetensors`` file, sorted by name."""
    files = sorted(Path(folder).glob("*.safetensors"))
    return files_sha256(files)[:16] if files else "no-weights"
