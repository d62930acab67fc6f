"""What a person submits to ``protlm serve``, checked before anything is queued.

Input is pasted text (FASTA, or one bare sequence, possibly wrapped over lines) or the bytes of an
uploaded FASTA file. It is parsed by protlm's FASTA reader (:func:`protlm.data.fasta.read_fasta`,
the one ``protlm predict`` uses) and checked by :func:`protlm.predictors.predictor.clean_sequences`,
so the server accepts exactly what the command accepts; then the server's :class:`Limits`. Every
failure is an :class:`InputError` with one line a person can act on (``status`` says which HTTP
code); nothing a user sends ever names a file on the server (the upload's name is only shown).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from protlm.errors import ConfigError, InputError, ProtlmError
from protlm.predictors.predictor import clean_sequences

MB = 1 << 20


class SubmitError(InputError):
    """A refused submission: ``status`` is the HTTP status (400 bad input, 413 too large, 429 queue full)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one server accepts (``protlm serve`` flags)."""

    max_upload_bytes: int = 10 * MB        # --max-upload-mb: a request body (pasted text or file)
    max_sequences: int = 5_000             # --max-sequences: proteins per job
    max_length: int = 40_000               # --max-length: residues of one protein
    max_residues: int = 2_000_000          # --max-residues: residues per job
    max_jobs: int = 20                     # --max-jobs: jobs queued or running at once

    def check(self) -> None:
        for name, value in (("--max-upload-mb", self.max_upload_bytes), ("--max-sequences", self.max_sequences),
                            ("--max-length", self.max_length), ("--max-residues", self.max_residues),
                            ("--max-jobs", self.max_jobs)):
            if value < 1:
                raise ConfigError(f"{name} must be positive")


@dataclass
class Submission:
    ids: list[str]
    sequences: list[str]
    source: str  # what the person gave, for the page ("pasted text" or the upload's name)

    @property
    def residues(self) -> int:
        return sum(len(s) for s in self.sequences)

    def fasta(self) -> str:
        return "".join(f">{i}\n{s}\n" for i, s in zip(self.ids, self.sequences))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_name(filename: str | None) -> str:
    """An upload's name as shown on the page: its last path part, no control characters, at most 80
    characters. Never used as a path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip()[:80]
    return name or "uploaded file"


def size_mb(size: int, limit: int) -> str:
    """``size`` in MB with enough digits to show it is over ``limit`` (10.04 MB is not "10.0 MB")."""
    digits = 1
    while digits < 6 and round(size / MB, digits) <= limit / MB:
        digits += 1
    return f"{size / MB:.{digits}f}"


def parse(data: bytes, source: str, limits: Limits) -> Submission:
    """Parse and check one submission (the text or file's bytes); :class:`SubmitError` otherwise."""
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.fasta import read_fasta

    if len(data) > limits.max_upload_bytes:
        raise SubmitError(f"{source}: {size_mb(len(data), limits.max_upload_bytes)} MB is over this server's limit of "
                          f"{limits.max_upload_bytes / MB:g} MB per submission", 413)
    if data[:2] == b"\x1f\x8b":
        raise SubmitError(f"{source}: a gzip-compressed file; upload the uncompressed FASTA text")
    if b"\x00" in data:
        raise SubmitError(f"{source}: does not look like a FASTA file (it contains binary data)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmitError(f"{source}: does not look like a FASTA file (not UTF-8 text: byte "
                          f"0x{data[exc.start]:02x} at offset {exc.start})") from None
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise SubmitError(f"{source}: empty; paste a protein sequence or a FASTA file")
    if not text.lstrip().startswith(">"):
        if ">" in text:
            raise SubmitError(f"{source}: text before the first FASTA header ('>'); give FASTA records, or one "
                              f"bare sequence")
        try:  # one bare sequence, possibly wrapped over lines
            return _checked(["sequence_1"], clean_sequences(["sequence_1"], [text]), source, limits)
        except ProtlmError as exc:
            raise SubmitError(f"{source}: {exc}") from None
    fd, tmp = tempfile.mkstemp(prefix="protlm-serve-", suffix=".fasta")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            records = []
            for r in read_fasta(tmp, CleaningPolicy(rare="keep")):
                records.append(r)
                if len(records) > limits.max_sequences:
                    raise SubmitError(f"{source}: more than {limits.max_sequences:,} sequences; this server takes "
                                      f"at most {limits.max_sequences:,} per job (split the file)", 413)
            ids = [r.id for r in records]
            sequences = clean_sequences(ids, [r.sequence for r in records])
        except SubmitError:
            raise
        except ProtlmError as exc:  # the reader's one line names the temporary file: name what was sent
            raise SubmitError(str(exc).replace(tmp, source)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return _checked(ids, sequences, source, limits)


def _checked(ids: list[str], sequences: list[str], source: str, limits: Limits) -> Submission:
    for pid, seq in zip(ids, sequences):
        if len(seq) > limits.max_length:
            raise SubmitError(f"protein {pid!r}: {len(seq):,} residues; this server takes proteins of at most "
                              f"{limits.max_length:,} residues", 413)
    total = sum(map(len, sequences))
    if total > limits.max_residues:
        raise SubmitError(f"{source}: {total:,} residues in all; this server takes at most {limits.max_residues:,} "
                          f"residues per job (split the file)", 413)
    return Submission(ids, sequences, source)


def parse_tasks(values: list[str]) -> list[str]:
    """Predictor names (``TASK`` or ``TASK@EMBEDDER``, as ``protlm predict --tasks``) from form
    values (each may hold several, split by commas or spaces); the default set (the UniRep-64
    predictors, as ``protlm predict``) when none are given."""
    from protlm.predictors.predictor import default_names, not_shipped, resolve

    out: list[str] = []
    for v in values:
        for t in re.split(r"[,\s]+", v.strip()):
            if not t:
                continue
            try:
                name = resolve(t)
            except ConfigError:
                raise SubmitError(f"tasks: no predictor {t[:40]!r}: {not_shipped(t[:40])}") from None
            if name not in out:
                out.append(name)
    return out or default_names()
