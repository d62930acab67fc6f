"""Embed proteins with any protein LM in Hugging Face format: per residue and per protein.

``Embedder(model).embed(sequences)`` returns one float32 array of L × D per protein (special
tokens removed); ``embed_proteins`` the mean over the residues (D). The batching follows the
ProtTrans embedder's idea, made exact: proteins sorted by length, cut into batches by a budget
of padded tokens (and a cap on sequences), proteins longer than ``alone_above`` residues alone.
Attention is PyTorch SDPA (memory-efficient kernels), so a 35,000-residue protein fits in a few
GB on a CPU.

Failures never drop a protein silently. An out-of-memory error splits the batch in halves, down
to one protein; a single protein that does not fit the GPU moves to the CPU (``cpu_fallback``);
one that does not fit anywhere is skipped, logged and counted. Models with a hard position limit
(ESM-1b: 1,022 residues; BERT-style absolute positions) embed longer proteins in overlapping
windows whose per-residue vectors are averaged where they overlap (``long_policy="window"``), or
refuse them up front (``long_policy="error"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from protlm.embed.families import Family, TokenLayout, detect_family, read_config, token_layout
from protlm.errors import ConfigError, InputError

log = logging.getLogger("protlm.embed")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EmbedOptions:
    layer: int = -1  # index into the hidden states: -1 last layer, 0 the embedding layer output
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (bf16/fp16: GPU)
    int8: bool = False  # dynamic int8 quantisation of the linear layers (CPU)
    tokens_per_batch: int = 4000  # padded tokens per batch
    max_sequences: int = 100  # sequences per batch
    alone_above: int = 1000  # residues; longer proteins are embedded one at a time
    long_policy: str = "window"  # window | error, for models with a hard position limit
    window_overlap: int = 128  # residues shared by neighbouring windows
    cpu_fallback: bool = True  # a protein that does not fit the GPU is embedded on the CPU
    equal_length_batches: bool | None = None  # only equal lengths share a batch; None: on the CPU

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {sorted(DTYPES)}, not {self.dtype!r}")
        if self.long_policy not in ("window", "error"):
            raise ConfigError(f"--long-policy must be window or error, not {self.long_policy!r}")
        if self.tokens_per_batch < 1 or self.max_sequences < 1:
            raise ConfigError("--tokens-per-batch and --max-sequences must be positive")
        if self.window_overlap < 0:
            raise ConfigError("--window-overlap must be >= 0")


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


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None


class Embedder:
    """A loaded protein LM encoder with its family's conventions."""

    def __init__(self, model: str, options: EmbedOptions | None = None):
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # the load report lists the LM head as unused: expected here
        self.options = options or EmbedOptions()
        self.options.validate()
        self.model_name = str(model)
        self.config = read_config(self.model_name)
        self.family: Family = detect_family(self.config, self.model_name)
        self.device = resolve_device(self.options.device)
        dtype = DTYPES[self.options.dtype]
        if dtype != torch.float32 and self.device.type == "cpu":
            raise ConfigError(f"--dtype {self.options.dtype} is meant for GPUs; on a CPU use fp32 (or --int8)")
        if self.options.int8 and self.device.type != "cpu":
            raise ConfigError("--int8 (dynamic quantisation) runs on the CPU; use --dtype bf16/fp16 on GPUs")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_name, trust_remote_code=False)
        except Exception as exc:
            raise InputError(f"--model {self.model_name}: the tokenizer could not be loaded ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None
        self.layout: TokenLayout = token_layout(self.tokenizer, self.family)
        cls = getattr(transformers, self.family.encoder_class)
        extra = {"add_pooling_layer": False} if self.family.model_type in ("esm", "bert", "albert") else {}
        try:
            try:
                model_obj = cls.from_pretrained(self.model_name, dtype=dtype, attn_implementation="sdpa", **extra)
            except (ValueError, ImportError):  # a class without SDPA
                model_obj = cls.from_pretrained(self.model_name, dtype=dtype, attn_implementation="eager", **extra)
        except OSError as exc:
            raise InputError(f"--model {self.model_name}: the weights could not be loaded "
                             f"({str(exc).splitlines()[0][:200]})") from None
        model_obj.eval()
        if self.options.int8:
            model_obj = torch.ao.quantization.quantize_dynamic(model_obj, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model_obj.to(self.device)
        self._cpu_model = self.model if self.device.type == "cpu" else None
        self.dim = int(self.config.get("hidden_size") or self.config.get("d_model"))
        n_layers = int(self.config.get("num_hidden_layers") or self.config.get("num_layers") or 0)
        if not (-n_layers - 1 <= self.options.layer <= n_layers):
            raise ConfigError(f"--layer {self.options.layer}: the model has {n_layers} layers "
                              f"(valid: {-n_layers - 1} … {n_layers}; 0 is the embedding layer, -1 the last)")
        self.stats = EmbedStats()

    # ------------------------------------------------------------------ forward

    @property
    def max_residues(self) -> int | None:
        return self.family.max_residues

    def _forward(self, seqs: list[str], model, device: torch.device) -> list[np.ndarray]:
        encoded = [self.layout.encode(s) for s in seqs]
        width = max(len(e) for e in encoded)
        ids = np.full((len(encoded), width), self.layout.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e
            mask[row, :len(e)] = 1
        ids_t = torch.from_numpy(ids).to(device)
        # Without padding no mask is needed, and SDPA can take its fastest path.
        mask_t = None if mask.all() else torch.from_numpy(mask).to(device)
        want_all = self.options.layer != -1
        with torch.inference_mode():
            out = model(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=want_all)
            hidden = out.hidden_states[self.options.layer] if want_all else out.last_hidden_state
            hidden = hidden.float().cpu().numpy()
        start = len(self.layout.prefix)
        return [hidden[row, start:start + len(s)].copy() for row, s in enumerate(seqs)]

    def _cpu(self):
        if self._cpu_model is None:
            import copy

            self._cpu_model = copy.deepcopy(self.model).float().to("cpu")
        return self._cpu_model

    def _run(self, ids: list[str], seqs: list[str]) -> list[np.ndarray | None]:
        """Forward a batch; on OOM split it, then fall back to the CPU, then skip (logged)."""
        try:
            out = self._forward(seqs, self.model, self.device)
            self.stats.batches += 1
            return out
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if len(seqs) > 1:
            self.stats.oom_splits += 1
            half = len(seqs) // 2
            log.warning("out of memory on a batch of %d proteins; retrying in halves", len(seqs))
            return self._run(ids[:half], seqs[:half]) + self._run(ids[half:], seqs[half:])
        if self.device.type != "cpu" and self.options.cpu_fallback:
            log.warning("%s (%d residues) does not fit on %s; embedding it on the CPU", ids[0], len(seqs[0]), self.device)
            try:
                out = self._forward(seqs, self._cpu(), torch.device("cpu"))
                self.stats.cpu_fallbacks += 1
                self.stats.batches += 1
                return out
            except Exception as exc:
                if not _is_oom(exc):
                    raise
        reason = f"out of memory with {len(seqs[0])} residues"
        log.warning("skipped %s: %s", ids[0], reason)
        self.stats.skipped.append({"id": ids[0], "length": len(seqs[0]), "reason": reason})
        return [None]

    def _windowed(self, pid: str, seq: str) -> np.ndarray | None:
        """Overlapping windows of the model's limit; overlapping rows averaged."""
        size = self.max_residues
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

    # ------------------------------------------------------------------ batching

    def plan(self, lengths: list[int]) -> list[list[int]]:
        """Batches of indices: longest first, by padded-token budget and sequence cap.

        On a CPU only proteins of the same length share a batch: there a padded batch was slower
        than one protein at a time (the attention mask takes SDPA off its fastest kernel and the
        padding is wasted work; docs/benchmarks.md), while equal lengths need neither.
        """
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        exact = self.options.equal_length_batches
        if exact is None:
            exact = self.device.type == "cpu"
        extra = len(self.layout.prefix) + len(self.layout.suffix)
        batches, current, width = [], [], 0
        for i in order:
            n = lengths[i]
            if n > self.options.alone_above or (self.max_residues and n > self.max_residues):
                batches.append([i])
                continue
            w = max(width, n + extra)
            if current and (w * (len(current) + 1) > self.options.tokens_per_batch
                            or len(current) + 1 > self.options.max_sequences
                            or (exact and lengths[current[0]] != n)):
                batches.append(current)
                current, w = [], n + extra
            current.append(i)
            width = w
        if current:
            batches.append(current)
        return batches

    def check_lengths(self, ids: list[str], seqs: list[str]) -> None:
        if self.max_residues and self.options.long_policy == "error":
            too_long = [(i, len(s)) for i, s in zip(ids, seqs) if len(s) > self.max_residues]
            if too_long:
                pid, n = too_long[0]
                raise InputError(f"{len(too_long)} protein(s) exceed the model's limit of {self.max_residues} "
                                 f"residues (first: {pid}, {n} residues); use --long-policy window to embed them "
                                 f"in overlapping windows")

    def iter_embed(self, ids: list[str], seqs: list[str], progress: Callable[[int], None] | None = None
                   ) -> Iterator[tuple[list[str], list[np.ndarray | None]]]:
        """Yield (ids, per-residue arrays) batch by batch, longest proteins first."""
        self.check_lengths(ids, seqs)
        t0 = time.perf_counter()
        for batch in self.plan([len(s) for s in seqs]):
            b_ids = [ids[i] for i in batch]
            b_seqs = [seqs[i] for i in batch]
            if len(batch) == 1 and self.max_residues and len(b_seqs[0]) > self.max_residues:
                arrays = [self._windowed(b_ids[0], b_seqs[0])]
            else:
                arrays = self._run(b_ids, b_seqs)
            for a, s in zip(arrays, b_seqs):
                if a is not None:
                    self.stats.proteins += 1
                    self.stats.residues += len(s)
            self.stats.seconds = time.perf_counter() - t0
            if progress is not None:
                progress(sum(len(s) for s in b_seqs))
            yield b_ids, arrays

    def embed(self, sequences: Iterable[str]) -> list[np.ndarray]:
        """Per-residue embeddings (L × D float32) in input order. Raises if one was skipped."""
        seqs = list(sequences)
        ids = [str(i) for i in range(len(seqs))]
        out: list[np.ndarray | None] = [None] * len(seqs)
        for b_ids, arrays in self.iter_embed(ids, seqs):
            for i, a in zip(b_ids, arrays):
                out[int(i)] = a
        missing = [i for i, a in enumerate(out) if a is None]
        if missing:
            raise InputError(f"{len(missing)} protein(s) could not be embedded (first: index {missing[0]}, "
                             f"{len(seqs[missing[0]])} residues): out of memory")
        return out  # type: ignore[return-value]

    def embed_proteins(self, sequences: Iterable[str]) -> np.ndarray:
        """Per-protein embeddings: the mean over residues, N × D float32."""
        return np.stack([a.mean(axis=0) for a in self.embed(sequences)]).astype(np.float32)
