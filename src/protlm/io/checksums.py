"""File checksums, computed once per file version in a process.

- :func:`sha256_file`: SHA-256 (hex), for provenance users compare with other tools
  (``sha256sum``): weights fingerprints, source files, database files.
- :func:`xxh3_file`: XXH3-128 (hex), ~10× faster, for protlm's own integrity checks of large
  files it wrote (shard content hashes, feature files).

Both are remembered per (path, size, mtime, inode), so asking again for an unchanged file costs
nothing, and a file rewritten in place is hashed anew.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_MEMO: dict[tuple, str] = {}


def _digest(path: str | os.PathLike, algo: str, block: int) -> str:
    path = Path(path)
    st = path.stat()
    memo = (algo, str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _MEMO:
        if algo == "xxh3_128":
            import xxhash

            h = xxhash.xxh3_128()
        else:
            h = hashlib.new(algo)
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
        _MEMO[memo] = h.hexdigest()
    return _MEMO[memo]


def sha256_file(path: str | os.PathLike) -> str:
    return _digest(path, "sha256", 1 << 22)


def xxh3_file(path: str | os.PathLike) -> str:
    return _digest(path, "xxh3_128", 1 << 24)
