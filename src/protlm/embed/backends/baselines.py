"""The papers' baseline embedders: ``onehot``, ``blosum62``, ``kmer`` and k-mer model folders.

ProtTrans and ProteinLM compare LM embeddings against inputs that need no language model. Here
they are embedder backends like any other (:mod:`protlm.embed.backend`), so every task and
``protlm embed --model onehot|blosum62|kmer`` compare them on equal terms.

Residue columns (one-hot and BLOSUM62): ``ACDEFGHIKLMNPQRSTVWYX``, protlm's alphabet order
followed by X (:func:`protlm.models.kmer.residue_codes`: B/Z/U/O read as X, any other letter is
an error).

- ``onehot`` (D = 21): a 1 in the residue's column; X has its own column, so "unknown" is a
  feature rather than an all-zero row.
- ``blosum62`` (D = 21): the residue's row of NCBI's BLOSUM62 matrix restricted to the same 21
  columns (the X row and column are NCBI's, e.g. X–X = -1); raw integer scores, not rescaled.
  The values are NCBI's published matrix (a public table, embedded below): neither biopython
  nor pyhmmer (whose builders accept ``score_matrix="BLOSUM62"``) exposes its values.
- ``kmer`` (D = 64 for the committed model) and any folder written by ``protlm kmer-train``:
  ProtVec-like context-free 3-mer vectors; the model, its training and its folder are
  :mod:`protlm.models.kmer`.

Per protein: the mean over residues, as for every embedder.
"""

from __future__ import annotations

import hashlib

import numpy as np

from protlm.embed.backend import Backend, folder_weights_sha256
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError, model_label
from protlm.models import kmer
from protlm.models.kmer import MODEL_TYPE, RESIDUES, KmerModel, is_kmer_folder, residue_codes

# NCBI's BLOSUM62 (ftp.ncbi.nih.gov/blast/matrices/BLOSUM62), as published.
_BLOSUM62_NCBI = """
   A  R  N  D  C  Q  E  G  H  I  L  K  M  F  P  S  T  W  Y  V  B  Z  X  *
A  4 -1 -2 -2  0 -1 -1  0 -2 -1 -1 -1 -1 -2 -1  1  0 -3 -2  0 -2 -1  0 -4
R -1  5  0 -2 -3  1  0 -2  0 -3 -2  2 -1 -3 -2 -1 -1 -3 -2 -3 -1  0 -1 -4
N -2  0  6  1 -3  0  0  0  1 -3 -3  0 -2 -3 -2  1  0 -4 -2 -3  3  0 -1 -4
D -2 -2  1  6 -3  0  2 -1 -1 -3 -4 -1 -3 -3 -1  0 -1 -4 -3 -3  4  1 -1 -4
C  0 -3 -3 -3  9 -3 -4 -3 -3 -1 -1 -3 -1 -2 -3 -1 -1 -2 -2 -1 -3 -3 -2 -4
Q -1  1  0  0 -3  5  2 -2  0 -3 -2  1  0 -3 -1  0 -1 -2 -1 -2  0  3 -1 -4
E -1  0  0  2 -4  2  5 -2  0 -3 -3  1 -2 -3 -1  0 -1 -3 -2 -2  1  4 -1 -4
G  0 -2  0 -1 -3 -2 -2  6 -2 -4 -4 -2 -3 -3 -2  0 -2 -2 -3 -3 -1 -2 -1 -4
H -2  0  1 -1 -3  0  0 -2  8 -3 -3 -1 -2 -1 -2 -1 -2 -2  2 -3  0  0 -1 -4
I -1 -3 -3 -3 -1 -3 -3 -4 -3  4  2 -3  1  0 -3 -2 -1 -3 -1  3 -3 -3 -1 -4
L -1 -2 -3 -4 -1 -2 -3 -4 -3  2  4 -2  2  0 -3 -2 -1 -2 -1  1 -4 -3 -1 -4
K -1  2  0 -1 -3  1  1 -2 -1 -3 -2  5 -1 -3 -1  0 -1 -3 -2 -2  0  1 -1 -4
M -1 -1 -2 -3 -1  0 -2 -3 -2  1  2 -1  5  0 -2 -1 -1 -1 -1  1 -3 -1 -1 -4
F -2 -3 -3 -3 -2 -3 -3 -3 -1  0  0 -3  0  6 -4 -2 -2  1  3 -1 -3 -3 -1 -4
P -1 -2 -2 -1 -3 -1 -1 -2 -2 -3 -3 -1 -2 -4  7 -1 -1 -4 -3 -2 -2 -1 -2 -4
S  1 -1  1  0 -1  0  0  0 -1 -2 -2  0 -1 -2 -1  4  1 -3 -2 -2  0  0  0 -4
T  0 -1  0 -1 -1 -1 -1 -2 -2 -1 -1 -1 -1 -2 -1  1  5 -2 -2  0 -1 -1  0 -4
W -3 -3 -4 -4 -2 -2 -3 -2 -2 -3 -2 -3 -1  1 -4 -3 -2 11  2 -3 -4 -3 -2 -4
Y -2 -2 -2 -3 -2 -1 -2 -3  2 -1 -1 -2 -1  3 -3 -2 -2  2  7 -1 -3 -2 -1 -4
V  0 -3 -3 -3 -1 -2 -2 -3 -3  3  1 -2  1 -1 -2 -2  0 -3 -1  4 -3 -2 -1 -4
B -2 -1  3  4 -3  0  1 -1  0 -3 -4  0 -3 -3 -2  0 -1 -4 -3 -3  4  1 -1 -4
Z -1  0  0  1 -3  3  4 -2  0 -3 -3  1 -1 -3 -1  0 -1 -3 -2 -2  1  4 -1 -4
X  0 -1 -1 -1 -2 -1 -1 -1 -1 -1 -1 -1 -1 -1 -2  0  0 -2 -1 -1 -1 -1 -1 -4
* -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4 -4  1
"""


