"""Inputs of the heads: embeddings from any embedder, computed once and cached on disk.

``embedder`` in a task config is any ``--model`` of ``protlm embed`` (an LM folder or hub id,
or a baseline: ``onehot``, ``blosum62``, ``kmer``), or an HDF5 file written by ``protlm embed``
(per residue; keyed by id or by sequence hash — both are looked up).

Computed embeddings go to a cache folder keyed by the embedder and layer, as atomic ``.npz``
journal parts holding the sequence hash (biotrainer's key) and the L × D array, so a benchmark
suite that trains several heads on the same sets embeds each sequence once, and an interrupted
run keeps what it has embedded.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from protlm.embed.store import Journal, hash_key, id_key
from protlm.errors import InputError

log = logging.getLogger("protlm.tasks")

CHUNK = 256  # proteins per journal part


def embedder_slug(spec: str, layer: int) -> str:
    """A folder-safe, stable name for an embedder spec (+ layer)."""
    base = Path(str(spec).rstrip("/")).name or "model"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)[:60]
    digest = hashlib.sha256(f"{Path(spec).resolve() if Path(spec).exists() else spec}|{layer}".encode()).hexdigest()[:10]
    return f"{safe}-L{layer}-{digest}"


class FeatureSource:
    """Per-residue embeddings (L × D float32) for sequences, by embedder spec."""

    def __init__(self, spec: str, layer: int = -1, cache_dir: str | Path | None = None):
        self.spec = str(spec)
        self.layer = layer
        self._h5 = None
        self._embedder = None
        self._memory: dict[str, np.ndarray] = {}
        self.cache: Journal | None = None
        if self.spec.endswith((".h5", ".hdf5")):
            import h5py

            if not Path(self.spec).is_file():
                raise InputError(f"embedder {self.spec}: no such HDF5 file")
            try:
                self._h5 = h5py.File(self.spec, "r")
            except OSError:
                raise InputError(f"embedder {self.spec}: not a readable HDF5 file") from None
            if self._h5.attrs.get("level", "residue") != "residue":
                raise InputError(f"embedder {self.spec}: holds per-protein vectors; the heads need per-residue "
                                 f"embeddings (protlm embed --level residue)")
        elif cache_dir is not None:
            self.cache = Journal(Path(cache_dir) / embedder_slug(self.spec, layer))
            self._load_cache()

    def _load_cache(self) -> None:
        """Index which journal part holds which key; arrays are read only when asked for."""
        self.cache.done_keys()  # removes torn parts
        self._index: dict[str, Path] = {}
        for part in self.cache.parts():
            with np.load(part, allow_pickle=False) as z:
                for key in z["keys"].tolist():
                    self._index.setdefault(key, part)

    def _read_cached(self, keys: set[str]) -> None:
        by_part: dict[Path, set[str]] = {}
        for k in keys:
            part = getattr(self, "_index", {}).get(k)
            if part is not None and k not in self._memory:
                by_part.setdefault(part, set()).add(k)
        for part, wanted in by_part.items():
            with np.load(part, allow_pickle=False) as z:
                for i, key in enumerate(z["keys"].tolist()):
                    if key in wanted:
                        self._memory[key] = z[f"r{i}"]

    @property
    def embedder(self):
        if self._embedder is None:
            from protlm.embed.embedder import EmbedOptions
            from protlm.embed.registry import load_embedder

            self._embedder = load_embedder(self.spec, EmbedOptions(layer=self.layer))
        return self._embedder

    @property
    def dim(self) -> int:
        if self._h5 is not None:
            first = next(iter(self._h5.keys()), None)
            if first is None:
                raise InputError(f"embedder {self.spec}: the HDF5 file is empty")
            return int(self._h5[first].shape[-1])
        return int(self.embedder.dim)

    def _from_h5(self, pid: str, seq: str) -> np.ndarray:
        for key in (hash_key(seq), id_key(pid)):
            if key in self._h5:
                arr = np.asarray(self._h5[key][()], dtype=np.float32)
                if arr.ndim != 2 or arr.shape[0] != len(seq):
                    raise InputError(f"embedder {self.spec}: {key!r} has shape {arr.shape}, but protein {pid!r} "
                                     f"has {len(seq)} residues (made from another sequence?)")
                return arr
        raise InputError(f"embedder {self.spec}: no embedding for protein {pid!r} (neither its id nor its "
                         f"sequence hash is a dataset); embed the task's sequences first")

    def get(self, ids: list[str], sequences: list[str], progress: Callable[[int, int], None] | None = None
            ) -> list[np.ndarray]:
        """Per-residue embeddings in input order; embeds (and caches) what is missing."""
        if self._h5 is not None:
            return [self._from_h5(p, s) for p, s in zip(ids, sequences)]
        keys = [hash_key(s) for s in sequences]
        self._read_cached(set(keys))
        todo: dict[str, str] = {}
        for k, s in zip(keys, sequences):
            if k not in self._memory:
                todo.setdefault(k, s)
        if todo:
            items = list(todo.items())
            total = sum(len(s) for _, s in items)
            done = 0
            log.info("embedding %d sequences with %s", len(items), self.spec)
            for start in range(0, len(items), CHUNK):
                chunk = items[start:start + CHUNK]
                arrays = self.embedder.embed([s for _, s in chunk])
                if self.cache is not None:
                    self.cache.write([k for k, _ in chunk], [k for k, _ in chunk], arrays, None)
                for (k, _), a in zip(chunk, arrays):
                    self._memory[k] = a
                done += sum(len(s) for _, s in chunk)
                if progress is not None:
                    progress(done, total)
        return [self._memory[k] for k in keys]

    def release(self) -> None:
        """Forget the arrays held in memory (the disk cache stays)."""
        self._memory.clear()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
