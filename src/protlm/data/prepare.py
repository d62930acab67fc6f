"""``protlm prepare``: FASTA(.gz) → tokenised pretraining shards.

Layout of an output folder (format ``protlm-shards`` v1, defined and read by
:mod:`protlm.data.shards`)::

    OUT/manifest.json                 written last, by the merge step
    OUT/chunks/c000007.train.tokens   uint8 token ids (index into ALPHABET), records back to back
    OUT/chunks/c000007.train.offsets.npy  int64, n+1 offsets into the tokens file
    OUT/chunks/c000007.train.ids.txt  one id per line
    OUT/chunks/c000007.valid.*        the same for the validation split
    OUT/chunks/c000007.keys.npy       per kept record: id hash, sequence hash, line, split, length
    OUT/chunks/c000007.done.json      written last for the chunk: its counts and fingerprint
    OUT/parts/part-0-of-1.json        which chunks a (``--shard i/N``) run was responsible for

How the work is cut: the input is read as one stream and cut into chunks of whole records
of about ``chunk_mb`` MB of FASTA text. Chunk boundaries depend only on the input bytes and
``chunk_mb``, so a chunk's files can be reused by a resumed or re-sharded run: a chunk is
skipped when its ``done.json`` names the same content hash and options. ``--shard i/N``
processes the chunks with ``index % N == i``; ``merge`` joins the parts. A background thread
reads the input, computes its SHA-256 and inflates it (all three release the GIL) while the
main thread cuts the chunks and, with one worker, encodes them.

Split: a record goes to validation when the 64-bit XXH3 hash of its id (seeded by the salt),
as a fraction of 2**64, is below ``valid_fraction``: the split of an id does not depend on
input order, on other records or on the machine. Sequences are compared by 128-bit XXH3.

Global checks need all chunks and run in the merge step (memory: 48 bytes per record, i.e.
25 MB for Swiss-Prot's 516k records): duplicate ids (error, or renamed with
``rename_duplicates``), exact duplicate sequences (counted; removed with ``dedup``, keeping
the first occurrence in file order).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from protlm import __version__
from protlm.data.alphabet import ALPHABET, CleaningPolicy, vocabulary
from protlm.data.fasta import (
    UTF8_BOM,
    FastaStats,
    cut_record_blocks,
    encode_block,
    iter_file_blocks,
    read_ahead,
    read_fasta,
    split_block,
)
from protlm.data.shards import FORMAT, FORMAT_VERSION, SPLITS, check_shard, load_manifest
from protlm.errors import ConfigError, InputError
from protlm.io.atomic import write_bytes, write_json, write_npy
from protlm.io.checksums import xxh3_file
from protlm.io.outputs import output_lock

log = logging.getLogger(__name__)

SUB_BLOCK = 1 << 22  # records are encoded 4 MB at a time: bounded temporary arrays
LENGTH_EDGES = [0, 50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000]
KEY_DTYPE = np.dtype(
    [("id_hash", "<u8"), ("seq_hash", "<u8", (2,)), ("line", "<i8"), ("valid", "u1"), ("length", "<i4")]
)


@dataclass(frozen=True)
class PrepareOptions:
    """Options that decide the content of every chunk (part of the chunk fingerprint)."""

    valid_fraction: float = 0.01
    split_salt: str = "protlm"
    min_length: int = 1
    max_length: int | None = None  # None: keep whole proteins of any length (trainers crop)
    rare: str = "X"
    skip_invalid: bool = False
    chunk_mb: float = 32.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction must be in [0, 1), not {self.valid_fraction}")
        if self.min_length < 1:
            raise ConfigError(f"min_length must be >= 1, not {self.min_length}")
        if self.max_length is not None and self.max_length < self.min_length:
            raise ConfigError(
                f"max_length ({self.max_length}) must be >= min_length ({self.min_length})"
            )
        if not 0 < self.chunk_mb < math.inf:  # also NaN and inf (int() of them would crash)
            raise ConfigError(f"chunk_mb must be a finite number > 0, not {self.chunk_mb}")
        CleaningPolicy(self.rare)

    def fingerprint(self, exclude_digest: str) -> str:
        payload = json.dumps({**asdict(self), "exclude": exclude_digest}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Exclusions:
    """Ids and sequences to remove before the split (e.g. benchmark test sets)."""

    ids: frozenset[bytes] = frozenset()
    seq_hashes: frozenset[bytes] = frozenset()
    sources: list[str] = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        for x in sorted(self.ids):
            h.update(x + b"\n")
        for x in sorted(self.seq_hashes):
            h.update(x)
        return h.hexdigest()[:16]


def _seq_hash(tokens: bytes) -> bytes:
    return xxhash.xxh3_128_digest(tokens)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_exclusions(paths: Iterable[str | os.PathLike], policy: CleaningPolicy) -> Exclusions:
    """Read ``--exclude`` files: FASTA (ids and sequences) or text (one id or sequence a line).

    A text line counts both as an id and, if it is a valid protein sequence, as a sequence.
    """
    ids: set[bytes] = set()
    seqs: set[bytes] = set()
    sources = []
    tables = policy.tables
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise InputError(f"{p}: is a folder (given to --exclude); give a FASTA(.gz) file or a text list")
        if not p.is_file():
            raise InputError(f"{p}: no such file (given to --exclude)")
        sources.append(str(p))
        with open(p, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(UTF8_BOM):  # files saved by some Windows editors
            head = head[len(UTF8_BOM):]
        head = head.lstrip()
        if head.startswith(b">") or head.startswith(b"\x1f\x8b"):
            for rec in read_fasta(p, policy, rename_duplicates=True):
                ids.add(rec.id.encode())
                seqs.add(_seq_hash(rec.sequence.encode().translate(tables.encode)))
            continue
        with open(p, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if n == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                # a compressed (other than gzip) or binary file would silently exclude nothing
                if b"\x00" in raw or not _utf8(raw):
                    raise InputError(f"{p}:{n}: not a text file (binary data or not UTF-8; given to --exclude): "
                                     "give a FASTA(.gz) file or plain text with one id or sequence a line")
                word = raw.strip()
                if not word:
                    continue
                ids.add(word)
                tokens = word.translate(tables.encode, tables.delete).rstrip(b"\xfe")
                if tokens and max(tokens) < 254:
                    seqs.add(_seq_hash(tokens))
    return Exclusions(frozenset(ids), frozenset(seqs), sources)


# --------------------------------------------------------------------------- content hashes


def chunk_file_names(index: int) -> list[str]:
    name = chunk_name(index)
    return [f"{name}.{s}.{kind}" for s in SPLITS for kind in ("tokens", "offsets.npy", "ids.txt")] + [
        f"{name}.keys.npy"]


def chunk_hashes(chunk_dir: Path, index: int) -> dict[str, str]:
    return {n: xxh3_file(chunk_dir / n) for n in chunk_file_names(index)}


def _chunk_intact(chunk_dir: Path, index: int, expected: dict | None) -> bool:
    """Whether the chunk's files are those its done.json recorded. A done.json without hashes
    (damaged, or of an old protlm) vouches for nothing: the chunk is redone, never trusted."""
    if not expected:
        return False
    try:
        return chunk_hashes(chunk_dir, index) == expected
    except OSError:
        return False


# --------------------------------------------------------------------------- one chunk


def chunk_name(index: int) -> str:
    return f"c{index:06d}"


@dataclass
class _ChunkJob:
    index: int
    block: bytes
    first_line: int
    block_hash: str


_WORKER_STATE: dict = {}


def _init_worker(out: str, source: str, options: PrepareOptions, exclusions: Exclusions, fp: str):
    _WORKER_STATE.update(out=Path(out), source=source, options=options, exclusions=exclusions, fp=fp)


def _process_chunk(job: _ChunkJob) -> dict:
    st = _WORKER_STATE
    return process_chunk(job, st["out"], st["source"], st["options"], st["exclusions"], st["fp"])


def split_seed(salt: str) -> int:
    return xxhash.xxh3_64_intdigest(salt.encode())


def id_hashes(ids: list[bytes], salt: str) -> np.ndarray:
    """64-bit XXH3 of each id, seeded by the salt: the split key (stable across versions)."""
    hashes = map(xxhash.xxh3_64_intdigest, ids, itertools.repeat(split_seed(salt)))
    return np.fromiter(hashes, dtype=np.uint64, count=len(ids))


def sequence_hashes(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """128-bit XXH3 of each record's token ids, as an (n, 2) uint64 array."""
    o = offsets.tolist()
    records = map(memoryview(tokens).__getitem__, map(slice, o[:-1], o[1:]))
    raw = b"".join(map(xxhash.xxh3_128_digest, records))
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2)


