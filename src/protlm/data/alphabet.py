"""The residue alphabet and the one cleaning policy protlm applies to protein sequences.

Cleaning policy (applied by every reader, documented in docs/data.md):

1. letters are upper-cased;
2. whitespace anywhere inside the sequence (spaces, tabs, CR, LF) is removed;
3. gap characters ``-`` and ``.`` are removed (aligned FASTA becomes the plain sequence);
4. a run of ``*`` (translation stop) at the very end is removed; ``*`` anywhere else is an error;
5. the rare residues B, O, U, Z become X (as ProtTrans and ESM training data did) unless the
   policy says ``rare="keep"``;
6. any other character (digits, J, punctuation, control bytes) is an error naming the record,
   the line and the column.

The same rules are implemented as two byte translation tables so that cleaning and
tokenising a whole record is a couple of C-level ``bytes.translate`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from protlm.errors import ConfigError

#: The 20 standard amino acids (alphabetical by one-letter code), X, then the rare B Z U O.
#: A residue's token id in prepared shards is its index here.
ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBZUO"
STANDARD = ALPHABET[:20]
RARE = "BZUO"
#: B/Z/U/O → X (what ProtTrans and ESM do): the one table every reader and embedder uses
RARE_TO_X = str.maketrans(RARE, "X" * len(RARE))
UNKNOWN = "X"

WHITESPACE = b" \t\r\n\v\f"
GAPS = b"-."
STOP = ord("*")

#: Codes used inside encoded byte strings for the non-residue outcomes.
DELETE_CODE = 253
STOP_CODE = 254
INVALID_CODE = 255

RARE_CHOICES = ("X", "keep")


@dataclass(frozen=True)
class CleaningPolicy:
    """How raw FASTA sequence text becomes a protein sequence.

    ``rare="X"`` maps B/O/U/Z to X (default, as the papers did); ``rare="keep"`` keeps them.
    """

    rare: str = "X"

    def __post_init__(self) -> None:
        if self.rare not in RARE_CHOICES:

            raise ConfigError(f"rare residue policy must be one of {RARE_CHOICES}, not {self.rare!r}")

    @property
    def tables(self) -> "CleaningTables":
        return _tables(self.rare)

    def as_dict(self) -> dict:
        return {
            "uppercase": True,
            "remove_whitespace": True,
            "remove_gaps": GAPS.decode(),
            "strip_terminal_stop": True,
            "rare_residues": "mapped to X" if self.rare == "X" else "kept",
        }


@dataclass(frozen=True, eq=False)
class CleaningTables:
    encode: bytes  # raw byte -> token id, STOP_CODE or INVALID_CODE
    decode: bytes  # token id -> upper-case letter
    delete: bytes  # bytes removed before encoding (whitespace and gaps)
    lookup: np.ndarray  # raw byte -> token id, DELETE_CODE, STOP_CODE or INVALID_CODE
    encode_table: bytes  # ``lookup`` as a ``bytes.translate`` table


@lru_cache(maxsize=None)
def _tables(rare: str) -> CleaningTables:
    encode = bytearray([INVALID_CODE]) * 256
    for i, aa in enumerate(ALPHABET):
        target = ALPHABET.index(UNKNOWN) if (rare == "X" and aa in RARE) else i
        encode[ord(aa)] = target
        encode[ord(aa.lower())] = target
    encode[STOP] = STOP_CODE
    decode = bytearray(b"?") * 256
    for i, aa in enumerate(ALPHABET):
        decode[i] = ord(aa)
    delete = WHITESPACE + GAPS
    lookup = np.frombuffer(bytes(encode), dtype=np.uint8).copy()
    lookup[list(delete)] = DELETE_CODE
    lookup.setflags(write=False)
    return CleaningTables(bytes(encode), bytes(decode), delete, lookup, lookup.tobytes())


def vocabulary(policy: CleaningPolicy) -> list[str]:
    """Residue letters that can appear in cleaned output, in token-id order."""
    return list(ALPHABET if policy.rare == "keep" else ALPHABET[:21])
