"""The one batch runner: any embedder backend → per-residue / per-protein vectors.

``Embedder(spec).embed(sequences)`` returns one float32 array of L × D per protein (special
tokens removed); ``embed_proteins`` the per-protein vectors (the mean over residues, or a
backend's own pooling). The batching follows the ProtTrans embedder's idea, made exact: proteins
sorted by length, cut into batches by a budget of padded tokens (and a cap on sequences),
proteins longer than ``alone_above`` residues alone; on a CPU, for backends that ask for it, only
proteins of equal length share a batch. A backend that packs its batches (``packed_batches``:
proteins concatenated along the token axis, attention per protein, no padding computed —
:mod:`protlm.embed.packed`; the Hugging Face ESM and BERT encoders on a CPU) gets batches of any
lengths, cut by a budget of real tokens instead.

Failures never drop a protein silently. An out-of-memory error splits the batch in halves, down
to one protein; a single protein that does not fit the device moves to the CPU
(``cpu_fallback``); one that does not fit anywhere is skipped, logged and counted. Backends with a
hard position limit embed longer proteins in overlapping windows whose per-residue vectors are
averaged where they overlap (``long_policy="window"``), or refuse them up front
(``long_policy="error"``). A non-finite value (NaN/inf) in any output is refused, naming the
protein: such a model or input cannot be trusted.

Everything here is the same for every backend (:mod:`protlm.embed.backend`); the backend only
does the forward pass of one batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from protlm.embed.backend import Backend
from protlm.embed.pooling import mean_vector
from protlm.embed.registry import resolve
from protlm.embed.spec import EmbedderSpec, EmbedOptions, parse_spec
from protlm.errors import ConfigError, InputError

log = logging.getLogger("protlm.embed")
COLLAPSE_MIN_LENGTH = 20  # proteins at least this long are checked for residue-constant embeddings
COLLAPSE_RATIO = 1e-3  # spread across residues below this fraction of the values' size: collapsed
COLLAPSE_CHECKS = 32  # proteins checked per embedder (not every one: the check is off the hot path)


@dataclass
class EmbedStats:
    proteins: int = 0
    residues: int = 0
    batches: int = 0
    windowed: int = 0
    oom_splits: int = 0
    cpu_fallbacks: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"proteins": self.proteins, "residues": self.residues, "batches": self.batches,
                "windowed": self.windowed, "oom_splits": self.oom_splits, "cpu_fallbacks": self.cpu_fallbacks,
                "skipped": len(self.skipped), "skipped_detail": self.skipped, "seconds": self.seconds,
                "residues_per_s": self.residues / self.seconds if self.seconds else 0.0}


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error of a device or of the host (torch's or numpy's)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # a backend without torch
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``; elsewhere a large
    number, so nothing is refused where it cannot be measured)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


class Embedder:
    """Any embedder (an LM folder or hub id, a baseline, a registered family) behind one runner."""

    def __init__(self, spec: str | EmbedderSpec | dict, options: EmbedOptions | None = None):
        self.spec = parse_spec(spec, defaults=options) if not isinstance(spec, EmbedderSpec) else spec
        if options is not None and isinstance(spec, EmbedderSpec):
            self.spec = EmbedderSpec(spec.name, options)
        self.options = self.spec.options
        self.options.validate()
        self.backend: Backend = resolve(self.spec.name, self.options)
        self.name = self.spec.name
        if self.options.pooling not in getattr(self.backend, "poolings", ("mean",)):
            raise ConfigError(f"{self.options.pooling}: {self.name} offers "
                              f"{', '.join(getattr(self.backend, 'poolings', ('mean',)))}", option="pooling")
        self.stats = EmbedStats()
        self._collapse_checks = 0  # proteins checked for residue-constant rows (a collapse shows on every one)

    # ------------------------------------------------------------------ what it is

    @property
    def dim(self) -> int:
        return int(self.backend.dim)

    @property
    def protein_dim(self) -> int:
        """Width of the per-protein vectors (differs from ``dim`` for some backend poolings)."""
        if self.options.pooling == "mean":
            return self.dim
        return int(self.backend.pooled_dim(self.options.pooling))

    @property
    def max_residues(self) -> int | None:
        return self.backend.max_residues

    @property
    def family(self):
        return self.backend.family

    @property
    def model_type(self) -> str:
        return self.backend.model_type

    def describe(self) -> dict:
        out = dict(self.backend.describe())
        if self.options.pooling != "mean":
            out["pooling"] = self.options.pooling
        return out

    def fingerprint(self) -> str:
        fp = self.backend.fingerprint()
        return fp if self.options.pooling == "mean" else f"{fp}|pool={self.options.pooling}"

    def __getattr__(self, name: str):
        # A backend's own attributes (an HF backend's tokenizer, layout, model) through the embedder.
        if name in ("backend", "options", "spec", "stats"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    # ------------------------------------------------------------------ forward with fallbacks

    def _checked(self, ids: list[str], seqs: list[str], arrays: list[np.ndarray], pooled: bool) -> list[np.ndarray]:
        if len(arrays) != len(seqs):
            raise RuntimeError(f"backend {self.backend.family} returned {len(arrays)} arrays for {len(seqs)} proteins")
        for pid, s, a in zip(ids, seqs, arrays):
            if not pooled and a.shape != (len(s), self.dim):
                raise RuntimeError(f"backend {self.backend.family} returned shape {a.shape} for {pid} "
                                   f"({len(s)} residues, D={self.dim})")
            if not np.isfinite(a).all():
                raise InputError(f"{self.name} produced non-finite values (NaN or inf) for protein {pid} "
                                 f"({len(s)} residues); its embeddings cannot be trusted (a broken model or a "
                                 f"precision overflow: try --dtype fp32)")
            if not pooled and self._collapse_checks < COLLAPSE_CHECKS and len(s) >= COLLAPSE_MIN_LENGTH:
                self._warn_if_collapsed(pid, a)
        return arrays

    def _warn_if_collapsed(self, pid: str, a: np.ndarray) -> None:
        """Checked on the first proteins, warned at most once: rows that hardly differ from residue
        to residue give a head almost nothing to tell residues apart — a collapsed layer (seen with
        post-LN models stuck at the unigram loss). The numbers are the model's, so they are
        returned, but not silently."""
        self._collapse_checks += 1
        scale = float(np.abs(a).mean())
        spread = float(a.std(axis=0).mean())
        if scale > 0 and spread < COLLAPSE_RATIO * scale:
            self._collapse_checks = COLLAPSE_CHECKS  # warned: stop checking
            log.warning("%s: the embeddings of %s are nearly the same at every residue (spread across residues "
                        "%.1e of their size): a head that takes them as they are will hardly tell residues "
                        "apart (a collapsed layer?); an earlier --layer may carry the signal at full scale",
                        self.name, pid, spread / scale)

    def _forward(self, ids, seqs, cpu: bool, pooled: bool) -> list[np.ndarray]:
        if pooled:
            out = self.backend.forward_pooled(seqs, self.options.pooling, cpu=cpu)
        else:
            out = self.backend.forward(seqs, cpu=cpu)
        return self._checked(ids, seqs, [np.asarray(a, dtype=np.float32) for a in out], pooled)

    def _run(self, ids: list[str], seqs: list[str], pooled: bool = False) -> list[np.ndarray | None]:
        """Forward a batch; on OOM split it, then fall back to the CPU, then skip (logged)."""
        try:
            out = self._forward(ids, seqs, False, pooled)
            self.stats.batches += 1
            return out
        except Exception as exc:
            if not is_oom(exc):
                raise
            _empty_device_cache()
        if len(seqs) > 1:
            self.stats.oom_splits += 1
            half = len(seqs) // 2
            log.warning("out of memory on a batch of %d proteins; retrying in halves", len(seqs))
            return self._run(ids[:half], seqs[:half], pooled) + self._run(ids[half:], seqs[half:], pooled)
        if str(self.backend.device) != "cpu" and self.options.cpu_fallback:
            log.warning("%s (%d residues) does not fit on %s; embedding it on the CPU", ids[0], len(seqs[0]),
                        self.backend.device)
            try:
                out = self._forward(ids, seqs, True, pooled)
                self.stats.cpu_fallbacks += 1
                self.stats.batches += 1
                return out
            except Exception as exc:
                if not is_oom(exc):
                    raise
        reason = f"out of memory with {len(seqs[0])} residues"
        log.warning("skipped %s: %s", ids[0], reason)
        self.stats.skipped.append({"id": ids[0], "length": len(seqs[0]), "reason": reason})
        return [None]

    def _windowed(self, pid: str, seq: str, size: int | None = None) -> np.ndarray | None:
        """Overlapping windows of ``size`` residues (the backend's limit by default); overlapping
        rows averaged."""
        size = size or self.max_residues
        step = max(1, size - self.options.window_overlap)
        starts = list(range(0, max(1, len(seq) - size) + 1, step))
        if starts[-1] + size < len(seq):
            starts.append(len(seq) - size)
        total = np.zeros((len(seq), self.dim), dtype=np.float64)
        count = np.zeros(len(seq), dtype=np.int64)
        for s in starts:
            part = self._run([pid], [seq[s:s + size]])[0]
            if part is None:
                return None
            total[s:s + size] += part
            count[s:s + size] += 1
        self.stats.windowed += 1
        return (total / count[:, None]).astype(np.float32)

    def _memory_plan(self, pid: str, seq: str) -> tuple[str, int]:
        """("run", 0), ("window", size) or ("skip", 0) for one protein, from the backend's memory
        estimate and the memory available now. Only the CPU's memory is judged: a GPU's own
        out-of-memory error is caught and handled by halving and the CPU fallback."""
        need = self.backend.memory_bytes(len(seq))
        if not need or str(self.backend.device) != "cpu":
            return "run", 0
        budget = int(0.7 * available_memory())
        if need <= budget:
            return "run", 0
        output = 4 * len(seq) * self.dim * 2  # the result and the averaging buffer of windows
        if self.options.long_policy == "window" and output < budget // 2:
            per_residue = need / max(len(seq), 1)
            size = int((budget - output) / per_residue)
            if size >= 2 * self.options.window_overlap + 1 and size >= 64:
                return "window", size
        return "skip", 0

    # ------------------------------------------------------------------ batching

    def plan(self, lengths: list[int]) -> list[list[int]]:
        """Batches of indices: longest first, by token budget and sequence cap.

        The budget counts padded tokens (batch size × the longest protein's tokens), or real
        tokens for a backend that packs its batches (``packed_batches``: no padding is computed).
        On a CPU, backends with ``equal_length_on_cpu`` that do not pack only batch proteins of
        the same length: there a padded batch was slower than one protein at a time for the
        transformer encoders (the attention mask takes SDPA off its fastest kernel and the padding
        is wasted work; docs/benchmarks.md), while equal lengths need neither. An explicit
        ``equal_length_batches`` (true or false) turns packing off.
        """
        b = self.backend
        budget = self.options.tokens_per_batch or b.default_tokens_per_batch
        cap = self.options.max_sequences or b.default_max_sequences
        exact = self.options.equal_length_batches
        packed = exact is None and bool(getattr(b, "packed_batches", False))
        if exact is None:
            exact = not packed and b.equal_length_on_cpu and str(b.device) == "cpu"
        alone = self.options.alone_above or b.default_alone_above
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        extra = b.extra_tokens
        batches, current, width, tokens = [], [], 0, 0
        for i in order:
            n = lengths[i]
            if n > alone or (self.max_residues and n > self.max_residues):
                batches.append([i])
                continue
            w = max(width, n + extra)
            cost = tokens + n + extra if packed else w * (len(current) + 1)
            if current and (cost > budget or len(current) + 1 > cap
                            or (exact and lengths[current[0]] != n)):
                batches.append(current)
                current, w, tokens = [], n + extra, 0
            current.append(i)
            width = w
            tokens += n + extra
        if current:
            batches.append(current)
        return batches

    def check_lengths(self, ids: list[str], seqs: list[str], pooled: bool = False) -> None:
        if not self.max_residues:
            return
        too_long = [(i, len(s)) for i, s in zip(ids, seqs) if len(s) > self.max_residues]
        if too_long and (self.options.long_policy == "error" or pooled):
            pid, n = too_long[0]
            fix = ("use --long-policy window to embed them in overlapping windows" if not pooled else
                   f"--pooling {self.options.pooling} needs one pass over the whole protein; use --pooling mean")
            raise InputError(f"{len(too_long)} protein(s) exceed the model's limit of {self.max_residues} "
                             f"residues (first: {pid}, {n} residues); {fix}")

    def iter_embed(self, ids: list[str], seqs: list[str], progress: Callable[[int], None] | None = None,
                   *, pooled: bool = False) -> Iterator[tuple[list[str], list[np.ndarray | None]]]:
        """Yield (ids, arrays) batch by batch, longest proteins first.

        Arrays are per residue (L × D), or with ``pooled`` the backend's per-protein vectors for
        ``options.pooling`` (only for a pooling other than "mean").
        """
        self.check_lengths(ids, seqs, pooled)
        t0 = time.perf_counter()
        for batch in self.plan([len(s) for s in seqs]):
            b_ids = [ids[i] for i in batch]
            b_seqs = [seqs[i] for i in batch]
            plan, size = self._memory_plan(b_ids[0], b_seqs[0]) if len(batch) == 1 else ("run", 0)
            if plan == "skip":
                reason = (f"{len(b_seqs[0])} residues need about {self.backend.memory_bytes(len(b_seqs[0])) / 2**30:.1f} "
                          f"GiB, more than this machine has available")
                log.warning("skipped %s: %s", b_ids[0], reason)
                self.stats.skipped.append({"id": b_ids[0], "length": len(b_seqs[0]), "reason": reason})
                arrays = [None]
            elif plan == "window" and not pooled:
                log.warning("%s (%d residues) does not fit in memory in one pass; embedding it in windows of %d",
                            b_ids[0], len(b_seqs[0]), size)
                arrays = [self._windowed(b_ids[0], b_seqs[0], min(size, self.max_residues or size))]
            elif not pooled and len(batch) == 1 and self.max_residues and len(b_seqs[0]) > self.max_residues:
                arrays = [self._windowed(b_ids[0], b_seqs[0])]
            else:
                arrays = self._run(b_ids, b_seqs, pooled)
            for a, s in zip(arrays, b_seqs):
                if a is not None:
                    self.stats.proteins += 1
                    self.stats.residues += len(s)
            self.stats.seconds = time.perf_counter() - t0
            if progress is not None:
                progress(sum(len(s) for s in b_seqs))
            yield b_ids, arrays

    def _collect(self, sequences: Iterable[str], pooled: bool) -> list[np.ndarray]:
        seqs = list(sequences)
        ids = [str(i) for i in range(len(seqs))]
        out: list[np.ndarray | None] = [None] * len(seqs)
        for b_ids, arrays in self.iter_embed(ids, seqs, pooled=pooled):
            for i, a in zip(b_ids, arrays):
                out[int(i)] = a
        missing = [i for i, a in enumerate(out) if a is None]
        if missing:  # the reason the runner recorded for that protein (not always memory)
            reasons = {d["id"]: d["reason"] for d in self.stats.skipped}
            why = reasons.get(str(missing[0]), "skipped by the runner")
            raise InputError(f"{len(missing)} protein(s) could not be embedded (first: index {missing[0]}, "
                             f"{len(seqs[missing[0]])} residues): {why}")
        return out  # type: ignore[return-value]

    def embed(self, sequences: Iterable[str]) -> list[np.ndarray]:
        """Per-residue embeddings (L × D float32) in input order. Raises if one was skipped."""
        return self._collect(sequences, pooled=False)

    def embed_proteins(self, sequences: Iterable[str]) -> np.ndarray:
        """Per-protein embeddings, N × D float32: the mean over residues, or the backend's pooling."""
        seqs = list(sequences)
        if self.options.pooling != "mean":
            vectors = self._collect(seqs, pooled=True)
        else:
            vectors = [mean_vector(a) for a in self._collect(seqs, pooled=False)]
        if not vectors:
            return np.zeros((0, self.protein_dim), dtype=np.float32)
        return np.stack(vectors).astype(np.float32)


def load_embedder(spec: str | EmbedderSpec | dict, options: EmbedOptions | None = None) -> Embedder:
    """``Embedder(spec, options)``: kept as the name the rest of protlm has always called."""
    return Embedder(spec, options)