_PAIR_STEP = 1 << 18  # byte pairs per bincount call: its int64 copy of them stays 2 MB


def byte_counts(arr: np.ndarray) -> np.ndarray:
    """Occurrences of each byte value (256,), counting byte pairs: 2x faster than bincount.

    ``np.bincount`` copies its input to int64 first; counting 2**18 pairs at a time keeps
    that copy small and cache-resident instead of 4x the input in fresh memory."""
    even = len(arr) - len(arr) % 2
    pairs16 = arr[:even].view(np.uint16)
    pairs = np.zeros(65536, dtype=np.int64)
    for i in range(0, len(pairs16), _PAIR_STEP):
        pairs += np.bincount(pairs16[i : i + _PAIR_STEP], minlength=65536)
    pairs = pairs.reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if even < len(arr):
        counts[arr[-1]] += 1
    return counts


class _SplitWriter:
    """Streams one split of one chunk to temp files; ``commit`` renames them into place."""

    def __init__(self, chunk_dir: Path, name: str, split: str):
        self.final = {
            "tokens": chunk_dir / f"{name}.{split}.tokens",
            "offsets": chunk_dir / f"{name}.{split}.offsets.npy",
            "ids": chunk_dir / f"{name}.{split}.ids.txt",
        }
        self.tmp = {k: p.with_name(f".{p.name}.tmp{os.getpid()}") for k, p in self.final.items()}
        self.tokens = open(self.tmp["tokens"], "wb")
        self.ids = open(self.tmp["ids"], "wb")
        self.lengths: list[np.ndarray] = []
        # XXH3-128 of each file, fed with the bytes as they are written (same digest as
        # xxh3_file of the finished file, without reading it back)
        self.hashers = {"tokens": xxhash.xxh3_128(), "ids": xxhash.xxh3_128(), "offsets": xxhash.xxh3_128()}

    def write(self, tokens: np.ndarray, lengths: np.ndarray, ids: list[bytes]) -> None:
        if not len(lengths):
            return
        id_lines = b"\n".join(ids) + b"\n"
        try:
            self.tokens.write(tokens.data)
            self.ids.write(id_lines)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.final["tokens"])) from None
        self.hashers["tokens"].update(tokens.data)
        self.hashers["ids"].update(id_lines)
        self.lengths.append(lengths)

    def file_hashes(self) -> dict[str, str]:
        """``{file name: XXH3-128}`` of the three files (after :meth:`commit`)."""
        return {self.final[k].name: self.hashers[k].hexdigest() for k in ("tokens", "offsets", "ids")}

    def commit(self) -> dict:
        try:
            return self._commit()
        except OSError as exc:  # a full disk: name the files, not "No space left on device" alone
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.final["tokens"])) from None

    def _commit(self) -> dict:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        npy = io.BytesIO()
        np.save(npy, offsets, allow_pickle=False)
        self.hashers["offsets"].update(npy.getbuffer())
        with open(self.tmp["offsets"], "wb") as fh:
            fh.write(npy.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        for fh in (self.tokens, self.ids):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for key in ("tokens", "ids", "offsets"):
            os.replace(self.tmp[key], self.final[key])
        return {"records": len(lengths), "residues": int(offsets[-1])}

    def abort(self) -> None:
        for fh in (self.tokens, self.ids):
            fh.close()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


def process_chunk(
    job: _ChunkJob,
    out: Path,
    source: str,
    options: PrepareOptions,
    exclusions: Exclusions,
    fingerprint: str,
) -> dict:
    """Clean, filter, split and tokenise one chunk; write its files; return its counts."""
    policy = CleaningPolicy(options.rare)
    stats = FastaStats()
    threshold = np.uint64(min(int(options.valid_fraction * 2**64), 2**64 - 1))
    max_len = options.max_length or (1 << 62)
    name = chunk_name(job.index)
    chunk_dir = out / "chunks"
    writers = {s: _SplitWriter(chunk_dir, name, s) for s in SPLITS}
    keys = []
    excluded = too_short = too_long = 0
    counts = np.zeros(256, dtype=np.int64)
    try:
        for sub, line_offset in split_block(job.block, SUB_BLOCK):
            enc = encode_block(
                sub, job.first_line + line_offset, source, policy.tables, stats,
                options.skip_invalid, headers=False,
            )
            if not len(enc.lengths):
                continue
            offsets = enc.offsets
            shash = sequence_hashes(enc.tokens, offsets)
            lengths = enc.lengths
            short, long_ = lengths < options.min_length, lengths > max_len
            if exclusions.ids or exclusions.seq_hashes:
                ex_ids, ex_seqs = exclusions.ids, exclusions.seq_hashes
                raw = shash.tobytes()
                ex = np.fromiter(
                    (rid in ex_ids or raw[16 * i : 16 * i + 16] in ex_seqs
                     for i, rid in enumerate(enc.ids)),
                    dtype=bool, count=len(enc.ids),
                )
            else:
                ex = np.zeros(len(lengths), dtype=bool)
            excluded += int(ex.sum())
            too_short += int((short & ~ex).sum())
            too_long += int((long_ & ~ex).sum())
            keep = ~(ex | short | long_)
            ihash = id_hashes(enc.ids, options.split_salt)
            valid = ihash < threshold
            sel = np.flatnonzero(keep)
            k = np.zeros(len(sel), dtype=KEY_DTYPE)
            k["id_hash"], k["seq_hash"], k["line"] = ihash[sel], shash[sel], enc.lines[sel]
            k["valid"], k["length"] = valid[sel], lengths[sel]
            keys.append(k)
            # category per record: 0 train, 1 valid, 2 dropped; write runs of equal category
            cat = np.where(keep, valid.astype(np.int8), 2)
            bounds = np.flatnonzero(np.diff(cat)) + 1
            starts = np.concatenate(([0], bounds)).tolist()
            ends = np.concatenate((bounds, [len(cat)])).tolist()
            counts += byte_counts(enc.tokens)
            for a, b in zip(starts, ends):
                c = int(cat[a])
                seg = enc.tokens[offsets[a] : offsets[b]]
                if c == 2:  # dropped records do not count (rare: filters, exclusions)
                    counts -= np.bincount(seg, minlength=256)
                    continue
                writers[SPLITS[c]].write(seg, lengths[a:b], enc.ids[a:b])
        split_counts = {s: w.commit() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    all_keys = np.concatenate(keys) if keys else np.zeros(0, KEY_DTYPE)
    write_npy(chunk_dir / f"{name}.keys.npy", all_keys)
    files = {n: h for w in writers.values() for n, h in w.file_hashes().items()}
    files[f"{name}.keys.npy"] = xxh3_file(chunk_dir / f"{name}.keys.npy")
    summary: dict = {
        # checked when a rerun reuses the chunk; in chunk_file_names' order
        "files": {n: files[n] for n in chunk_file_names(job.index)},
        "chunk": job.index,
        "fingerprint": fingerprint,
        "block_hash": job.block_hash,
        "first_line": job.first_line,
        "bytes": len(job.block),
        "records_read": stats.records,
        "skipped_invalid": stats.skipped,
        "skipped_messages": stats.skipped_messages,
        "excluded": excluded,
        "too_short": too_short,
        "too_long": too_long,
        "splits": split_counts,
        "residue_counts": counts[: len(ALPHABET)].tolist(),
    }
    write_json(chunk_dir / f"{name}.done.json", summary)
    return summary


def _chunk_done(out: Path, index: int, fingerprint: str, block_hash: str) -> dict | None:
    path = out / "chunks" / f"{chunk_name(index)}.done.json"
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _valid_done(done):  # damaged like a torn file: the chunk is redone
        log.warning("chunk %d: %s is damaged; redoing the chunk", index, path.name)
        return None
    if done.get("fingerprint") == fingerprint and done.get("block_hash") == block_hash:
        chunk_dir = out / "chunks"
        if (chunk_dir / f"{chunk_name(index)}.merged.json").exists():
            return done  # rewritten by a merge; checked against the manifest's hashes by merge
        if not _chunk_intact(chunk_dir, index, done.get("files")):
            log.warning("chunk %d: its files do not match the hashes recorded when it was written "
                        "(truncated or edited); redoing it", index)
            return None
        return done
    return None


# --------------------------------------------------------------------------- the run


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/N"`` → ``(i, N)`` with 0 <= i < N."""
    if spec is None:
        return 0, 1
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError(f"--shard must look like i/N (e.g. 0/4), not {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {spec}: need 0 <= i < N")
    return i, n


def prepare(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    options: PrepareOptions | None = None,
    *,
    exclude: Iterable[str | os.PathLike] = (),
    workers: int = 1,
    shard: str | None = None,
    dedup: bool = False,
    rename_duplicates: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Prepare shards from one FASTA file. Returns the manifest (or, with ``--shard i/N``
    for N > 1, this part's summary; run :func:`merge` once all parts are done)."""
    options = options or PrepareOptions()
    input_path = Path(input_path)
    out = Path(out)
    shard_i, shard_n = parse_shard(shard)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {workers}")
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file")
    exclude = list(exclude)
    for inp in [input_path, *exclude]:
        _check_not_written(out, Path(inp))
    _check_out_is_ours(out)
    exclusions = load_exclusions(exclude, CleaningPolicy(options.rare))
    fingerprint = options.fingerprint(exclusions.digest())
    try:
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        (out / "parts").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create output folder ({exc.strerror})") from None

    # one run per part of a folder at a time (parts of a --shard i/N run may work side by side);
    # the lock files live in OUT/parts/ (.part-i-of-N.lock, .merge.lock)
    with output_lock(out / "parts", f"part {shard_i}/{shard_n} of the prepare folder {out}",
                     name=f".part-{shard_i}-of-{shard_n}.lock"):
        _check_out_options(out, options, fingerprint)
        _check_same_source(out, input_path)
        _remove_stale_temporaries(out / "chunks", shard_i, shard_n)
        part = _prepare_part(input_path, out, options, exclusions, fingerprint, workers, shard_i, shard_n,
                             progress)
    if shard_n == 1:
        return merge(out, dedup=dedup, rename_duplicates=rename_duplicates)
    return part


#: what prepare writes in OUT/chunks and OUT/parts (see the module docstring); anything else there
#: is not ours, and a folder holding it is not a prepare folder
_CHUNK_FILE = re.compile(
    r"c(\d{6,})\.((train|valid)\.(tokens|offsets\.npy|ids\.txt)|keys\.npy|done\.json|merged\.json)")
_PART_FILE = re.compile(r"part-\d+-of-\d+\.json|(\.part-\d+-of-\d+|\.merge)\.lock(\.holder)?")
_TEMP_FILE = re.compile(r"\.(.+)\.tmp(\d+)")


def _ours(name: str, pattern: re.Pattern) -> bool:
    temp = _TEMP_FILE.fullmatch(name)
    return bool(pattern.fullmatch(temp.group(1) if temp else name))


def _check_not_written(out: Path, path: Path) -> None:
    """An input is never one of the files prepare writes (OUT/manifest.json, OUT/chunks/*,
    OUT/parts/*): it would be replaced while (or before) it is read."""
    try:
        rel = path.resolve().relative_to(out.resolve())
    except ValueError:
        rel = None
    same_manifest = (out / "manifest.json").exists() and path.exists() and \
        os.path.samefile(path, out / "manifest.json")
    if same_manifest or (rel is not None and rel.parts[:1] in (("manifest.json",), ("chunks",), ("parts",))):
        raise InputError(f"--out {out}: prepare writes {path} there, and it is an input of this command; "
                         "write the output somewhere else")


def _check_out_is_ours(out: Path) -> None:
    """Prepare writes OUT/manifest.json, OUT/chunks/ and OUT/parts/: where any of them holds something
    prepare did not write (a user's manifest.json, other files), the folder is refused instead of
    overwritten. A folder made by an earlier (interrupted) prepare passes: that is a resume."""
    mpath = out / "manifest.json"
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"--out {out}: its manifest.json is not one protlm prepare wrote; refusing to "
                             "overwrite it (use a new --out folder)")
    for sub, pattern in (("chunks", _CHUNK_FILE), ("parts", _PART_FILE)):
        folder = out / sub
        if not folder.is_dir():
            continue
        foreign = sorted(p.name for p in folder.iterdir() if not _ours(p.name, pattern))
        if foreign:
            raise InputError(f"--out {out}: {folder} holds files protlm prepare did not write ({foreign[0]}"
                             f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); use a new --out folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _remove_stale_temporaries(chunk_dir: Path, shard_i: int, shard_n: int) -> None:
    """Temporary files of a run that was killed (``kill -9``, power loss) are never renamed into
    place: remove those of this part's chunks whose process is gone. Only this part's chunks: the
    part lock is held, so no live run of this part writes them, while other parts (on other hosts,
    where a pid means nothing here) may be writing theirs."""
    for p in chunk_dir.iterdir():
        temp = _TEMP_FILE.fullmatch(p.name)
        chunk = _CHUNK_FILE.fullmatch(temp.group(1)) if temp else None
        if chunk and int(chunk.group(1)) % shard_n == shard_i and not _pid_alive(int(temp.group(2))):
            p.unlink(missing_ok=True)


def _check_same_source(out: Path, input_path: Path) -> None:
    """A folder holds the shards of one input file. Another file (other path, other content) is
    refused, never mixed in. The same file edited since the last run is an update: chunks whose
    bytes changed are redone and the merge recomputes everything (refused only where an earlier
    merge already rewrote chunks for dedup/renames, which needs the old chunk files)."""
    for part_file in sorted((out / "parts").glob("part-*.json")):
        try:
            prev = json.loads(part_file.read_text())["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(prev, dict):
            continue
        size = input_path.stat().st_size
        if prev.get("bytes") == size and prev.get("sha256") == _sha256_file(input_path):
            return
        what = (f"{out} holds shards of {prev.get('path')} (sha256 {str(prev.get('sha256'))[:12]}…, "
                f"{prev.get('bytes')} bytes)")
        if Path(str(prev.get("path"))).resolve() != input_path.resolve():
            raise ConfigError(f"{what}, another input than {input_path}; use a new --out folder")
        if any((out / "chunks").glob("*.merged.json")):
            raise ConfigError(f"{what}, and {input_path} changed since; its merge rewrote chunks "
                              "(dedup/renames), so prepare the new version into a new --out folder")
        log.warning("%s changed since %s was prepared; chunks whose content changed are redone",
                    input_path, out)
        return


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _read_input(path: Path, sha, progress) -> Iterator[bytes]:
    """The decompressed content of ``path``. A background thread reads, hashes (SHA-256 into
    ``sha``) and inflates it while this thread works on the blocks before; ``progress(n)`` is
    called in this thread, with the bytes of the file read since the last call."""

    def produce() -> Iterator[tuple[bytes | None, int]]:
        raw = 0

        def tap(b: bytes) -> None:
            nonlocal raw
            sha.update(b)
            raw += len(b)

        for chunk in iter_file_blocks(path, on_raw=tap):
            n, raw = raw, 0
            yield chunk, n
        yield None, raw  # the file's last reads may come after its last data

    ahead = read_ahead(produce())
    try:
        for chunk, n in ahead:
            if n and progress is not None:
                progress(n)
            if chunk is not None:
                yield chunk
    finally:
        ahead.close()


def _prepare_part(input_path: Path, out: Path, options: PrepareOptions, exclusions: Exclusions, fingerprint: str,
                  workers: int, shard_i: int, shard_n: int, progress) -> dict:

    source_hash = hashlib.sha256()
    target = max(1, int(options.chunk_mb * 1e6))
    chunks = _read_input(input_path, source_hash, progress)
    blocks = cut_record_blocks(chunks, input_path, target)
    started = time.perf_counter()
    summaries: list[dict] = []
    reused = 0
    total_chunks = 0
    mine = []

    def jobs():
        nonlocal reused, total_chunks
        for index, (block, first_line) in enumerate(blocks):
            total_chunks = index + 1
            if index % shard_n != shard_i:
                continue
            mine.append(index)
            bh = xxhash.xxh3_128_hexdigest(block)  # 36 GB/s: not worth moving off this thread
            done = _chunk_done(out, index, fingerprint, bh)
            if done is not None:
                reused += 1
                summaries.append(done)
                continue
            yield _ChunkJob(index, block, first_line, bh)

    init_args = (str(out), str(input_path), options, exclusions, fingerprint)
    try:
        if workers == 1:
            _init_worker(*init_args)
            for job in jobs():
                summaries.append(_process_chunk(job))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init_args) as pool:
                pool.submit(int).result()  # fork the workers now, before the reader thread starts
                in_flight = []
                for job in jobs():
                    in_flight.append(pool.submit(_process_chunk, job))
                    # bounded: memory holds at most ~2 blocks per worker, whatever the input size
                    while len(in_flight) >= 2 * workers:
                        summaries.append(in_flight.pop(0).result())
                for fut in in_flight:
                    summaries.append(fut.result())
    finally:
        chunks.close()  # stops the reader thread when a chunk failed
    part = {
        "shard": [shard_i, shard_n],
        "total_chunks": total_chunks,
        "chunks": sorted(mine),
        "fingerprint": fingerprint,
        "source": {
            "path": str(input_path),
            "sha256": source_hash.hexdigest(),
            "bytes": input_path.stat().st_size,
        },
        "options": asdict(options),
        "exclude": {"files": exclusions.sources, "ids": len(exclusions.ids),
                    "sequences": len(exclusions.seq_hashes)},
        "chunks_reused": reused,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out / "parts" / f"part-{shard_i}-of-{shard_n}.json", part)
    return part


def _check_out_options(out: Path, options: PrepareOptions, fingerprint: str) -> None:
    for part in sorted((out / "parts").glob("part-*.json")):
        try:
            prev = json.loads(part.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(prev, dict):  # damaged: merge names it
            continue
        if prev.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{out} was prepared with other options ({part.name}: {prev.get('options')}); "
                "use a new --out folder or the same options to resume"
            )


# --------------------------------------------------------------------------- merge


def merge(out: str | os.PathLike, *, dedup: bool = False, rename_duplicates: bool = False) -> dict:
    """Check that every chunk of every part is done, run the global checks, write the manifest."""

    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no prepared parts found (no such folder; run protlm prepare first)")
    _check_out_is_ours(out)
    lock_dir = out / "parts" if (out / "parts").is_dir() else out
    with output_lock(lock_dir, f"the merge step of the prepare folder {out}", name=".merge.lock"):
        return _merge(out, dedup=dedup, rename_duplicates=rename_duplicates)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_part(part) -> bool:
    """The fields of a part file that merge relies on (a damaged one is one clear error)."""
    if not isinstance(part, dict):
        return False
    shard, source = part.get("shard"), part.get("source")
    return (isinstance(shard, list) and len(shard) == 2 and all(map(_is_count, shard))
            and shard[0] < shard[1] and _is_count(part.get("total_chunks"))
            and isinstance(part.get("fingerprint"), str) and isinstance(part.get("options"), dict)
            and "rare" in part["options"] and isinstance(source, dict)
            and isinstance(source.get("sha256"), str) and isinstance(source.get("path"), str)
            and isinstance(part.get("exclude"), dict))


_DONE_COUNTS = ("records_read", "skipped_invalid", "excluded", "too_short", "too_long")


def _valid_done(done) -> bool:
    """The fields of a chunk's done.json that reuse and merge rely on."""
    return (isinstance(done, dict) and all(_is_count(done.get(k)) for k in _DONE_COUNTS)
            and isinstance(done.get("residue_counts"), list) and len(done["residue_counts"]) == len(ALPHABET)
            and isinstance(done.get("files", {}), dict)
            and isinstance(done.get("skipped_messages", []), list))


def _merge(out: Path, *, dedup: bool, rename_duplicates: bool) -> dict:
    parts = []
    for p in sorted((out / "parts").glob("part-*-of-*.json")):
        try:
            part = json.loads(p.read_text())
        except (OSError, ValueError):
            raise InputError(f"{p}: unreadable part file; rerun that part") from None
        if not _valid_part(part):
            raise InputError(f"{p}: malformed part file (not one protlm prepare wrote); rerun that part")
        parts.append(part)
    if not parts:
        raise InputError(f"{out}: no prepared parts found (run protlm prepare first)")
    fps = {p["fingerprint"] for p in parts}
    sources = {p["source"]["sha256"] for p in parts}
    totals = {p["total_chunks"] for p in parts}
    if len(fps) != 1 or len(sources) != 1 or len(totals) != 1:
        raise InputError(
            f"{out}: parts disagree ({len(fps)} option sets, {len(sources)} source files, chunk totals "
            f"{sorted(totals)}); prepare again in a new folder"
        )
    # the same input and options cut into the same chunks whatever the number of parts, so a folder
    # re-sharded (--shard i/N with another N, or a plain run after some parts) merges from any
    # complete set of parts; every chunk's done.json and files are checked below either way
    have: dict[int, set[int]] = {}
    for p in parts:
        have.setdefault(p["shard"][1], set()).add(p["shard"][0])
    complete = sorted(n for n, got in have.items() if got >= set(range(n)))
    if not complete:
        todo = "; or ".join(", ".join(f"{i}/{n}" for i in sorted(set(range(n)) - got))
                            for n, got in sorted(have.items()))
        raise InputError(
            f"{out}: parts {todo} not done yet; run protlm prepare ... --shard i/N for them, then merge"
        )
    n = complete[0]
    parts = sorted((p for p in parts if p["shard"][1] == n), key=lambda p: p["shard"][0])
    total = totals.pop()
    fingerprint = fps.pop()
    chunk_dir = out / "chunks"
    previous = _previous_manifest(out, fingerprint, next(iter(sources)))
    if previous is not None and any(chunk_dir.glob("*.merged.json")):
        # chunk files were rewritten by that merge: its decisions stand
        opts = previous["options"]
        if opts.get("dedup") != dedup or opts.get("rename_duplicates") != rename_duplicates:
            raise InputError(
                f"{out} was already merged with dedup={opts.get('dedup')}, "
                f"rename_duplicates={opts.get('rename_duplicates')}; prepare again into a new folder "
                "to change them"
            )
        verify(out)  # the rerun of a finished folder checks that its files are still the ones it made
        return previous
    summaries = []
    for k in range(total):
        path = chunk_dir / f"{chunk_name(k)}.done.json"
        try:
            done = json.loads(path.read_text())
        except (OSError, ValueError):
            raise InputError(f"{path}: missing or unreadable; rerun prepare to redo chunk {k}") from None
        if not _valid_done(done):
            raise InputError(f"{path}: damaged (not one protlm prepare wrote); rerun prepare to redo chunk {k}")
        if done.get("fingerprint") != fingerprint:
            raise InputError(f"{path}: made with other options; rerun prepare in a new folder")
        # the manifest records these files' hashes: they must still be the files the chunk wrote
        # (a part run on another host, a disk that truncated them, an edit since)
        if not (chunk_dir / f"{chunk_name(k)}.merged.json").exists() and \
                not _chunk_intact(chunk_dir, k, done.get("files")):
            raise InputError(f"{chunk_dir / chunk_name(k)}.*: chunk {k}'s files are missing or differ from the "
                             "hashes recorded when it was written (truncated or edited); rerun prepare to redo it")
        summaries.append(done)

    if not any(s["records_read"] or s["skipped_invalid"] for s in summaries):
        raise InputError(f"{parts[0]['source']['path']}: no FASTA records (the file holds only blank lines)")
    keys = [np.load(chunk_dir / f"{chunk_name(k)}.keys.npy", allow_pickle=False) for k in range(total)]
    sizes = [len(k) for k in keys]
    allkeys = np.concatenate(keys) if keys else np.zeros(0, KEY_DTYPE)
    chunk_of = np.repeat(np.arange(total), sizes)
    # position of every record within its split of its chunk (the line of its id in ids.txt)
    valid_all = allkeys["valid"].astype(bool)
    pos_in_chunk = np.zeros(len(allkeys), dtype=np.int64)
    start = 0
    for size in sizes:
        v = valid_all[start : start + size]
        pos_in_chunk[start : start + size] = np.where(v, np.cumsum(v) - 1, np.cumsum(~v) - 1)
        start += size

    renames = _duplicate_ids(
        out, allkeys, chunk_of, pos_in_chunk, rename_duplicates, parts[0]["source"]["path"]
    )
    # exact duplicate sequences: first occurrence in file order is kept
    group = _sequence_groups(allkeys["seq_hash"])
    n_groups = int(group.max()) + 1 if len(group) else 0
    first_of_group = np.full(n_groups, len(group), dtype=np.int64)
    np.minimum.at(first_of_group, group, np.arange(len(group)))
    is_first = np.zeros(len(allkeys), dtype=bool)
    is_first[first_of_group] = True
    n_dups = int((~is_first).sum())
    # validation sequences that also occur in the training split (leakage without dedup)
    valid = valid_all
    train_groups = np.zeros(n_groups, dtype=bool)
    train_groups[group[~valid]] = True
    valid_in_train = int((valid & train_groups[group]).sum())

    drop = ~is_first if dedup else np.zeros(len(allkeys), dtype=bool)
    bounds = np.concatenate(([0], np.cumsum(sizes))).tolist()
    for k in range(total):
        sel = slice(bounds[k], bounds[k + 1])  # the keys are in chunk order
        _rewrite_chunk(chunk_dir, k, allkeys[sel], drop[sel], renames.get(k, {}), dedup)

    manifest = _manifest(out, parts, summaries, allkeys["length"][~drop], total, fingerprint)
    manifest["counts"].update(
        duplicate_ids_renamed=sum(len(v) for v in renames.values()),
        duplicate_sequences=n_dups,
        duplicates_removed=int(drop.sum()),
        distinct_sequences=n_groups,
        valid_sequences_also_in_train=valid_in_train if not dedup else 0,
    )
    manifest["counts"]["kept"] = int((~drop).sum())
    manifest["options"]["dedup"] = dedup
    manifest["options"]["rename_duplicates"] = rename_duplicates
    write_json(out / "manifest.json", manifest)
    return manifest


def _sequence_groups(seq_hash: np.ndarray) -> np.ndarray:
    """Group id per record: equal 128-bit sequence hashes get the same group."""
    if not len(seq_hash):
        return np.zeros(0, dtype=np.int64)
    hi = np.ascontiguousarray(seq_hash[:, 0])  # a field of the packed keys: sort a compact copy
    order = np.argsort(hi)
    sorted_hi = hi[order]
    same_hi = sorted_hi[1:] == sorted_hi[:-1]
    pairs = np.flatnonzero(same_hi)  # only these neighbours need their second halves compared
    lo = seq_hash[:, 1]
    if (lo[order[pairs]] != lo[order[pairs + 1]]).any():
        # equal first halves with different second halves (a 64-bit collision): full sort
        order = np.lexsort((seq_hash[:, 1], seq_hash[:, 0]))
        sorted_h = seq_hash[order]
        same_hi = (sorted_h[1:] == sorted_h[:-1]).all(axis=1)
    new = np.ones(len(order), dtype=bool)
    new[1:] = ~same_hi
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    return group


def _previous_manifest(out: Path, fingerprint: str, source_sha256: str | None = None) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("options"), dict):
        return None
    if source_sha256 is not None and (manifest.get("source") or {}).get("sha256") != source_sha256:
        return None  # made from another version of the input: merged again
    return manifest if manifest.get("fingerprint") == fingerprint else None


def _read_ids(chunk_dir: Path, k: int, split: str) -> list[bytes]:
    return (chunk_dir / f"{chunk_name(k)}.{split}.ids.txt").read_bytes().split(b"\n")[:-1]


def _duplicate_ids(out, allkeys, chunk_of, pos_in_chunk, rename: bool, source: str) -> dict:
    """Find records whose id occurred before; return {chunk: {(split, index): new_id}}."""
    h = np.ascontiguousarray(allkeys["id_hash"])  # a field of the packed keys: sort a compact copy
    order = np.argsort(h)  # any order of equal hashes: only the set of candidates is used
    hs = h[order]
    same = np.flatnonzero(hs[1:] == hs[:-1])
    if len(same) == 0:
        return {}
    chunk_dir = out / "chunks"
    # candidate records (hash collisions are verified on the actual id strings)
    cand = np.unique(np.concatenate([order[same], order[same + 1]]))
    id_cache: dict = {}

    def id_of(i) -> bytes:
        k = int(chunk_of[i])
        if k not in id_cache:
            id_cache[k] = {s: _read_ids(chunk_dir, k, s) for s in SPLITS}
        split = "valid" if allkeys["valid"][i] else "train"
        j = int(pos_in_chunk[i])
        return id_cache[k][split][j], split, j

    seen: dict[bytes, int] = {}
    renames: dict = {}
    records = [(i, *id_of(i)) for i in sorted(cand.tolist())]
    taken: set[bytes] = {rid for _, rid, _, _ in records}
    for i, rid, split, j in records:
        if rid not in seen:
            seen[rid] = int(allkeys["line"][i])
            continue
        if not rename:
            raise InputError(
                f"{source}:{int(allkeys['line'][i])}: duplicate id '{rid.decode(errors='replace')}' "
                f"(first seen at line {seen[rid]}); use --rename-duplicates to keep both"
            )
        m = 2
        while rid + b"_%d" % m in taken:
            m += 1
        new = rid + b"_%d" % m
        taken.add(new)
        renames.setdefault(int(chunk_of[i]), {})[(split, j)] = new
        log.warning("duplicate id '%s' renamed to '%s'", rid.decode(errors="replace"), new.decode(errors="replace"))
    return renames


def _rewrite_chunk(chunk_dir: Path, k: int, keys, drop, renames: dict, dedup: bool) -> None:
    """Apply renames and (with dedup) drop duplicate records; idempotent across reruns."""
    if not renames and not drop.any():
        return
    name = chunk_name(k)
    marker = chunk_dir / f"{name}.merged.json"
    if marker.exists():
        return  # already rewritten by an earlier merge with the same decisions
    valid = keys["valid"].astype(bool)
    for split, is_valid in (("train", False), ("valid", True)):
        sel = valid == is_valid
        keep = ~drop[sel]
        ids = _read_ids(chunk_dir, k, split)
        for (s, j), new in renames.items():
            if s == split:
                ids[j] = new
        if keep.all():
            if any(s == split for s, _ in renames):
                write_bytes(chunk_dir / f"{name}.{split}.ids.txt", b"".join(i + b"\n" for i in ids))
            continue
        offsets = np.load(chunk_dir / f"{name}.{split}.offsets.npy", allow_pickle=False)
        tokens = np.fromfile(chunk_dir / f"{name}.{split}.tokens", dtype=np.uint8)
        pieces = [tokens[offsets[j] : offsets[j + 1]] for j in np.flatnonzero(keep)]
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        new_offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new_offsets[1:])
        data = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
        write_bytes(chunk_dir / f"{name}.{split}.tokens", data.tobytes())
        write_npy(chunk_dir / f"{name}.{split}.offsets.npy", new_offsets)
        kept_ids = [ids[j] for j in np.flatnonzero(keep)]
        write_bytes(chunk_dir / f"{name}.{split}.ids.txt", b"".join(i + b"\n" for i in kept_ids))
    write_json(marker, {"dropped": int(drop.sum()), "renamed": len(renames), "dedup": dedup})


def _manifest(out: Path, parts, summaries, kept_lengths, total, fingerprint) -> dict:
    part0 = parts[0]
    options = dict(part0["options"])
    policy = CleaningPolicy(options["rare"])
    counts = {
        key: int(sum(s[key] for s in summaries))
        for key in ("records_read", "skipped_invalid", "excluded", "too_short", "too_long")
    }
    splits = {}
    chunk_dir = out / "chunks"

    def file_hash(k: int, file_name: str) -> str:
        # the hash recorded when the chunk was written (or checked when it was reused), unless
        # a merge has rewritten the chunk's files since
        recorded = (summaries[k].get("files") or {}).get(file_name)
        if recorded and not (chunk_dir / f"{chunk_name(k)}.merged.json").exists():
            return recorded
        return xxh3_file(chunk_dir / file_name)

    for split in SPLITS:
        files = []
        for k in range(total):
            name = chunk_name(k)
            offsets = np.load(chunk_dir / f"{name}.{split}.offsets.npy", mmap_mode="r")
            files.append(
                {
                    "tokens": f"chunks/{name}.{split}.tokens",
                    "offsets": f"chunks/{name}.{split}.offsets.npy",
                    "ids": f"chunks/{name}.{split}.ids.txt",
                    "records": len(offsets) - 1,
                    "residues": int(offsets[-1]),
                    "xxh3_128": {kind: file_hash(k, f"{name}.{split}.{ext}")
                                 for kind, ext in (("tokens", "tokens"), ("offsets", "offsets.npy"),
                                                   ("ids", "ids.txt"))},
                }
            )
        splits[split] = {
            "records": sum(f["records"] for f in files),
            "residues": sum(f["residues"] for f in files),
            "shards": files,
        }
    lengths = kept_lengths.astype(np.int64)
    hist, _ = np.histogram(lengths, bins=LENGTH_EDGES + [max(LENGTH_EDGES[-1] + 1, int(lengths.max(initial=0)) + 1)])
    residue_counts = np.zeros(len(ALPHABET), dtype=np.int64)
    for s in summaries:
        residue_counts += np.array(s["residue_counts"], dtype=np.int64)
    skipped_messages = [m for s in summaries for m in s.get("skipped_messages", [])][:20]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "protlm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": part0["source"],
        "fingerprint": fingerprint,
        "options": options,
        "exclude": part0["exclude"],
        "cleaning": policy.as_dict(),
        "vocab": {
            "alphabet": list(ALPHABET),
            "used": vocabulary(policy),
            "dtype": "uint8",
            "note": "token id = index in alphabet; no special tokens are stored",
        },
        "chunks": total,
        "counts": counts,
        "splits": splits,
        "lengths": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "max": int(lengths.max()) if len(lengths) else 0,
            "mean": round(float(lengths.mean()) if len(lengths) else 0.0, 2),
            "median": float(np.median(lengths)) if len(lengths) else 0.0,
            "histogram": {"edges": LENGTH_EDGES + ["inf"], "counts": hist.tolist()},
        },
        "residue_counts": {aa: int(c) for aa, c in zip(ALPHABET, residue_counts) if c or aa in vocabulary(policy)},
        "skipped_messages": skipped_messages,
    }


