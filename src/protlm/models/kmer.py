"""The k-mer model: ProtVec-like context-free 3-mer vectors, their training and their folder.

The embedder that serves it (``protlm embed --model kmer`` or a model folder) is
:mod:`protlm.embed.backends.baselines`; ``protlm kmer-train`` calls :func:`train_kmer`.

**Training.** ProtVec (Asgari & Mofrad 2015) trained skip-gram on 3-mers. Skip-gram with
negative sampling implicitly factorises a shifted PMI matrix (Levy & Goldberg 2014), and the
explicit route, PPMI with context-distribution smoothing (context counts raised to 0.75) then a
truncated SVD, matches it on similarity tasks (Levy, Goldberg & Dagan 2015). That route is
deterministic and runs in minutes on one CPU core, so it is what we implement:

1. every overlapping 3-mer of every protein is a *word*; its *contexts* are the 3-mers that
   start 3, 6, …, 3·``window`` residues before or after it. That is exactly ProtVec's scheme of
   three non-overlapping reading frames, each read with a window of ``window`` 3-mers, counted
   over all three frames at once (3-mers that overlap the word are not its contexts). A 3-mer
   containing X is neither a word nor a context; proteins never share a window;
2. PPMI(w, c) = max(0, log(#(w,c) · Σ_c' #(c')^0.75 / (#(w) · #(c)^0.75)));
3. randomized SVD (scikit-learn, fixed seed) of the PPMI matrix to ``dim`` components; vectors
   are U·√S (the symmetric weighting Levy et al. recommend).

**Per residue**, the vector of the 3-mer centred on it; the first and last residues, which have
no centred 3-mer, take the nearest full one (the first and last 3-mer), so no position is padded.
A 3-mer that contains X, or was never seen in training, gives the zero vector ("no information";
it is not a learned UNK), and so does every residue of a protein shorter than 3 residues.

**Residue codes** (:func:`residue_codes`): ``ACDEFGHIKLMNPQRSTVWYX``, protlm's alphabet order
(:data:`protlm.data.alphabet.STANDARD`) followed by X. Sequences arrive cleaned (upper case,
20 standard residues + X); B/Z/U/O, should they appear, are read as X as the cleaning policy
does, and any other letter is an error. The one-hot and BLOSUM62 embedders use the same columns.

A trained model is a folder: ``config.json`` (``model_type: protlm_kmer``, k, dim, window, the
corpus and counts), ``vocab.txt`` (one 3-mer per line, row order) and ``model.safetensors``
(tensor ``vectors``, float16).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from protlm import __version__
from protlm.data.alphabet import RARE, STANDARD
from protlm.errors import ConfigError, InputError, model_label
from protlm.io.atomic import default_mode, publish_folder
from protlm.io.resources import checkpoint_folder

#: Residue columns (the 20 standard residues, then X) of the k-mer model, one-hot and BLOSUM62.
RESIDUES = STANDARD + "X"
X_CODE = 20

K = 3
N_KMERS = len(STANDARD) ** K  # 8,000 3-mers over the standard residues
MODEL_TYPE = "protlm_kmer"
SMOOTHING = 0.75


# --------------------------------------------------------------------------- residues and 3-mers


def _code_table() -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)
    for i, aa in enumerate(RESIDUES):
        table[ord(aa)] = i
    for aa in RARE:
        table[ord(aa)] = X_CODE
    return table


_CODES = _code_table()


def residue_codes(seq: str) -> np.ndarray:
    """Column index (0–19 standard, 20 X) of every residue; one clear error for anything else."""
    try:
        raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raw = None
    codes = _CODES[raw] if raw is not None else None
    if codes is None or (codes == 255).any():
        pos = next(i for i, ch in enumerate(seq) if ch not in RESIDUES + RARE)
        raise InputError(f"residue {seq[pos]!r} at position {pos + 1}: baseline embedders take cleaned sequences "
                         f"(the 20 standard residues and X, upper case)")
    return codes


def kmer_string(index: int) -> str:
    """The 3-mer with row-major index ``index`` over STANDARD (AAA = 0, AAC = 1, …, YYY = 7999)."""
    a, rest = divmod(index, 400)
    b, c = divmod(rest, 20)
    return STANDARD[a] + STANDARD[b] + STANDARD[c]


def kmer_indices(codes: np.ndarray) -> np.ndarray:
    """Index (0–7,999) of the 3-mer starting at each position, -1 where it contains X.

    Length ``len(codes) - 2`` (empty for proteins shorter than 3 residues).
    """
    c = codes.astype(np.int32)
    if len(c) < K:
        return np.zeros(0, dtype=np.int32)
    idx = c[:-2] * 400 + c[1:-1] * 20 + c[2:]
    bad = (c[:-2] == X_CODE) | (c[1:-1] == X_CODE) | (c[2:] == X_CODE)
    idx[bad] = -1
    return idx


# --------------------------------------------------------------------------- the model


class KmerModel:
    """Context-free 3-mer vectors (see the module docstring for training and conventions)."""

    def __init__(self, kmers: list[str], vectors: np.ndarray, config: dict,
                 folder: str | os.PathLike | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(kmers):
            raise InputError(f"k-mer model: {len(kmers)} k-mers but vectors of shape {vectors.shape}")
        self.folder = Path(folder) if folder is not None else None
        self.kmers = list(kmers)
        self.vectors = vectors
        self.config = dict(config)
        self.dim = int(vectors.shape[1])
        # 3-mer index → row of ``_table``; the extra last row is the zero vector (unknown / X).
        self._row = np.full(N_KMERS, len(kmers), dtype=np.int64)
        for row, kmer in enumerate(self.kmers):
            codes = residue_codes(kmer) if len(kmer) == K else None
            if codes is None or (codes == X_CODE).any():
                raise InputError(f"k-mer model: vocab entry {kmer!r} is not a 3-mer of standard residues")
            self._row[kmer_indices(codes)[0]] = row
        self._table = np.vstack([vectors, np.zeros((1, self.dim), dtype=np.float32)])

    def vector(self, kmer: str) -> np.ndarray:
        """The vector of one 3-mer (zero if it contains X or was not in the training corpus)."""
        if len(kmer) != K:
            raise InputError(f"{kmer!r} is not a 3-mer")
        idx = kmer_indices(residue_codes(kmer))
        return self._table[self._row[idx[0]]] if idx[0] >= 0 else self._table[-1]

    def residue_vectors(self, codes: np.ndarray) -> np.ndarray:
        """L × D float32 for one protein given as :func:`residue_codes`."""
        idx = kmer_indices(codes)
        if len(idx) == 0:
            return np.zeros((len(codes), self.dim), dtype=np.float32)
        rows = np.where(idx >= 0, self._row[np.maximum(idx, 0)], len(self.kmers))
        # residue i is the centre of 3-mer i-1; the two ends take the nearest full 3-mer
        rows = np.concatenate([rows[:1], rows, rows[-1:]])
        return self._table[rows]

    def forward(self, seqs: list[str]) -> list[np.ndarray]:
        """Per-residue vectors, L × D float32 each, of cleaned sequences, in input order."""
        return [self.residue_vectors(residue_codes(s)) for s in seqs]

    # ---------------------------------------------------------------- files

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model folder atomically (a temporary sibling folder, then one rename)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        if folder.exists():
            raise InputError(f"--out {folder}: already exists; remove it or choose another folder")
        if not folder.parent.is_dir():
            raise InputError(f"--out {folder}: the folder {folder.parent} does not exist")
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            config = {**self.config, "model_type": MODEL_TYPE, "k": K, "dim": self.dim, "kmers": len(self.kmers),
                      "dtype": "float16"}
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "vocab.txt").write_text("".join(k + "\n" for k in self.kmers))
            save_file({"vectors": self.vectors.astype(np.float16)}, str(tmp / "model.safetensors"))
            default_mode(tmp / "model.safetensors")  # safetensors creates 0600 files
            publish_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.config = config
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "KmerModel":
        """Load a folder written by :meth:`save` (``protlm kmer-train``)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        name = "config.json"
        try:
            config = json.loads((folder / name).read_text())
            name = "vocab.txt"
            kmers = (folder / name).read_text().split()
            name = "model.safetensors"
            vectors = load_file(str(folder / name))["vectors"]
        except FileNotFoundError:  # safetensors' own error names no file: the step says which
            raise InputError(f"{model_label()} {folder}: k-mer model folder without {name}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, OSError, SafetensorError) as exc:
            raise InputError(f"{model_label()} {folder}: "
                             f"unreadable k-mer model, {name} ({type(exc).__name__}: {exc})") from None
        if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE or str(config.get("k")) != str(K):
            what = (config.get("model_type"), config.get("k")) if isinstance(config, dict) else (None, None)
            raise InputError(f"{model_label()} {folder}: "
                             f"not a protlm 3-mer model (model_type {what[0]!r}, k {what[1]!r})")
        if vectors.ndim != 2 or vectors.shape[0] != len(kmers) or not np.isfinite(vectors).all():
            raise InputError(f"{model_label()} {folder}: "
                             f"its vectors ({'×'.join(map(str, vectors.shape))}) do not match its "
                             f"{len(kmers)} k-mers or hold NaN/inf values (a damaged or edited model folder)")
        return cls(kmers, vectors, config, folder=folder)


def is_kmer_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder whose config.json says ``model_type: protlm_kmer``."""
    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def default_kmer_folder() -> Path:
    """The committed default model (``checkpoints/protlm-kmer3-swissprot``), found by
    :func:`protlm.io.resources.checkpoint_folder` in a source checkout or the installed package."""

    return checkpoint_folder("protlm-kmer3-swissprot")


# --------------------------------------------------------------------------- training


class CooccurrenceCounter:
    """Counts (3-mer, context 3-mer) pairs in the same reading frame within ``window`` 3-mers.

    Proteins are concatenated with a run of X between them (long enough that no window spans
    two proteins) and counted in chunks; each chunk's pairs are summed with ``np.unique``,
    which needs far less memory than a bincount over all 64M cells.
    """

    def __init__(self, window: int, chunk_residues: int = 2_000_000) -> None:
        self.window = window
        self.chunk_residues = chunk_residues
        self.pairs = np.zeros(N_KMERS * N_KMERS, dtype=np.int64)  # one direction; symmetrised later
        self.unigrams = np.zeros(N_KMERS, dtype=np.int64)
        self.sequences = 0
        self.residues = 0
        self._buffer: list[str] = []
        self._buffered = 0
        self._separator = "X" * (K * window)

    def add(self, seq: str) -> None:
        self._buffer.append(seq)
        self._buffered += len(seq)
        self.sequences += 1
        self.residues += len(seq)
        if self._buffered >= self.chunk_residues:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        idx = kmer_indices(residue_codes(self._separator.join(self._buffer)))
        self._buffer, self._buffered = [], 0
        valid = idx >= 0
        self.unigrams += np.bincount(idx[valid], minlength=N_KMERS)
        for d in range(K, K * self.window + 1, K):
            a, b = idx[:-d], idx[d:]
            keep = (a >= 0) & (b >= 0)
            codes = a[keep] * N_KMERS + b[keep]  # < 64,000,000: fits int32
            cells, counts = np.unique(codes, return_counts=True)
            self.pairs[cells] += counts

    def matrix(self, kmers: np.ndarray) -> np.ndarray:
        """Symmetric co-occurrence counts among ``kmers`` (indices), each pair seen from both sides."""
        self.flush()
        m = self.pairs.reshape(N_KMERS, N_KMERS)
        if len(kmers) < N_KMERS:
            m = m[np.ix_(kmers, kmers)]
        return m + m.T

    def release(self) -> None:
        """Drop the one-direction counts (512 MB) once :meth:`matrix` has been taken."""
        self.pairs = np.zeros(0, dtype=np.int64)


def ppmi(counts: np.ndarray, alpha: float = SMOOTHING) -> np.ndarray:
    """Positive PMI with context-distribution smoothing (Levy, Goldberg & Dagan 2015), float32.

    PMI(w, c) = log(#(w,c) / (#(w) · P_alpha(c))) with P_alpha(c) = #(c)^alpha / Σ #(c')^alpha;
    negative values and unseen pairs become 0.
    """
    n_w = counts.sum(axis=1, dtype=np.float64)
    n_c = counts.sum(axis=0, dtype=np.float64)
    p_c = n_c ** alpha
    p_c /= p_c.sum()
    out = np.zeros(counts.shape, dtype=np.float32)
    for start in range(0, counts.shape[0], 1000):  # row blocks keep the float64 temporaries small
        block = counts[start:start + 1000].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            pmi = np.log(block / (n_w[start:start + 1000, None] * p_c[None, :]))
        out[start:start + 1000] = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    return out


@dataclass
class KmerTraining:
    """Options of :func:`train_kmer` (the CLI flags of ``protlm kmer-train``)."""

    dim: int = 64
    window: int = 5
    min_count: int = 1
    seed: int = 0

    def validate(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"--dim must be >= 1, not {self.dim}")
        if self.window < 1:
            raise ConfigError(f"--window must be >= 1, not {self.window}")
        if self.min_count < 1:
            raise ConfigError(f"--min-count must be >= 1, not {self.min_count}")
        if not 0 <= self.seed < 2 ** 32:  # the randomized SVD's random_state range
            raise ConfigError(f"--seed must be between 0 and {2 ** 32 - 1}, not {self.seed}")


def train_kmer(sequences: Iterable[str], options: KmerTraining | None = None,
               progress: Callable[[int], None] | None = None, source: dict | None = None) -> KmerModel:
    """Train 3-mer vectors: co-occurrence counts → PPMI (smoothing 0.75) → randomized SVD.

    ``progress(n)`` is called with the number of sequences read; ``source`` (e.g. the corpus
    file name and how it was sampled) is recorded in the model's config.
    """
    from sklearn.utils.extmath import randomized_svd

    options = options or KmerTraining()
    options.validate()
    t0 = time.perf_counter()
    counter = CooccurrenceCounter(options.window)
    for seq in sequences:
        counter.add(seq)
        if progress is not None:
            progress(1)
    counter.flush()
    seconds_counting = time.perf_counter() - t0
    seen = np.flatnonzero(counter.unigrams >= options.min_count)
    counts = counter.matrix(seen)
    counter.release()
    with_context = counts.sum(axis=1) > 0
    keep = seen[with_context]
    if len(keep) <= options.dim:
        rare = int((counter.unigrams > 0).sum()) - len(seen)
        why = (f"; {rare} more occur fewer than --min-count {options.min_count} times" if rare else "")
        raise InputError(f"the corpus is too small: {len(keep)} distinct 3-mers with contexts "
                         f"({counter.sequences} sequences){why}, need more than --dim {options.dim}")
    if len(keep) < len(seen):
        counts = counts[np.ix_(with_context, with_context)]
    total_pairs = int(counts.sum())
    matrix = ppmi(counts)
    del counts
    u, s, _ = randomized_svd(matrix, n_components=options.dim, n_iter=5, random_state=options.seed)
    vectors = (u * np.sqrt(s)[None, :]).astype(np.float32)

    config = {
        "model_type": MODEL_TYPE, "k": K, "dim": options.dim, "window": options.window,
        "context": f"3-mers starting 3, 6, ..., {K * options.window} residues before or after (same reading frame)",
        "weighting": "PPMI, context counts ^0.75; randomized SVD; vectors U*sqrt(S)",
        "min_count": options.min_count, "seed": options.seed,
        **(source or {}),
        "sequences": counter.sequences, "residues": counter.residues,
        "kmers": len(keep), "cooccurrences": total_pairs,
        "unknown": "zero vector (3-mers with X or unseen)", "ends": "nearest full 3-mer",
        "seconds_counting": round(seconds_counting, 1), "seconds": round(time.perf_counter() - t0, 1),
        "protlm_version": __version__,
    }
    return KmerModel([kmer_string(int(i)) for i in keep], vectors, config)
