"""Streaming FASTA reader for plain and gzipped files.

Design: the file is read in large byte blocks (gzip detected by its magic bytes, not by the
file name; multi-member/bgzip files are supported), cut at record boundaries, and every record
is cleaned and tokenised with ``bytes.translate`` (see :mod:`protlm.data.alphabet` for the
policy). Per-character Python loops run only to locate an error for its message. Memory is
bounded by the block size, not by the file size (the duplicate-id check keeps the ids seen).

Errors are :class:`~protlm.errors.FastaError` with one line naming the file, the line number
and the record id. With ``skip_invalid=True`` records with invalid characters or no residues
are logged, counted in :class:`FastaStats` and skipped instead.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import zlib

try:  # ISA-L inflate is ~2.2x faster than zlib on this machine (see docs/benchmarks.md)
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal has wheels for all common platforms
    _zlib = zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from protlm.data.alphabet import (
    DELETE_CODE,
    INVALID_CODE,
    STOP_CODE,
    WHITESPACE,
    CleaningPolicy,
    CleaningTables,
)
from protlm.errors import FastaError, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")

GZIP_MAGIC = b"\x1f\x8b"
READ_SIZE = 1 << 18  # 256 KiB of raw file per read: a gzip read inflates to ~450 KB, which the
# allocator serves from memory it already holds; 4 MiB reads inflate to ~7 MB buffers that are
# mapped afresh (page faults) every time: +30% CPU for gunzip on Swiss-Prot
_SNIFF = 1 << 16
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class FastaRecord:
    """One cleaned protein record.

    ``id`` is the first whitespace-separated word of the header, ``description`` the whole
    header line without ``>``, ``line`` the 1-based line number of the header in the file.
    """

    id: str
    sequence: str
    description: str = ""
    line: int = 0

    def __len__(self) -> int:
        return len(self.sequence)


#: A record this long whose letters are all nucleotide codes, three of them at least, is reported (a
#: protein of 30+ residues made of Ala, Cys, Gly, Thr and Asn alone is very unlikely; short peptides,
#: poly-Ala or a GA repeat are not reported).
NUCLEOTIDE_MIN = 30
NUCLEOTIDES = "ACGTUN"


@dataclass
class FastaStats:
    """Counts collected while reading; ``skipped`` holds the first messages for the log."""

    records: int = 0
    residues: int = 0
    skipped: int = 0
    renamed: int = 0
    skipped_messages: list[str] = field(default_factory=list)
    nucleotide_like: int = 0  # records of NUCLEOTIDE_MIN+ letters, every one A/C/G/T/U/N
    first_nucleotide_like: str = ""

    def note_skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.skipped_messages) < 20:
            self.skipped_messages.append(message)
        log.warning("skipped: %s", message)


# --------------------------------------------------------------------------- raw bytes


def iter_file_blocks(path: str | os.PathLike, on_raw=None) -> Iterator[bytes]:
    """Yield the decompressed content of ``path`` in blocks of a few MiB.

    ``on_raw``, when given, is called with every block of the file's bytes as stored on
    disk (to feed a checksum or a progress bar from the one read).
    """
    tap = on_raw if on_raw is not None else _ignore
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a FASTA file")
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        first = fh.read(READ_SIZE)
        tap(first)
        if not first.startswith(GZIP_MAGIC):
            chunk = first
            while chunk:
                yield chunk
                chunk = fh.read(READ_SIZE)
                tap(chunk)
            return
        yield from _gunzip_blocks(path, fh, first, tap)


def _ignore(_: bytes) -> None:
    pass


def read_ahead(items: Iterator[T], depth: int = 64) -> Iterator[T]:
    """Yield ``items`` as a background thread produces them, at most ``depth`` ahead.

    Meant for :func:`iter_file_blocks`: reading, ISA-L inflate and hashlib release the GIL, so
    decompressing (and hashing, in ``on_raw``) runs beside the consumer's work. An exception
    in the producer is raised here; closing this generator stops the thread. The thread
    starts at the first ``next()``.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # raised again in the consumer
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator stopped early: its file is closed in this thread

    thread = threading.Thread(target=produce, name="protlm-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            is_item, value = slots.get()
            if is_item:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()


def _gunzip_blocks(path: Path, fh, first: bytes, tap) -> Iterator[bytes]:
    decomp = _zlib.decompressobj(wbits=31)
    pending = first
    while True:
        if not pending:
            pending = fh.read(READ_SIZE)
            tap(pending)
            if not pending:
                break
        try:
            out = decomp.decompress(pending)
        except (zlib.error, _zlib.error) as exc:
            raise FastaError(f"{path}: corrupt gzip data ({exc})") from None
        pending = b""
        if out:
            yield out
        if decomp.eof:
            # bgzip and concatenated gzip files hold several members: start the next one
            rest = decomp.unused_data
            if not rest:
                rest = fh.read(READ_SIZE)
                tap(rest)
                if not rest:
                    return
            decomp = _zlib.decompressobj(wbits=31)
            pending = rest
    tail = decomp.flush()
    if not decomp.eof:
        raise FastaError(f"{path}: truncated gzip file (the compressed stream ends early)")
    if tail:
        yield tail


def iter_record_blocks(
    path: str | os.PathLike, target_size: int = 1 << 23, on_raw=None
) -> Iterator[tuple[bytes, int]]:
    """Cut the file into blocks of whole records of about ``target_size`` bytes.

    Yields ``(block, first_line)``: every block but possibly the first starts with ``>``;
    ``first_line`` is the 1-based line number of the block's first line. Block boundaries
    depend only on the file content and ``target_size``: a block ends just before the first
    line starting with '>' that begins at or after ``target_size`` bytes into it.
    """
    return cut_record_blocks(iter_file_blocks(path, on_raw), path, target_size)


def cut_record_blocks(
    chunks: Iterable[bytes], path: str | os.PathLike, target_size: int = 1 << 23
) -> Iterator[tuple[bytes, int]]:
    """:func:`iter_record_blocks` on the decompressed content of ``path`` given as ``chunks``
    (from :func:`iter_file_blocks`, maybe through :func:`read_ahead`).

    Each byte is copied once: the chunks are kept as they are until a cut is found, then the
    block is joined from them (views, no intermediate buffer).
    """
    pieces: list[bytes] = []  # data read and not yet yielded; pieces[0] starts at ``skip``
    skip = 0
    size = 0  # bytes held in pieces, not counting the skipped head of pieces[0]
    line = 1
    first = True
    for chunk in chunks:
        if first:
            _check_not_binary(path, chunk[:_SNIFF])
            if chunk.startswith(UTF8_BOM):  # files saved by some Windows editors
                chunk = chunk[len(UTF8_BOM) :]
            first = False
        if not chunk:
            continue
        pieces.append(chunk)
        size += len(chunk)
        while size >= target_size:
            cut = _find_record_start(pieces, skip, target_size - 1)
            if cut < 0:
                break  # the record goes on: read more
            block, pieces, skip = _take(pieces, skip, cut + 1)
            size -= len(block)
            yield block, line
            line += count_newlines(block)
    if first:
        raise FastaError(f"{path}: file is empty, no FASTA records")
    if size:
        yield _take(pieces, skip, size)[0], line


def _find_record_start(pieces: list[bytes], skip: int, pos: int) -> int:
    """Position (counted from ``skip`` in ``pieces[0]``) of the first ``\\n`` at or after
    ``pos`` that is followed by ``>``, also where the two bytes lie in different pieces; -1
    if there is none in the data held."""
    base = -skip  # position of pieces[i][0]
    for i, piece in enumerate(pieces):
        end = base + len(piece)
        if end > pos:
            j = piece.find(b"\n>", max(pos - base, 0))
            if j >= 0:
                return base + j
            if i + 1 < len(pieces) and piece.endswith(b"\n") and pieces[i + 1].startswith(b">"):
                return end - 1
        base = end
    return -1


def _take(pieces: list[bytes], skip: int, n: int) -> tuple[bytes, list[bytes], int]:
    """The first ``n`` bytes held (one copy, none when they are exactly one piece), and the
    pieces and skip that remain."""
    if skip == 0 and len(pieces[0]) == n:
        return pieces[0], pieces[1:], 0
    views = []
    need = n
    offset = skip
    for i, piece in enumerate(pieces):
        avail = len(piece) - offset
        if need < avail:
            views.append(memoryview(piece)[offset : offset + need])
            return b"".join(views), pieces[i:], offset + need
        views.append(memoryview(piece)[offset:] if offset else piece)
        need -= avail
        offset = 0
        if need == 0:
            return b"".join(views), pieces[i + 1 :], 0
    raise AssertionError("asked for more bytes than held")  # pragma: no cover


def _record_cuts(buf: bytes, target_size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive blocks of whole records of at least ``target_size``
    bytes, each ending just before a line that starts with '>'; the remainder is not cut."""
    start = 0
    while len(buf) - start >= target_size:
        cut = buf.find(b"\n>", start + target_size - 1)
        if cut < 0:
            return
        yield start, cut + 1
        start = cut + 1


_COUNT_STEP = 1 << 20


def count_newlines(block: bytes) -> int:
    # 1 MB at a time: the comparison's temporary stays small and reused (a block-sized one
    # costs more in page faults than the count itself)
    arr = np.frombuffer(block, dtype=np.uint8)
    steps = range(0, len(arr), _COUNT_STEP)
    return sum(int(np.count_nonzero(arr[i : i + _COUNT_STEP] == 10)) for i in steps)


def _check_not_binary(path, head: bytes) -> None:
    if b"\x00" in head:
        raise FastaError(f"{path}: does not look like a FASTA file (it contains binary data)")
    inner = head.rstrip(b"\r")  # a block may end between the \r and the \n of a CRLF
    if b"\r" in inner and b"\n" not in inner:
        raise FastaError(f"{path}: lines end with a carriage return only (old Mac OS line endings); "
                         "convert them to newlines, e.g. tr '\\r' '\\n' < IN > OUT")


# --------------------------------------------------------------------------- parsing


@dataclass
class EncodedBlock:
    """The records of one block: token ids back to back, with per-record metadata."""

    tokens: np.ndarray  # uint8; token ids (or raw bytes for label files)
    lengths: np.ndarray  # int64, one per record
    ids: list[bytes]
    headers: list[bytes]  # header lines without '>' (stripped)
    lines: np.ndarray  # int64, 1-based line number of each header

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out


_RAW_LOOKUP = np.arange(256, dtype=np.uint8)
_RAW_LOOKUP[list(WHITESPACE)] = DELETE_CODE
_RAW_LOOKUP_BYTES = _RAW_LOOKUP.tobytes()
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[list(WHITESPACE)] = True
_DELETE = bytes([DELETE_CODE])


def split_block(block: bytes, target_size: int) -> Iterator[tuple[bytes, int]]:
    """Cut a block of whole records into smaller ones; yields ``(sub_block, line_offset)``."""
    start, line = 0, 0
    for start, end in _record_cuts(block, target_size):
        sub = block[start:end]
        yield sub, line
        line += count_newlines(sub)
        start = end
    if start < len(block):
        yield block[start:], line


def encode_block(
    block: bytes,
    first_line: int,
    source: str,
    tables: CleaningTables | None,
    stats: FastaStats,
    skip_invalid: bool = False,
    headers: bool = True,
) -> EncodedBlock:
    """Parse, clean and tokenise one block of whole records with C-level passes.

    With ``tables`` residues are cleaned and encoded (see :mod:`protlm.data.alphabet`); with
    ``None`` the bodies are only stripped of whitespace (label strings, 0/1 masks). The
    passes: one ``bytes.translate`` to codes, one scan for deleted bytes, one translate that
    deletes them; Python runs once per record only to cut out its id. Errors are located by
    a slow path that runs only for the bad record.
    """
    arr = np.frombuffer(block, dtype=np.uint8)
    n = len(arr)
    codes = bytearray(block).translate(tables.encode_table if tables is not None else _RAW_LOOKUP_BYTES)
    view = np.frombuffer(codes, dtype=np.uint8)
    # every whitespace byte is DELETE_CODE in both tables: the one scan for deleted bytes also
    # gives the newlines and (below) the ends of the ids
    deleted = np.flatnonzero(view == DELETE_CODE)
    nl = deleted[arr[deleted] == 10]
    line_starts = np.empty(len(nl) + 1, dtype=np.int64)
    line_starts[0] = 0
    line_starts[1:] = nl + 1
    if line_starts[-1] >= n:
        line_starts = line_starts[:-1]
    hs = line_starts[arr[line_starts] == 62]  # header starts ('>' at a line start)
    lead_end = int(hs[0]) if len(hs) else n
    if lead_end and block[:lead_end].strip(WHITESPACE):
        bad_line = first_line + _first_content_line(block[:lead_end])
        raise FastaError(
            f"{source}:{bad_line}: sequence data before the first '>' header (is this a FASTA file?)"
        )
    if not len(hs):
        return _empty_block()
    k = np.searchsorted(nl, hs)
    he = np.append(nl, n)[k]  # the newline ending each header line
    lines = first_line + k.astype(np.int64)
    body_end = np.append(hs[1:], n)

    # residues per record = body bytes minus deleted bytes in the body
    body_len = body_end - he - 1
    lengths = body_len - (np.searchsorted(deleted, body_end) - np.searchsorted(deleted, he + 1))
    np.maximum(lengths, 0, out=lengths)  # a last header without a newline has no body

    # ids: the first word after '>'; a whitespace byte always ends the header line
    spaces = deleted[_IS_SPACE[arr[deleted]]]
    id_end = np.append(spaces, n)[np.searchsorted(spaces, hs + 1)]  # n: no space after the last header
    id_end = np.minimum(id_end, he)
    hs_l = hs.tolist()
    ids = _cut_words(arr, hs + 1, id_end)
    for r in np.flatnonzero(id_end == hs + 1).tolist():  # "> id" or an empty header
        words = block[hs_l[r] + 1 : int(he[r])].split(None, 1)
        if not words:
            raise FastaError(f"{source}:{int(lines[r])}: header line '>' has no id")
        ids[r] = words[0]
    header_list = (
        [block[s + 1 : e].strip() for s, e in zip(hs_l, he.tolist())] if headers else []
    )

    # blank out the header lines, then drop every deleted byte in one pass
    hdr_len = he - hs + 1
    idx = np.repeat(hs - np.cumsum(hdr_len) + hdr_len, hdr_len) + np.arange(int(hdr_len.sum()))
    view[idx[idx < n]] = DELETE_CODE
    tokens = np.frombuffer(codes.translate(None, _DELETE), dtype=np.uint8)

    bad: dict[int, None] = {}
    # STOP_CODE and INVALID_CODE are the two largest codes: one max() says whether either occurs
    if tables is not None and len(tokens) and int(tokens.max()) >= STOP_CODE:
        tokens, lengths = _strip_terminal_stops(tokens, lengths)
        flagged = np.flatnonzero(tokens >= STOP_CODE)
        if len(flagged):
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            for r in np.unique(np.searchsorted(offsets, flagged, side="right") - 1).tolist():
                bad[r] = None
    problems = sorted(set(bad) | set(np.flatnonzero(lengths == 0).tolist())) if tables is not None else []
    if problems:
        messages = {}
        for r in problems:
            if r in bad:
                body = block[int(he[r]) + 1 : int(body_end[r])]
                messages[r] = _locate_invalid(body, int(lines[r]), source, ids[r], tables)
            else:
                messages[r] = f"{source}:{int(lines[r])}: record '{_text(ids[r])}' has an empty sequence"
            if not skip_invalid:
                raise FastaError(messages[r])
        for r in problems:
            stats.note_skip(messages[r])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        drop = np.zeros(len(tokens), dtype=bool)
        for r in problems:
            drop[offsets[r] : offsets[r + 1]] = True
        tokens = tokens[~drop]
        good = np.ones(len(lengths), dtype=bool)
        good[problems] = False
        lengths, lines = lengths[good], lines[good]
        ids = [x for x, g in zip(ids, good) if g]
        header_list = [x for x, g in zip(header_list, good) if g] if headers else []
    stats.records += len(lengths)
    stats.residues += int(lengths.sum())
    return EncodedBlock(tokens, lengths, ids, header_list, lines)


def _cut_words(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """``[arr[s:e].tobytes() for s, e in zip(starts, ends)]`` for words without a newline:
    one gather of the words, each followed by a newline, and one ``split`` (4x faster than a
    slice per word)."""
    lens = ends - starts
    out_ends = np.cumsum(lens + 1)  # each word and its newline
    pos = np.repeat(starts - (out_ends - lens - 1), lens + 1) + np.arange(int(out_ends[-1]))
    joined = np.take(arr, pos, mode="clip")  # a newline slot may point one past the end
    joined[out_ends - 1] = 10
    return joined.tobytes().split(b"\n")[:-1]


def _strip_terminal_stops(tokens: np.ndarray, lengths: np.ndarray):
    """Remove runs of '*' at the end of each record; inner ones stay (and are errors)."""
    stop = tokens == STOP_CODE
    if not stop.any():
        return tokens, lengths
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pos = np.flatnonzero(stop)
    rec = np.searchsorted(offsets, pos, side="right") - 1
    cs = np.cumsum(stop, dtype=np.int64)
    ends = offsets[rec + 1]
    # a stop is terminal when every token from it to the record's end is a stop
    stops_to_end = cs[ends - 1] - cs[pos] + 1
    terminal = stops_to_end == ends - pos
    drop = np.zeros(len(tokens), dtype=bool)
    drop[pos[terminal]] = True
    lengths = lengths - np.bincount(rec[terminal], minlength=len(lengths))
    return tokens[~drop], lengths


def _empty_block() -> EncodedBlock:
    return EncodedBlock(np.zeros(0, np.uint8), np.zeros(0, np.int64), [], [], np.zeros(0, np.int64))


def _first_content_line(lead: bytes) -> int:
    for i, ln in enumerate(lead.split(b"\n")):
        if ln.strip(WHITESPACE):
            return i
    return 0


def _locate_invalid(body: bytes, rec_line: int, source: str, rid: bytes, tables) -> str:
    """Slow path: find the first bad character to name its line and column."""
    # a terminal run of '*' (possibly followed by whitespace or gaps) is allowed
    end_of_residues = len(body.translate(None, tables.delete).rstrip(b"*"))
    position = 0  # index among non-deleted characters
    for i, raw_line in enumerate(body.split(b"\n")):
        for col, byte in enumerate(raw_line, start=1):
            if byte in tables.delete:
                continue
            code = tables.encode[byte]
            where = f"{source}:{rec_line + 1 + i}: record '{_text(rid)}'"
            if code == STOP_CODE and position < end_of_residues:
                return (
                    f"{where}: stop '*' inside the sequence at residue {position + 1} "
                    f"(column {col}); only a terminal '*' is removed"
                )
            if code == INVALID_CODE:
                return (
                    f"{where}: invalid character {_show(byte)} at residue {position + 1} "
                    f"(column {col})"
                )
            position += 1
    return f"{source}:{rec_line}: record '{_text(rid)}': invalid sequence"


def _show(byte: int) -> str:
    ch = chr(byte)
    return repr(ch) if ch.isprintable() and byte < 128 else f"byte 0x{byte:02x}"


def _text(b: bytes) -> str:
    """For messages only: never lossy where the text is data (see :func:`_header_text`)."""
    return b.decode("utf-8", errors="replace")


def _header_text(b: bytes, source: str, line: int) -> str:
    """A header's bytes as text: UTF-8 or one clear error. A lossy decode would turn distinct
    ids (``caf\xe9``, ``caf\xe8``) into one and report them as duplicates."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FastaError(
            f"{source}:{line}: header is not UTF-8 text (byte 0x{b[exc.start]:02x} in '{_text(b)}'); "
            "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"
        ) from None


# --------------------------------------------------------------------------- public API


def read_fasta(
    path: str | os.PathLike,
    policy: CleaningPolicy | None = None,
    *,
    skip_invalid: bool = False,
    rename_duplicates: bool = False,
    stats: FastaStats | None = None,
) -> Iterator[FastaRecord]:
    """Stream cleaned protein records from a plain or gzipped FASTA file.

    Raises :class:`~protlm.errors.FastaError` (one line: file, line, record) on malformed
    input. Duplicate ids are an error unless ``rename_duplicates`` (then the second ``P1``
    becomes ``P1_2``, and so on). ``stats``, when given, is filled in while reading.
    """
    policy = policy or CleaningPolicy()
    tables = policy.tables
    stats = stats if stats is not None else FastaStats()
    source = str(path)
    seen: dict[str, int] = {}
    decode = tables.decode
    for block, first_line in iter_record_blocks(path, target_size=1 << 22):
        enc = encode_block(block, first_line, source, tables, stats, skip_invalid)
        letters = enc.tokens.tobytes().translate(decode)
        offsets = enc.offsets.tolist()
        for i, (rid, header, line) in enumerate(zip(enc.ids, enc.headers, enc.lines.tolist())):
            record = FastaRecord(
                id=_unique_id(_header_text(rid, source, line), line, seen, source, rename_duplicates, stats),
                sequence=letters[offsets[i] : offsets[i + 1]].decode("ascii"),
                description=_header_text(header, source, line),
                line=line,
            )
            if (len(record.sequence) >= NUCLEOTIDE_MIN and not record.sequence.strip(NUCLEOTIDES)
                    and len(set(record.sequence)) >= 3):
                stats.nucleotide_like += 1
                stats.first_nucleotide_like = stats.first_nucleotide_like or f"{record.id!r} at line {line}"
            yield record
    if stats.records == 0 and stats.skipped == 0:
        raise FastaError(f"{source}: no FASTA records (the file holds only blank lines)")
    if stats.nucleotide_like:  # valid letters, so not an error; but almost surely not what was meant
        log.warning("%s: %d of %d records (first: %s) hold only the letters A, C, G, T/U and N: nucleotide "
                    "sequences? protlm reads protein sequences (translate them first)", source,
                    stats.nucleotide_like, stats.records, stats.first_nucleotide_like)


class DuplicateIdError(FastaError):
    """Two records with one id. Commands that can rename them (``--rename-duplicates``) say so."""


def _unique_id(rid: str, line: int, seen: dict, source: str, rename: bool, stats) -> str:
    if rid not in seen:
        seen[rid] = line
        return rid
    if not rename:
        raise DuplicateIdError(
            f"{source}:{line}: duplicate id '{rid}' (first seen at line {seen[rid]}); ids must be unique"
        )
    k = 2
    while f"{rid}_{k}" in seen:
        k += 1
    new = f"{rid}_{k}"
    seen[new] = line
    stats.renamed += 1
    log.warning("%s:%d: duplicate id '%s' renamed to '%s'", source, line, rid, new)
    return new


def read_fasta_raw(path: str | os.PathLike) -> Iterator[FastaRecord]:
    """Stream records whose bodies are not protein sequences (label strings, 0/1 masks).

    Whitespace is removed, nothing else is changed or validated; duplicate ids are an error.
    """
    source = str(path)
    stats = FastaStats()
    seen: dict[str, int] = {}
    for block, first_line in iter_record_blocks(path, target_size=1 << 22):
        enc = encode_block(block, first_line, source, None, stats)
        body = enc.tokens.tobytes()
        offsets = enc.offsets.tolist()
        for i, (rid, header, line) in enumerate(zip(enc.ids, enc.headers, enc.lines.tolist())):
            rid = _unique_id(_header_text(rid, source, line), line, seen, source, False, stats)
            yield FastaRecord(rid, _text(body[offsets[i] : offsets[i + 1]]), _header_text(header, source, line), line)