# --------------------------------------------------------------------------- verify


def verify(out: str | os.PathLike, *, hashes: bool = True) -> dict:
    """Check a prepared folder against its manifest: every shard file present, token files as
    long as their offsets say, offsets well formed, and (``hashes``) every file's XXH3-128 equal
    to the one recorded by prepare. Raises :class:`InputError` naming the damaged files."""
    out = Path(out)
    manifest = load_manifest(out)
    problems: list[str] = []
    files = 0
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            files += 1
            try:
                check_shard(out, shard)
            except InputError as exc:
                problems.append(str(exc))
                continue
            recorded = shard.get("xxh3_128")
            if not hashes:
                continue
            for kind in ("tokens", "offsets", "ids"):
                rel = shard[kind]
                want = recorded.get(kind) if isinstance(recorded, dict) else None
                if not isinstance(want, str):
                    # a hash that is not there cannot be checked: never reported as matching
                    problems.append(f"{out / rel}: the manifest records no content hash for it, so it cannot be "
                                    "verified; prepare again into a new folder")
                elif xxh3_file(out / rel) != want:
                    problems.append(f"{out / rel}: content differs from the hash recorded by prepare; "
                                    "prepare again into a new folder")
    if problems:
        more = f" (and {len(problems) - 1} more damaged files)" if len(problems) > 1 else ""
        raise InputError(f"{problems[0]}{more}")
    return {"folder": str(out), "shards": files, "hashes_checked": bool(hashes),
            "records": sum(manifest["splits"][s]["records"] for s in SPLITS)}
