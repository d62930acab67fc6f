"""Read prepared shards (``protlm prepare`` output) without loading them into memory."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np

from protlm.data.alphabet import ALPHABET
from protlm.errors import InputError

#: The format of a prepared folder, written by :mod:`protlm.data.prepare` and read here.
FORMAT = "protlm-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")

_DECODE = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)


def load_manifest(path: str | Path) -> dict:
    """The manifest of a prepared folder, checked for format and version."""
    path = Path(path)
    mpath = path / "manifest.json" if path.is_dir() else path
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise InputError(f"{mpath}: no such file (is this a folder made by protlm prepare?)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{mpath}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    vocab = manifest.get("vocab")
    alphabet = vocab.get("alphabet") if isinstance(vocab, dict) else None
    if alphabet is not None and alphabet != list(ALPHABET):
        # the token ids index this alphabet: read with protlm's, they would be other residues
        raise InputError(f"{mpath}: its token ids index the alphabet {alphabet!r}, not protlm's "
                         f"{''.join(ALPHABET)}; prepare again")
    try:
        for split in SPLITS:
            manifest["splits"][split]["shards"]  # noqa: B018 (presence)
    except (KeyError, TypeError):
        raise InputError(f"{mpath}: manifest without the shard list of every split; prepare again") from None
    _check_shard_list(mpath, manifest)
    return manifest


def _shard_path(mpath: Path, rel) -> str:
    """A shard file named by the manifest: a relative path inside the prepared folder (a path
    that leaves it, ``../..`` or absolute, is refused: the manifest is data, not a pointer)."""
    if not isinstance(rel, str) or not rel:
        raise InputError(f"{mpath}: shard file {rel!r} is not a path; prepare again")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise InputError(f"{mpath}: shard file {rel!r} lies outside the prepared folder; prepare again")
    return rel


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shard_list(mpath: Path, manifest: dict) -> None:
    """Cross-check the shard lists, so that a damaged or edited manifest is refused before
    training instead of silently training on a subset (or twice on a shard): every entry names
    three files inside the folder, no file twice, each split's record total is the sum of its
    shards', and the shards are chunks 0 .. ``chunks``-1 of each split, in order."""
    seen: set[str] = set()
    n_chunks = manifest.get("chunks")
    if n_chunks is not None and not _count(n_chunks):
        raise InputError(f"{mpath}: chunk count {n_chunks!r} is not a count; prepare again")
    for split in SPLITS:
        entry = manifest["splits"][split]
        shards = entry["shards"]
        if not isinstance(shards, list) or not all(isinstance(sh, dict) for sh in shards):
            raise InputError(f"{mpath}: splits.{split}.shards is not a list of shard entries; prepare again")
        for k, shard in enumerate(shards):
            for kind in ("tokens", "offsets", "ids"):
                rel = _shard_path(mpath, shard.get(kind))
                if rel in seen:
                    raise InputError(f"{mpath}: shard file {rel} is listed twice; prepare again")
                seen.add(rel)
            if not _count(shard.get("records")):
                raise InputError(f"{mpath}: splits.{split}.shards[{k}] without a record count; prepare again")
            if n_chunks is not None and shard["tokens"] != f"chunks/c{k:06d}.{split}.tokens":
                raise InputError(f"{mpath}: splits.{split}.shards[{k}] is {shard['tokens']}, not chunk {k} "
                                 "(shards missing, added or reordered); prepare again")
        if n_chunks is not None and len(shards) != n_chunks:
            raise InputError(f"{mpath}: splits.{split} lists {len(shards)} shards, the manifest made "
                             f"{n_chunks} chunks; prepare again")
        total = sum(sh["records"] for sh in shards)
        if entry.get("records") != total:
            raise InputError(f"{mpath}: splits.{split}.records is {entry.get('records')!r}, its shards hold "
                             f"{total}; prepare again")


def check_shard(folder: Path, shard: dict) -> np.ndarray:
    """The offsets of one shard, after checking them against the token file (cheap: sizes, and
    one vectorised pass for the largest token id).

    A truncated or padded ``.tokens`` file, offsets that are not a non-decreasing array from 0,
    counts that disagree with the manifest or token ids outside the alphabet are a clear error,
    never empty sequences or an index error deep in training."""
    off_path, tok_path = folder / shard["offsets"], folder / shard["tokens"]
    try:
        off = np.load(off_path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{off_path}: missing shard file; prepare again (or `protlm prepare --verify`)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{off_path}: not a readable offsets file ({exc}); prepare again") from None
    if off.ndim != 1 or off.dtype.kind not in "iu" or len(off) < 1 or off[0] != 0 or (np.diff(off) < 0).any():
        raise InputError(f"{off_path}: malformed offsets (must be non-decreasing integers from 0); prepare again")
    try:
        size = tok_path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{tok_path}: missing shard file; prepare again") from None
    if size != int(off[-1]):
        raise InputError(f"{tok_path}: {size:,} bytes, its offsets say {int(off[-1]):,} (truncated or altered); "
                         "prepare again into a new folder")
    records = shard.get("records")
    if records is not None and records != len(off) - 1:
        raise InputError(f"{off_path}: {len(off) - 1} records, the manifest says {records}; prepare again")
    if size:
        # a token id outside the alphabet would index past the trainer's lookup tables; one
        # vectorised pass over the mapped file (GB/s) is cheap next to the training it protects
        top = int(np.max(np.memmap(tok_path, dtype=np.uint8, mode="r")))
        if top >= len(ALPHABET):
            raise InputError(f"{tok_path}: token id {top} outside the alphabet (0-{len(ALPHABET) - 1}); "
                             "the file is damaged, prepare again into a new folder")
    return off


class ShardedDataset:
    """One split of a prepared folder as a random-access sequence of token arrays.

    Token files are memory-mapped, so opening Swiss-Prot costs a few MB of offsets; item ``i``
    is a ``uint8`` array of token ids (index into :data:`~protlm.data.alphabet.ALPHABET`).
    """

    def __init__(self, folder: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.split = split
        self._tokens = []
        offsets = []
        for shard in self.manifest["splits"][split]["shards"]:
            off = check_shard(self.folder, shard)
            if off[-1] == 0:
                continue
            self._tokens.append(np.memmap(self.folder / shard["tokens"], dtype=np.uint8, mode="r"))
            offsets.append(off)
        self._offsets = offsets
        counts = np.array([len(o) - 1 for o in offsets], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        self.lengths = (
            np.concatenate([np.diff(o) for o in offsets]) if offsets else np.zeros(0, np.int64)
        )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[s])
        off = self._offsets[s]
        return np.asarray(self._tokens[s][off[j] : off[j + 1]])

    def sequence(self, i: int) -> str:
        return _DECODE[self[i]].tobytes().decode("ascii")

    def ids(self) -> list[str]:
        out: list[str] = []
        for shard in self.manifest["splits"][self.split]["shards"]:
            # one id per b"\n"-ended line; not str.splitlines(), which also splits on \x1c,
            # \x85, \u2028 ... that an id may contain; ids are decoded like read_fasta's
            text = (self.folder / shard["ids"]).read_bytes().decode("utf-8", errors="replace")
            out.extend(text.split("\n")[:-1])
        return out
