"""What a model must provide to be an embedder: the :class:`Backend` interface.

protlm splits an embedder in two (biotrainer's ``EmbedderInterface``, ESM's ``toks_per_batch``
runner): a **backend** knows one model family — how to turn a batch of cleaned protein
sequences into per-residue arrays — and the **batch runner**
(:class:`protlm.embed.runner.Embedder`) does everything else, identically for every family:
length sorting, token-budget plans, equal-length CPU batches, out-of-memory halving → CPU
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
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path

import numpy as np

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