def _parse_ncbi(text: str) -> dict[tuple[str, str], int]:
    lines = [ln.split() for ln in text.strip("\n").splitlines()]
    cols = lines[0]
    return {(row[0], c): int(v) for row in lines[1:] for c, v in zip(cols, row[1:])}


def blosum62(letters: str = RESIDUES) -> np.ndarray:
    """BLOSUM62 scores among ``letters`` (any of NCBI's 24 symbols), as an int array."""
    scores = _parse_ncbi(_BLOSUM62_NCBI)
    return np.array([[scores[(a, b)] for b in letters] for a in letters], dtype=np.int64)


def onehot_table() -> np.ndarray:
    """One-hot over ``ACDEFGHIKLMNPQRSTVWYX`` (D = 21; X has its own column)."""
    return np.eye(len(RESIDUES))


def blosum62_table() -> np.ndarray:
    """Each residue's BLOSUM62 row over ``ACDEFGHIKLMNPQRSTVWYX`` (D = 21, raw scores)."""
    return blosum62(RESIDUES)


# --------------------------------------------------------------------------- backends


class BaselineBackend(Backend):
    """Shared base: subclasses implement ``_embed_codes`` (L codes → L × D float32).

    Baselines are cheap and context-free, so the runner gives them large batches of any lengths.
    """

    default_tokens_per_batch = 200_000
    default_max_sequences = 100_000
    default_alone_above = 10_000_000  # context-free: no reason to run long proteins alone

    def _embed_codes(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        """Per-residue embeddings, L × D float32 each, in input order."""
        return [self._embed_codes(residue_codes(s)) for s in seqs]


class TableBackend(BaselineBackend):
    """A fixed residue → vector table (one-hot, BLOSUM62): row ``code`` of ``table``."""

    def __init__(self, name: str, table: np.ndarray) -> None:
        self.source = self.family = name
        self.model_type = f"protlm_{name}"
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.dim = int(self.table.shape[1])

    def _embed_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.table[codes]


class KmerBackend(BaselineBackend):
    """A :class:`protlm.models.kmer.KmerModel` as an embedder; ``model`` is the model itself."""

    family = "kmer"
    model_type = MODEL_TYPE

    def __init__(self, model: KmerModel, name: str | None = None) -> None:
        self.model = model
        self.name = self.source = name or (str(model.folder) if model.folder is not None else "kmer")
        self.dim = model.dim

    def _embed_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.model.residue_vectors(codes)

    def fingerprint(self) -> str:
        if self.model.folder is not None:
            return f"kmer:{folder_weights_sha256(self.model.folder)}"
        return "kmer:in-memory-" + hashlib.sha256(self.model.vectors.tobytes()).hexdigest()[:16]


def refuse_lm_options(name: str, options: EmbedOptions | None) -> None:
    """LM-only options (a layer, a precision, int8) mean nothing here: say so instead of ignoring them."""
    if options is None:
        return
    given = options.lm_options_set()
    if given:
        raise ConfigError(f"{model_label()} {name} is a baseline embedder: it has no layers or precision "
                          f"({', '.join(given)}: only a language model takes {'it' if len(given) == 1 else 'them'})")


# --------------------------------------------------------------------------- registration


@register(names=("onehot",), help="one-hot over the 20 residues + X (D = 21)")
def _onehot(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    return TableBackend("onehot", onehot_table())


@register(names=("blosum62",), help="each residue's BLOSUM62 row (D = 21)")
def _blosum62(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    return TableBackend("blosum62", blosum62_table())


@register(names=("kmer",), help="the committed ProtVec-like 3-mer model (D = 64)")
def _kmer(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    folder = kmer.default_kmer_folder()
    if not is_kmer_folder(folder):
        raise InputError(f"{model_label()} kmer: the default k-mer model {folder} is missing; train one with "
                         f"`protlm kmer-train FASTA --out DIR` and pass DIR as --model")
    return KmerBackend(KmerModel.load(folder), name="kmer")


@register(model_types=(MODEL_TYPE,), help="a k-mer model folder (protlm kmer-train)")
def _kmer_folder(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    return KmerBackend(KmerModel.load(source))
