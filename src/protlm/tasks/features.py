"""Inputs of the heads: per-residue embeddings, read from disk per batch, never a whole set in RAM.

``embedder`` in a task config is any ``--model`` of ``protlm embed`` (an LM folder or hub id,
or a baseline: ``onehot``, ``blosum62``, ``kmer`` …), or an HDF5 file of per-residue embeddings
(``protlm embed --level residue``, or another tool's file in the same layout), or — for
per-protein heads — an HDF5 file of one vector per protein (``protlm embed --level protein``'s
``.per_protein.h5``, or biotrainer's reduced embeddings), used as they are.

**Lazy sets.** :meth:`FeatureSource.features` returns a :class:`FeatureSet`: the lengths and
the location of each protein's L × D array (an HDF5 dataset, or a slice of a cache part), read
only when the batch that needs it is assembled, in the dtype it is stored in (a float16 file
stays float16 until :func:`protlm.tasks.train` copies the batch into float32). Memory is set by
the batch, not by the set: benchmarks/bench_features_memory.py measures it.

**Keys.** An HDF5 file is looked up by sequence hash, then by id. The hash is the one rule of
:func:`protlm.embed.store.hash_key` (biotrainer's): SHA-256 of ``f"{seq}_{len(seq)}"`` over the
sequence *as written* in the input, rare residues (B/O/U/Z) kept — the labelled sets carry that
form next to the cleaned one (:attr:`protlm.tasks.data.LabelledSet.written`), so a file made by
``protlm embed --key hash`` (or biotrainer) from the same sequences is found.

**Cache.** What an embedder computes goes to ``CACHE/<name>-<digest>/``, where the digest is
taken over the embedder's :meth:`~protlm.embed.runner.Embedder.fingerprint` (weights checksum and
every option that changes the numbers) and the layer — not over its path, so re-pretraining into
the same folder never returns old features. The folder holds parts, each one file
``part-<content hash>-<random>.plmf`` written to a per-process temporary name, flushed to disk and
renamed: concurrent writers (two suites sharing one cache) never collide, and a reader only ever
sees whole parts. A part is ``PROTLMF1``, the header length (uint64, little endian), a JSON
header (``keys``, ``rows``, ``dim``, ``dtype``) and the row-major arrays one after another,
aligned to 64 bytes. A part that is not whole (a size that disagrees with its header: a full disk,
a copy cut short) is skipped with a warning, removed, and its proteins are embedded again. Cache
keys are the hash of the sequence the embedder was given. With no cache folder
(``--no-cache``) the parts go to a temporary folder that is removed when the source is closed.

**Pooled cache.** A per-protein head (the FFN, logreg: the mean-pooled embedding) asks for
``features(..., pool="mean")`` and gets D numbers per protein, cached as such in
``CACHE/<name>-<digest>/`` with the digest over the same identity plus ``pooled=mean`` — about L
times smaller than the per-residue cache (tests/test_features.py measures the ratio). A protein
already in the per-residue cache is pooled from it instead of embedded again. Heads that read residues (CNN, light attention, pair heads) keep the
per-residue cache.

**Stored precision.** The per-residue cache stores float16 by default (half of float32's disk
and page cache; a part with a value beyond float16's range stays float32), ``PROTLM_CACHE_DTYPE=
float32`` stores float32; each has its own folder. The pooled cache is float32 (means are taken in
float32 from the embedder's output).

**Finite values.** Every array is checked once, when it is first read or computed: NaN or inf
is an :class:`~protlm.errors.InputError` naming the protein and the file, before any head is
saved or any prediction written.

**Identity.** :meth:`FeatureSource.identity` says what made the numbers (the embedder's
fingerprint, model, layer, level and width, and for a file its checksum). Heads record it and
:func:`check_identity` refuses to score a head with features of another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from protlm.embed.pooling import mean_vector
from protlm.embed.store import file_attr, file_level, hash_key, id_key, open_embeddings, sequence_digest
from protlm.errors import ConfigError, InputError
from protlm.io.checksums import xxh3_file

log = logging.getLogger("protlm.tasks")

MAGIC = b"PROTLMF1"
ALIGN = 64
PART_SUFFIX = ".plmf"
PART_BYTES = 256 << 20  # features per cache part (and per embedding step)
PART_PROTEINS = 256  # proteins per cache part at most
STALE_TEMP_SECONDS = 24 * 3600  # temporary files older than this are a killed writer's leftovers

HDF5_SUFFIXES = (".h5", ".hdf5")
#: How the per-residue cache stores features: float16 (half the disk and page cache of float32; a
#: UniRep-1900 NetSurfP cache is 21 GB in float32, which a 24 GB machine reads from disk every
#: epoch), or float32 (``PROTLM_CACHE_DTYPE=float32``: exact). A chunk with a value beyond
#: float16's range (±65,504) is stored in float32. docs/benchmarks.md measures that the heads'
#: test numbers do not move.
CACHE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)


def cache_dtype() -> str:
    value = os.environ.get("PROTLM_CACHE_DTYPE", "float16")
    if value not in CACHE_DTYPES:
        raise ConfigError(f"PROTLM_CACHE_DTYPE={value!r}: choose float16 (the default) or float32")
    return value


# --------------------------------------------------------------------------- names and checksums


def embedder_label(spec) -> str:
    """A readable, folder-safe name for an embedder (its file or folder name)."""
    base = Path(str(spec).rstrip("/")).name or "model"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)[:60]


def file_checksum(path: str | Path) -> str:
    """XXH3-128 of an HDF5 feature file (what a head and the suite record of it)."""
    return xxh3_file(path)


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# --------------------------------------------------------------------------- the cache


class FeatureCache:
    """Parts of per-residue arrays in one folder, safe for concurrent writers (module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(f"part-*{PART_SUFFIX}")) if self.folder.is_dir() else []

    @staticmethod
    def read_header(part: Path) -> tuple[dict, int]:
        """(header, offset of the first array); raises ValueError for a part that is not whole."""
        with open(part, "rb") as fh:
            head = fh.read(16)
            if len(head) != 16 or head[:8] != MAGIC:
                raise ValueError("not a protlm feature part")
            n = int.from_bytes(head[8:], "little")
            if n > 1 << 30:
                raise ValueError("header too large")
            raw = fh.read(n)
        if len(raw) != n:
            raise ValueError("header cut short")
        header = json.loads(raw)
        start = -(-(16 + n) // ALIGN) * ALIGN
        item = np.dtype(header["dtype"]).itemsize
        if len(header["keys"]) != len(header["rows"]):
            raise ValueError("keys and rows differ in number")
        expected = start + sum(int(r) for r in header["rows"]) * int(header["dim"]) * item
        if part.stat().st_size != expected:
            raise ValueError(f"{part.stat().st_size} bytes, the header describes {expected}")
        return header, start

    def index(self) -> dict[str, tuple[Path, int, int, int, str]]:
        """key → (part, byte offset, rows, dim, dtype) over every whole part; others are removed."""
        out: dict[str, tuple[Path, int, int, int, str]] = {}
        for part in self.parts():
            try:
                header, offset = self.read_header(part)
            except FileNotFoundError:
                continue  # removed by another process meanwhile
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("feature cache: %s is not a whole part (%s); skipped, removed, and its proteins "
                            "will be embedded again", part, exc)
                part.unlink(missing_ok=True)
                continue
            dim, dtype = int(header["dim"]), str(header["dtype"])
            item = np.dtype(dtype).itemsize
            for key, rows in zip(header["keys"], header["rows"]):
                out.setdefault(key, (part, offset, int(rows), dim, dtype))
                offset += int(rows) * dim * item
        self._clean_temps()
        return out

    def _clean_temps(self) -> None:
        if not self.folder.is_dir():
            return
        now = time.time()
        for tmp in self.folder.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def write(self, keys: list[str], arrays: list[np.ndarray]) -> dict[str, tuple[Path, int, int, int, str]]:
        """Publish one part holding ``arrays`` (same width and dtype) under ``keys``; their locations."""
        self.folder.mkdir(parents=True, exist_ok=True)
        dim = int(arrays[0].shape[1])
        dtype = np.dtype(arrays[0].dtype).name
        header = json.dumps({"keys": list(keys), "rows": [int(a.shape[0]) for a in arrays], "dim": dim,
                             "dtype": dtype}).encode()
        start = -(-(16 + len(header)) // ALIGN) * ALIGN
        name = f"part-{_digest(chr(0).join(keys))}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
        tmp = self.folder / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(MAGIC + len(header).to_bytes(8, "little") + header)
                fh.write(b"\0" * (start - 16 - len(header)))
                for a in arrays:
                    fh.write(np.ascontiguousarray(a, dtype=dtype).data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / name)
        except OSError as exc:  # a full disk: name the cache (what to free or move), keep what is cached
            raise InputError(f"embedding cache {self.folder}: cannot write ({exc.strerror or exc}); free space there "
                             f"or give another --cache (the parts already written are kept)") from None
        finally:
            tmp.unlink(missing_ok=True)
        out, offset, item = {}, start, np.dtype(dtype).itemsize
        for key, a in zip(keys, arrays):
            out[key] = (self.folder / name, offset, int(a.shape[0]), dim, dtype)
            offset += int(a.shape[0]) * dim * item
        return out


def read_part_slice(part: Path, offset: int, rows: int, dim: int, dtype: str) -> np.ndarray:
    n = rows * dim * np.dtype(dtype).itemsize
    try:
        fd = os.open(part, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(f"feature cache part {part} vanished while in use (removed by another process?); "
                         f"run again") from None
    try:
        buf = os.pread(fd, n, offset)
    finally:
        os.close(fd)
    if len(buf) != n:
        raise InputError(f"feature cache part {part} is shorter than its header says (changed while in use?); "
                         f"run again (the part will be redone)")
    return np.frombuffer(buf, dtype=dtype).reshape(rows, dim)


# --------------------------------------------------------------------------- sets


class FeatureSet(Sequence):
    """Per-residue arrays of a set of proteins, read on demand (``x[i]``: L × D, stored dtype).

    ``lengths`` and ``dim`` are known without reading; each array is checked for finite values
    the first time it is read.
    """

    def __init__(self, names: list[str], lengths: list[int], dim: int, reader: Callable[[int], np.ndarray],
                 where: str):
        self.names = names
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.dim = dim
        self._reader = reader
        self._where = where
        self._checked = np.zeros(len(names), dtype=bool)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("FeatureSet: index one protein at a time")
        a = self._reader(i)
        if not self._checked[i]:
            if a.shape != (self.lengths[i], self.dim):
                raise InputError(f"{self._where}: protein {self.names[i]!r} has features of shape {a.shape}, "
                                 f"expected ({self.lengths[i]}, {self.dim})")
            if not np.isfinite(a).all():
                raise InputError(f"{self._where}: the features of protein {self.names[i]!r} hold NaN or inf "
                                 f"values; a broken model or file — refusing to use them")
            self._checked[i] = True
        return a


class ArrayFeatures(FeatureSet):
    """Arrays held in memory (pooled per-protein vectors, small sets in tests)."""

    def __init__(self, arrays: list[np.ndarray], names: list[str] | None = None, where: str = "features"):
        names = names if names is not None else [str(i) for i in range(len(arrays))]
        dim = int(arrays[0].shape[1]) if arrays else 0
        super().__init__(names, [len(a) for a in arrays], dim, arrays.__getitem__, where)


def pooled(x: FeatureSet) -> ArrayFeatures:
    """The mean over residues of each protein (1 × D float32), computed one protein at a time."""
    return ArrayFeatures([mean_vector(x[i])[None, :] for i in range(len(x))], x.names,
                         x._where)


# --------------------------------------------------------------------------- identity


def identity_digest(identity: dict) -> str:
    """What makes the numbers, as a short digest: a file's checksum, or the embedder's fingerprint
    and layer (not where either lies)."""
    if identity.get("kind") == "hdf5":
        return _digest(f"hdf5|{identity['file_checksum']}")
    return _digest(f"{identity.get('fingerprint')}|layer={identity.get('layer')}")


_PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _is_precision(part: str) -> bool:
    """``bf16``, or ``bf16+compiled`` (--compile); not ``fp32+lora:…`` (other weights, not a precision)."""
    return part in _PRECISIONS or (part.endswith("+compiled") and part[:-len("+compiled")] in _PRECISIONS)


def _precision_of(fingerprint: str) -> tuple[str, str] | None:
    """(the fingerprint without its precision part, the precision — ``bf16+compiled`` with
    ``--compile``) when it names one."""
    parts = str(fingerprint).split("|")
    found = [p for p in parts if _is_precision(p)]
    if len(found) != 1:
        return None
    return "|".join(p for p in parts if not _is_precision(p)), found[0]


def check_identity(trained: dict | None, used: dict, where: str) -> str | None:
    """Refuse features of another model than the head was trained on; returns a warning text when
    the identity cannot be checked (an old head, a file without model attributes)."""
    if not trained:
        return f"{where}: the head records no embedder identity (trained by an older protlm); not checked"
    if trained.get("dim") is not None and used.get("dim") is not None and int(trained["dim"]) != int(used["dim"]):
        raise InputError(f"{where}: gives {used['dim']}-dimensional embeddings, the head expects {trained['dim']}")
    a, b = trained.get("fingerprint"), used.get("fingerprint")
    if a and b:
        if a != b:
            pa, pb = _precision_of(a), _precision_of(b)
            if pa and pb and pa[0] == pb[0]:  # the same model and options, another precision
                raise InputError(f"{where}: made by the head's model in {pb[1]}, but the head was trained on its "
                                 f"{pa[1]} features; embed with that precision (protlm embed --dtype / --int8 / "
                                 f"--compile, as the head's embedder has them) or train a head on {pb[1]} features")
            raise InputError(f"{where}: made by {used.get('model')!r} (fingerprint {b}), but the head was trained "
                             f"on {trained.get('model')!r} (fingerprint {a}); the same width is not the same model "
                             f"— embed with the head's embedder")
        return None
    ma, mb = trained.get("model"), used.get("model")
    if ma and mb:
        la, lb = trained.get("layer"), used.get("layer")
        if ma != mb or (la is not None and lb is not None and int(la) != int(lb)):
            raise InputError(f"{where}: made by {mb!r} (layer {lb}), but the head was trained on {ma!r} (layer {la}); "
                             f"embed with the head's embedder (protlm embed records a weights fingerprint)")
        return None
    made = trained.get("model") or trained.get("file") or "embedder"
    if not (used.get("fingerprint") or used.get("model")):
        return (f"{where}: says nothing about the model that made it (no fingerprint or model attribute); "
                f"cannot check it matches the head's {made!r} — only the width was checked")
    return (f"{where}: the head records no fingerprint or model of what it was trained on (an HDF5 file without "
            f"them: {made!r}); cannot check the inputs match — only the width was checked")


# --------------------------------------------------------------------------- the source


class FeatureSource:
    """Per-residue embeddings of sequences from one embedder spec or HDF5 file (module docstring)."""

    def __init__(self, spec, layer: int = -1, cache_dir: str | Path | None = None):
        self.spec = spec
        self.name = str(spec)
        self.layer = layer
        self._h5 = None
        self._embedder = None
        self._identity: dict | None = None
        self._temp: Path | None = None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache: FeatureCache | None = None
        self._index: dict[str, tuple] | None = None
        self.pooled_cache: FeatureCache | None = None
        self._pooled_index: dict[str, tuple] | None = None
        self._store = cache_dtype()  # how the per-residue cache stores what is embedded
        options = getattr(spec, "options", None)
        # the spec's per-protein pooling: "mean" over residues (computed here), or a backend's own
        # (UniRep's h_avg, h_final, c_final, fusion), which only a per-protein head can read
        self.pooling: str = getattr(options, "pooling", "mean") or "mean"
        self.file_level = "residue"  # what an HDF5 file holds (file_level): per residue, or one vector per protein
        if self.name.endswith(HDF5_SUFFIXES):
            # a file of embeddings is read as it was written: a precision, int8 or compile asked of
            # it would be ignored (and recorded in the head as if it had been used). The layer is
            # not refused: a head's own layer is carried to the file given in its place, and the
            # file's recorded layer is checked against the head's (check_identity)
            given = [o.lstrip("-") for o in (options.lm_options_set() if options is not None else [])
                     if o != "--layer"]
            if given:
                raise ConfigError(f"embedder {self.name}: a file of embeddings is read as it was written; "
                                  f"{', '.join(given)} cannot be set for it (give {'it' if len(given) == 1 else 'them'} "
                                  f"to protlm embed when making the file)")
            self._h5 = open_embeddings(self.name, "embedder")
            self.file_level = file_level(self._h5, f"embedder {self.name}")

    # ------------------------------------------------------------------ what it is

    @property
    def embedder(self):
        if self._embedder is None:
            from protlm.embed.runner import Embedder
            from protlm.embed.spec import EmbedOptions, EmbedderSpec

            if isinstance(self.spec, EmbedderSpec):
                spec = self.spec.with_options(layer=self.layer) if self.layer != -1 else self.spec
                self._embedder = Embedder(spec)
            else:
                self._embedder = Embedder(self.spec, EmbedOptions(layer=self.layer))
        return self._embedder

    @property
    def dim(self) -> int:
        if self._h5 is not None:
            first = next(iter(self._h5.keys()), None)
            if first is None:
                raise InputError(f"embedder {self.name}: the HDF5 file is empty")
            shape = self._h5[first].shape
            want = 1 if self.file_level == "protein" else 2
            if len(shape) != want:
                raise InputError(f"embedder {self.name}: dataset {first!r} has shape {shape}; "
                                 + ("per-protein datasets are D" if want == 1 else "per-residue datasets are L × D"))
            return int(shape[-1])
        if self.pooling != "mean":  # only per-protein vectors come from this source (features())
            return int(self.embedder.protein_dim)
        return int(self.embedder.dim)

    def identity(self, checksum: bool = True) -> dict:
        """What made the numbers (see :func:`check_identity`); ``checksum=False`` leaves out a
        file's checksum (a pass over the whole file), which checking a head does not need."""
        if self._identity is None:
            if self._h5 is not None:
                h5 = self._h5
                self._identity = {"kind": "hdf5", "fingerprint": file_attr(h5, "fingerprint") or None,
                                  "model": file_attr(h5, "model") or None, "layer": file_attr(h5, "layer"),
                                  "level": self.file_level, "dim": self.dim, "file": self.name}
            else:
                self._identity = {"kind": "embedder", "fingerprint": self.embedder.fingerprint(),
                                  "model": self.name, "layer": self.layer, "level": "residue", "dim": self.dim}
        if checksum and self._identity["kind"] == "hdf5" and "file_checksum" not in self._identity:
            self._identity["file_checksum"] = file_checksum(self.name)
        return self._identity

    def _cache(self) -> FeatureCache:
        if self.cache is None:
            root = self._cache_dir
            if root is None:
                self._temp = Path(tempfile.mkdtemp(prefix="protlm-features-"))
                root = self._temp
            ident = self.identity()
            digest = identity_digest(ident)  # float32: the folder name of protlm 0.4's caches
            if self._store == "float16":
                digest = _digest(f"{digest}|store=float16")
            self.cache = FeatureCache(root / f"{embedder_label(self.name)}-{digest}")
        return self.cache

    def _pooled(self) -> FeatureCache:
        if self.pooled_cache is None:
            folder = self._cache().folder
            digest = _digest(f"{identity_digest(self.identity())}|pooled=mean")
            self.pooled_cache = FeatureCache(folder.parent / f"{embedder_label(self.name)}-{digest}")
        return self.pooled_cache

    # ------------------------------------------------------------------ sets

    def features(self, ids: list[str], sequences: list[str], written: list[str] | None = None,
                 progress: Callable[[int, int], None] | None = None, where: str = "",
                 pool: str | None = None) -> FeatureSet:
        """The proteins' per-residue features as a lazy :class:`FeatureSet`, in input order.

        ``sequences``: what an embedder is given; ``written``: the sequences as written in the
        input (the HDF5 hash key; default ``sequences``). Missing embeddings are computed (and
        cached) first. ``pool="mean"``: the mean over residues instead (1 × D per protein, in
        memory), from the pooled cache (module docstring).
        """
        if pool not in (None, "mean"):
            raise ValueError(f"pool must be None or 'mean', not {pool!r}")
        written = sequences if written is None else written
        label = f"embedder {self.name}" + (f" ({where})" if where else "")
        if self.pooling != "mean" and not pool:
            raise ConfigError(f"{label}: pooling {self.pooling} gives one vector per protein, but this task's "
                              f"head or protocol reads per-residue embeddings; leave pooling at mean (or use a "
                              f"per-protein head: ffn, logreg)")
        if self._h5 is not None and self.file_level == "protein":
            if not pool:
                raise ConfigError(f"{label}: holds one vector per protein, but this task's head or protocol reads "
                                  f"per-residue embeddings; use a per-protein head (ffn, logreg) with this file, or "
                                  f"a per-residue file (protlm embed --level residue)")
            return self._h5_set(ids, sequences, written, label, per_protein=True)
        if self._h5 is not None:
            x = self._h5_set(ids, sequences, written, label)
            return pooled(x) if pool else x
        if pool:
            return self._pooled_features(ids, sequences, progress, label)
        cache = self._cache()
        if self._index is None:
            self._index = cache.index()
        keys = [hash_key(s) for s in sequences]
        todo: dict[str, tuple[str, str]] = {}
        for k, pid, s in zip(keys, ids, sequences):
            if k not in self._index:
                todo.setdefault(k, (pid, s))
        if todo:
            self._embed(cache, todo, progress)
        locs = [self._index[k] for k in keys]
        dim = locs[0][3] if locs else self.dim
        for pid, s, loc in zip(ids, sequences, locs):  # a part's header edited or damaged on disk
            if loc[2] != len(s) or loc[3] != dim:
                raise InputError(f"{label}: the feature cache's entry for protein {pid!r} has {loc[2]} × {loc[3]} "
                                 f"values, but the protein has {len(s)} residues and the features {dim} dimensions; "
                                 f"the cache is damaged: delete {cache.folder} and run again")

        def read(i: int) -> np.ndarray:
            return read_part_slice(*locs[i])

        return FeatureSet(list(ids), [loc[2] for loc in locs], dim, read, f"{label}, cache {cache.folder}")

    def _pooled_features(self, ids, sequences, progress, label) -> FeatureSet:
        cache = self._pooled()
        if self._pooled_index is None:
            self._pooled_index = cache.index()
        if self._index is None:
            self._index = self._cache().index() if self.pooling == "mean" else {}
        keys = [hash_key(s) for s in sequences]
        todo: dict[str, tuple[str, str]] = {}
        from_residues: dict[str, np.ndarray] = {}
        for k, pid, s in zip(keys, ids, sequences):
            if k in self._pooled_index or k in todo or k in from_residues:
                continue
            if k in self._index and self.pooling == "mean":  # already embedded per residue: pool it, do not embed again
                a = read_part_slice(*self._index[k])
                if not np.isfinite(a).all():
                    raise InputError(f"{label}, cache {self.cache.folder}: the features of protein {pid!r} hold "
                                     f"NaN or inf values; a broken model or file — refusing to use them")
                from_residues[k] = mean_vector(a)[None, :]
            else:
                todo[k] = (pid, s)
        if from_residues:
            self._pooled_index.update(cache.write(list(from_residues), list(from_residues.values())))
        if todo:
            self._embed(cache, todo, progress, pool=True, index=self._pooled_index)
        vectors = []
        for pid, k in zip(ids, keys):
            loc = self._pooled_index[k]
            if loc[2] != 1:  # one vector per protein: a part's header edited or damaged on disk
                raise InputError(f"{label}: the pooled feature cache's entry for protein {pid!r} has {loc[2]} rows, "
                                 f"not one; the cache is damaged: delete {cache.folder} and run again")
            vectors.append(np.array(read_part_slice(*loc)))
        return ArrayFeatures(vectors, list(ids), f"{label}, pooled cache {cache.folder}")

    def _embed(self, cache: FeatureCache, todo: dict[str, tuple[str, str]], progress, pool: bool = False,
               index: dict | None = None) -> None:
        index = self._index if index is None else index
        items = list(todo.items())
        total, done = sum(len(s) for _, (_, s) in items), 0
        dim = self.embedder.dim
        log.info("embedding %d sequences with %s", len(items), self.name)
        start = 0
        while start < len(items):
            stop, size = start, 0
            while stop < len(items) and stop - start < PART_PROTEINS and (stop == start or size < PART_BYTES):
                size += len(items[stop][1][1]) * dim * 4
                stop += 1
            chunk = items[start:stop]
            if pool and self.pooling != "mean":  # the backend's own per-protein vectors (1 × D' each)
                arrays = list(self.embedder.embed_proteins([s for _, (_, s) in chunk])[:, None, :])
            else:
                arrays = self.embedder.embed([s for _, (_, s) in chunk])
            for (_, (pid, s)), a in zip(chunk, arrays):
                if not np.isfinite(a).all():
                    raise InputError(f"embedder {self.name}: produced NaN or inf for protein {pid!r}; "
                                     f"a broken model — nothing was cached for it")
            if pool and self.pooling == "mean":
                arrays = [mean_vector(a)[None, :] for a in arrays]
            elif not pool and self._store == "float16" and all(
                    float(np.abs(a).max(initial=0.0)) <= FLOAT16_MAX for a in arrays):
                arrays = [a.astype(np.float16) for a in arrays]
            index.update(cache.write([k for k, _ in chunk], arrays))
            del arrays
            done += sum(len(s) for _, (_, s) in chunk)
            if progress is not None:
                progress(done, total)
            start = stop

    def _h5_set(self, ids, sequences, written, label, per_protein: bool = False) -> FeatureSet:
        """The proteins' entries of the HDF5 file (found by sequence hash, then by id); a
        per-protein file's D-vectors come as 1 × D arrays, as pooled features do."""
        h5 = self._h5
        dim = self.dim
        names, lengths = [], []
        for pid, seq, raw in zip(ids, sequences, written):
            for key in (hash_key(raw), id_key(pid)):
                if key in h5:
                    shape = h5[key].shape
                    if per_protein and shape != (dim,):
                        raise InputError(f"{label}: {key!r} has shape {shape}; the file's per-protein vectors have "
                                         f"{dim} dimensions")
                    if not per_protein and (len(shape) != 2 or shape[0] != len(seq) or shape[1] != dim):
                        raise InputError(f"{label}: {key!r} has shape {shape}, but protein {pid!r} has {len(seq)} "
                                         f"residues and the file {dim} dimensions (made from another sequence?)")
                    # found by id: the entry must have been made from this protein's sequence (as given
                    # to the embedder, or as written), when the file records which
                    digest = str(h5[key].attrs.get("sequence_digest", ""))
                    if digest and digest not in (sequence_digest(seq), sequence_digest(raw),
                                                 sequence_digest(raw.upper())):
                        raise InputError(f"{label}: the entry {key!r} was embedded from another sequence than "
                                         f"protein {pid!r}'s (its sequence_digest differs); embed the task's "
                                         f"sequences (protlm export-fasta writes them)")
                    names.append(key)
                    lengths.append(1 if per_protein else len(seq))
                    break
            else:
                raise InputError(f"{label}: no embedding for protein {pid!r} (neither its id nor its sequence hash "
                                 f"— SHA-256 of the sequence as written + '_' + its length — is a dataset); embed "
                                 f"the task's sequences first (protlm export-fasta writes them)")

        def read(i: int) -> np.ndarray:
            a = h5[names[i]][()]
            return a.reshape(1, -1).astype(np.float32) if per_protein else a

        x = FeatureSet(list(ids), lengths, dim, read, label)
        # per-protein heads hold their inputs in memory (as pooled features): read and checked once
        return ArrayFeatures([x[i] for i in range(len(x))], list(ids), label) if per_protein else x

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> "FeatureSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def embedder_slug(spec, identity: dict) -> str:
    """A suite's folder name for an embedder: readable name + digest of what made the numbers
    (so a moved file or model folder keeps its finished heads, and a changed one does not)."""
    return f"{embedder_label(spec)}-{identity_digest(identity)[:10]}"
