"""Loaders for the benchmark data sets: every format becomes a list of :class:`ProteinRecord`.

Formats (see ``../shared/data/CATALOG.md`` for provenance and counts):

- NetSurfP-2.0 / FLIP in biotrainer's three-file layout (:func:`load_netsurfp`), with the
  optional 8-state label and mask files;
- ProtTrans' CB513 CSV (:func:`load_prottrans_csv`);
- DeepLoc FASTA with ``Location-M|S|U|?`` headers (:func:`load_deeploc`);
- TAPE / ProteinBERT / SCOP ``seq,label`` CSVs (:func:`load_seq_label_csv`);
- biotrainer's single-file FASTA with ``TARGET=`` / ``SET=`` headers
  (:func:`load_biotrainer_fasta`).

Every protein sequence is cleaned with the one :class:`~protlm.data.alphabet.CleaningPolicy`
(B/O/U/Z become X by default, which keeps lengths; gaps and a terminal ``*`` are removed,
which would break the alignment with per-residue labels and is therefore reported).

Malformed input raises :class:`~protlm.errors.InputError` with one line naming the file, the
record id and the line or row. :data:`BENCHMARKS` maps benchmark names to loaders that know
the file names inside a data folder laid out like ``../shared/data``; :func:`summarize`
counts what was loaded.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import zip_longest
from pathlib import Path

import numpy as np

from protlm.data.alphabet import INVALID_CODE, STOP_CODE, CleaningPolicy
from protlm.data.fasta import FastaRecord, read_fasta, read_fasta_raw
from protlm.data.records import ProteinRecord
from protlm.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS",
    "DSSP3",
    "DSSP8",
    "load_benchmark",
    "load_biotrainer_fasta",
    "load_deeploc",
    "load_netsurfp",
    "load_prottrans_csv",
    "load_seq_label_csv",
    "summarize",
]

#: 3-state secondary structure classes (helix, strand, coil).
DSSP3 = "HEC"
#: 8-state DSSP classes; ``-`` in label files means "no 8-state label here" (masked).
DSSP8 = "HGIEBTSC"
NO_LABEL = "-"

MEMBRANE_SUFFIXES = ("M", "S", "U", "?")
_SPLIT_NAMES = {
    "train": "train",
    "val": "valid",
    "valid": "valid",
    "validation": "valid",
    "test": "test",
    "pred": "pred",
}
_TRUE = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- small helpers


def _clean_sequence(text: str, policy: CleaningPolicy, where: str) -> str:
    """Clean one sequence string with the same tables the FASTA reader uses."""
    tables = policy.tables
    raw = text.encode("utf-8", errors="replace")
    tokens = raw.translate(tables.encode, tables.delete).rstrip(bytes([STOP_CODE]))
    if bytes([INVALID_CODE]) in tokens or bytes([STOP_CODE]) in tokens:
        body = raw.translate(None, tables.delete)
        for pos, byte in enumerate(body, start=1):
            code = tables.encode[byte]
            if code == INVALID_CODE:
                ch = chr(byte)
                shown = repr(ch) if ch.isprintable() and byte < 128 else f"byte 0x{byte:02x}"
                raise InputError(f"{where}: invalid character {shown} at residue {pos}")
            if code == STOP_CODE:
                raise InputError(
                    f"{where}: stop '*' inside the sequence at residue {pos}; "
                    "only a terminal '*' is removed"
                )
    if not tokens:
        raise InputError(f"{where}: empty sequence")
    return tokens.translate(tables.decode).decode("ascii")


def _check_alphabet(labels: str, allowed: str, where: str, what: str) -> None:
    """Raise if ``labels`` holds a character outside ``allowed``."""
    if not labels.translate(str.maketrans("", "", allowed)):
        return
    for pos, ch in enumerate(labels, start=1):
        if ch not in allowed:
            raise InputError(
                f"{where}: invalid {what} character {ch!r} at position {pos} "
                f"(expected one of {allowed})"
            )


def _parse_mask(text: str, where: str) -> np.ndarray:
    """A ``0101...`` string as a uint8 array; anything but 0/1 is an error."""
    raw = text.encode("utf-8", errors="replace")
    arr = np.frombuffer(raw, dtype=np.uint8) - np.uint8(48)
    if len(raw) != len(text) or (arr > 1).any():
        for pos, ch in enumerate(text, start=1):
            if ch not in "01":
                raise InputError(
                    f"{where}: invalid mask character {ch!r} at position {pos} (expected 0 or 1)"
                )
    return arr


def _parse_attrs(rec: FastaRecord, source: str) -> dict[str, str]:
    """``key=value`` tokens after the id in a header (biotrainer convention)."""
    attrs: dict[str, str] = {}
    for token in rec.description.split()[1:]:
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise InputError(
                f"{source}:{rec.line}: record '{rec.id}': bad header token {token!r} "
                "(expected KEY=value after the id, e.g. SET=train VALIDATION=False)"
            )
        if key.upper() in attrs:
            raise InputError(f"{source}:{rec.line}: record '{rec.id}': {key} given twice")
        attrs[key.upper()] = value
    return attrs


def _header_words(header: list[str]) -> str:
    """A CSV header for a message: its column names when they look like column names, else only
    how many fields the first line has — a message never echoes what may be another file's content
    (a tampered head, a wrong path)."""
    names = [h.strip() for h in header]
    if names and len(names) <= 30 and all(0 < len(h) <= 40 and all(c.isalnum() or c in "_- ." for c in h)
                                          for h in names):
        return "columns " + ", ".join(names)
    return f"the first line has {len(names)} field(s) and does not read as column names"


def _split_from_attrs(attrs: dict[str, str], rec: FastaRecord, source: str, named_sets: bool = False) -> str:
    """``SET=train`` (+ ``VALIDATION=True`` → valid), ``SET=test``, ``SET=val``, ``SET=pred``; as in
    biotrainer 1.4, any other value names an extra test set (``SET=new364`` → split ``new364``,
    selected with ``split: new364`` in a task config)."""
    where = f"{source}:{rec.line}: record '{rec.id}'"
    if "SET" not in attrs or not attrs["SET"]:
        raise InputError(f"{where}: header has no SET=train|test attribute")
    split = _SPLIT_NAMES.get(attrs["SET"].lower())
    if split is None and not named_sets:
        raise InputError(f"{where}: unknown SET={attrs['SET']!r} (expected train, val or test)")
    if split is None:
        split = attrs["SET"]
        if not all(ch.isalnum() or ch in "-_." for ch in split):
            raise InputError(f"{where}: SET={split!r}: a named test set takes letters, digits, '-', '_' or '.'")
        validation = attrs.get("VALIDATION", "False")
        if _TRUE.get(validation.lower()):
            raise InputError(f"{where}: SET={split} (a named test set) together with VALIDATION=True")
        return split
    validation = attrs.get("VALIDATION", "False")
    flag = _TRUE.get(validation.lower())
    if flag is None:
        raise InputError(f"{where}: VALIDATION={validation!r} is not True or False")
    if flag:
        if split == "test":
            raise InputError(f"{where}: SET=test together with VALIDATION=True")
        split = "valid"
    return split


def _paired(files: list[tuple[str, Iterable[FastaRecord]]]) -> Iterator[tuple[FastaRecord, ...]]:
    """Zip aligned FASTA files, checking same count, same ids and same order."""
    missing = object()
    (first_name, _), others = files[0], files[1:]
    for index, group in enumerate(zip_longest(*(it for _, it in files), fillvalue=missing), 1):
        ref = group[0]
        for (name, _), rec in zip(others, group[1:]):
            if ref is missing and rec is missing:
                continue
            if ref is missing:
                raise InputError(
                    f"{name}:{rec.line}: record '{rec.id}' (record {index}) has no counterpart "
                    f"in {first_name}, which has only {index - 1} records"
                )
            if rec is missing:
                raise InputError(
                    f"{name}: ends after {index - 1} records but {first_name} has more "
                    f"(first missing: '{ref.id}', line {ref.line})"
                )
            if rec.id != ref.id:
                raise InputError(
                    f"{name}:{rec.line}: record {index} is '{rec.id}' but {first_name} has "
                    f"'{ref.id}' there (line {ref.line}); the files must list the same ids "
                    "in the same order"
                )
        yield group


def _check_length(rec: FastaRecord, expected: int, ref_id: str, name: str, seq_name: str) -> None:
    if len(rec.sequence) != expected:
        raise InputError(
            f"{name}:{rec.line}: record '{ref_id}' has {len(rec.sequence)} positions but its "
            f"sequence in {seq_name} has {expected} residues after cleaning (cleaning removes "
            "only gaps '-' '.' and a terminal '*'; B/O/U/Z→X keeps the length)"
        )


def _open_csv(path: PathLike):
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a CSV file")
    try:
        return open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def _csv_rows(path: PathLike) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every non-blank row (header included)."""
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        try:
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                yield reader.line_num, fields
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:{reader.line_num}: not a readable CSV file ({exc})") from None


# --------------------------------------------------------------------------- NetSurfP / FLIP


def load_netsurfp(
    seq_path: PathLike,
    labels_path: PathLike,
    mask_path: PathLike,
    dssp8_path: PathLike | None = None,
    mask8_path: PathLike | None = None,
    *,
    policy: CleaningPolicy | None = None,
) -> list[ProteinRecord]:
    """Load the FLIP/biotrainer secondary-structure trio (plus optional 8-state files).

    - ``seq_path``: protein sequences (``>1es5-A``);
    - ``labels_path``: 3-state labels H/E/C with the split in the header
      (``SET=train VALIDATION=False|True`` or ``SET=test``) → ``split`` is
      ``"train"``, ``"valid"`` or ``"test"``; stored as ``residue_labels["dssp3"]``;
    - ``mask_path``: 0/1 per residue (0 = unresolved) → ``residue_masks["dssp3"]``;
    - ``dssp8_path``: 8-state labels H G I E B T S C, ``-`` = no label →
      ``residue_labels["dssp8"]`` (the ``-`` characters are kept in the string);
      ``residue_masks["dssp8"]`` is ``mask8`` (or all ones without ``mask8_path``) AND
      "labelled". Records without any 8-state label get no ``"dssp8"`` key at all.

    All files must list the same ids in the same order with the same lengths; any mismatch
    raises :class:`InputError` naming the file, line and id.
    """
    if mask8_path is not None and dssp8_path is None:
        raise ConfigError("mask8_path given without dssp8_path")
    policy = policy or CleaningPolicy()
    names = [str(seq_path), str(labels_path), str(mask_path)]
    files = [
        (names[0], read_fasta(seq_path, policy)),
        (names[1], read_fasta_raw(labels_path)),
        (names[2], read_fasta_raw(mask_path)),
    ]
    if dssp8_path is not None:
        names.append(str(dssp8_path))
        files.append((names[-1], read_fasta_raw(dssp8_path)))
    if mask8_path is not None:
        names.append(str(mask8_path))
        files.append((names[-1], read_fasta_raw(mask8_path)))

    no_label = ord(NO_LABEL)
    records: list[ProteinRecord] = []
    for group in _paired(files):
        seq, lab, msk = group[:3]
        n = len(seq.sequence)
        for name, rec in zip(names[1:], group[1:]):
            _check_length(rec, n, seq.id, name, names[0])
        where = f"{names[1]}:{lab.line}: record '{seq.id}'"
        split = _split_from_attrs(_parse_attrs(lab, names[1]), lab, names[1])
        _check_alphabet(lab.sequence, DSSP3, where, "3-state label")
        record = ProteinRecord(
            id=seq.id,
            sequence=seq.sequence,
            residue_labels={"dssp3": lab.sequence},
            residue_masks={
                "dssp3": _parse_mask(msk.sequence, f"{names[2]}:{msk.line}: record '{seq.id}'")
            },
            split=split,
        )
        if dssp8_path is not None:
            d8 = group[3]
            where8 = f"{names[3]}:{d8.line}: record '{seq.id}'"
            _check_alphabet(d8.sequence, DSSP8 + NO_LABEL, where8, "8-state label")
            labelled = (np.frombuffer(d8.sequence.encode("ascii"), dtype=np.uint8) != no_label)
            if labelled.any():
                mask8 = labelled.astype(np.uint8)
                if mask8_path is not None:
                    m8 = group[4]
                    mask8 &= _parse_mask(m8.sequence, f"{names[4]}:{m8.line}: record '{seq.id}'")
                record.residue_labels["dssp8"] = d8.sequence
                record.residue_masks["dssp8"] = mask8
        records.append(record)
    return records


# --------------------------------------------------------------------------- CB513 (ProtTrans CSV)

_PROTTRANS_COLUMNS = ("input", "dssp3", "dssp8", "disorder", "cb513_mask")


def _float_mask(tokens: list[str], where: str, column: str) -> np.ndarray:
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise InputError(f"{where}: column {column}: {bad!r} is not a number") from None
    ok = (values == 0.0) | (values == 1.0)
    if not ok.all():
        pos = int(np.argmin(ok))
        raise InputError(
            f"{where}: column {column}: value {tokens[pos]!r} at residue {pos + 1} is not 0 or 1"
        )
    return values.astype(np.uint8)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_prottrans_csv(
    path: PathLike,
    name: str = "cb513",
    *,
    dedupe: bool = False,
    policy: CleaningPolicy | None = None,
) -> list[ProteinRecord]:
    """Load ProtTrans' secondary-structure CSV (``CB513_HHblits.csv``).

    Header ``input, dssp3, dssp8, disorder, cb513_mask`` (spaces after the commas are
    allowed); each field is a space-separated token string with one token per residue.

    Scoring mask: a residue is scored iff ``disorder == 1`` AND ``cb513_mask == 1`` (both
    0/1 columns, 0 = exclude); that product is stored as ``residue_masks["dssp3"]`` and
    ``residue_masks["dssp8"]``. Ids are ``{name}_row{i}`` (``i`` = 1-based data row), split
    ``"test"``.

    ``dedupe=False`` (default) keeps every row as given (the catalog asks to report metrics
    over rows as given). ``dedupe=True`` keeps one record per distinct sequence (the first
    row's id). In CB513 the repeated sequences are the *same chain* listed once per CB513
    domain: identical sequence and labels, only ``cb513_mask`` differs and the scored
    stretches do not overlap. Dropping the later rows would silently drop those domains from
    scoring, so when labels are identical the later row's scored positions are OR-ed into the
    kept record's masks; rows with the same sequence but different labels are dropped
    (logged).
    """
    policy = policy or CleaningPolicy()
    source = str(path)
    rows = _csv_rows(path)
    try:
        header_line, header = next(rows)
    except StopIteration:
        raise InputError(
            f"{source}: file is empty, expected a header {', '.join(_PROTTRANS_COLUMNS)}"
        ) from None
    columns = [h.strip().lower() for h in header]
    index = {}
    for col in _PROTTRANS_COLUMNS:
        if col not in columns:
            raise InputError(
                f"{source}:{header_line}: header has no column {col!r} "
                f"({_header_words(columns)}; expected {', '.join(_PROTTRANS_COLUMNS)})"
            )
        index[col] = columns.index(col)

    records: list[ProteinRecord] = []
    first_by_seq: dict[str, ProteinRecord] = {}
    merged = dropped = 0
    for row, (line, fields) in enumerate(rows, start=1):
        rid = f"{name}_row{row}"
        where = f"{source}:{line}: row {row} ('{rid}')"
        if len(fields) != len(columns):
            raise InputError(f"{where}: has {len(fields)} fields, the header has {len(columns)}")
        tok = {col: fields[index[col]].split() for col in _PROTTRANS_COLUMNS}
        n = len(tok["input"])
        lengths = {col: len(t) for col, t in tok.items()}
        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{c}={k}" for c, k in lengths.items())
            raise InputError(f"{where}: columns have different numbers of tokens ({detail})")
        if n == 0:
            raise InputError(f"{where}: empty sequence")
        for col in ("input", "dssp3", "dssp8"):
            long = next((t for t in tok[col] if len(t) != 1), None)
            if long is not None:
                raise InputError(f"{where}: column {col}: token {long!r} is not one character")
        sequence = _clean_sequence("".join(tok["input"]), policy, where)
        if len(sequence) != n:
            raise InputError(
                f"{where}: sequence has {len(sequence)} residues after cleaning but {n} tokens "
                "(gap or stop characters in the input column)"
            )
        dssp3 = "".join(tok["dssp3"])
        dssp8 = "".join(tok["dssp8"])
        _check_alphabet(dssp3, DSSP3, where, "dssp3 label")
        _check_alphabet(dssp8, DSSP8 + NO_LABEL, where, "dssp8 label")
        scored = _float_mask(tok["disorder"], where, "disorder") & _float_mask(
            tok["cb513_mask"], where, "cb513_mask"
        )
        mask8 = scored.copy()
        if NO_LABEL in dssp8:
            labelled = np.frombuffer(dssp8.encode("ascii"), np.uint8) != ord(NO_LABEL)
            mask8 &= labelled.astype(np.uint8)
        record = ProteinRecord(
            id=rid,
            sequence=sequence,
            residue_labels={"dssp3": dssp3, "dssp8": dssp8},
            residue_masks={"dssp3": scored, "dssp8": mask8},
            split="test",
        )
        if dedupe:
            kept = first_by_seq.get(sequence)
            if kept is not None:
                if kept.residue_labels == record.residue_labels:
                    for task in ("dssp3", "dssp8"):
                        kept.residue_masks[task] |= record.residue_masks[task]
                    merged += 1
                else:
                    dropped += 1
                    log.warning(
                        "%s: %s repeats the sequence of %s with different labels; dropped",
                        source, rid, kept.id,
                    )
                continue
            first_by_seq[sequence] = record
        records.append(record)
    if not records:
        raise InputError(f"{source}: no data rows after the header")
    if dedupe:
        log.info(
            "%s: dedupe kept %d distinct sequences (%d repeated rows merged into the first, "
            "%d dropped)", source, len(records), merged, dropped,
        )
    return records


# --------------------------------------------------------------------------- DeepLoc


def _parse_location(token: str, where: str) -> tuple[str, str]:
    location, dash, suffix = token.rpartition("-")
    if not dash or not location or suffix not in MEMBRANE_SUFFIXES:
        raise InputError(
            f"{where}: bad DeepLoc label {token!r} (expected Location-M, -S, -U or -?, "
            "e.g. Cell.membrane-M)"
        )
    return location, suffix


def load_deeploc(
    path: PathLike,
    split: str | None = None,
    *,
    policy: CleaningPolicy | None = None,
    named_sets: bool = False,
) -> list[ProteinRecord]:
    """Load a DeepLoc FASTA file.

    Headers ``>Q9Y4C2 Cell.membrane-M`` or ``>Q5I0E9 Cell.membrane-? train
    reconstructed_seq=...``. The membrane suffix is the LAST ``-X`` with X in M/S/U/?, so
    the dual class ``Cytoplasm-Nucleus-U`` gives location ``"Cytoplasm-Nucleus"``.

    ``labels["location"]`` is the location string; ``labels["membrane"]`` is ``"M"``
    (membrane-bound) or ``"S"`` (soluble) and absent for U/? (unknown). ``split`` is taken
    from a ``train``/``test``/``valid`` word in the header, else from the ``split`` argument.
    ``key=value`` words (``reconstructed_seq=...``) are metadata and ignored.

    ``named_sets``: another word names a set of the file's own, as biotrainer's ``SET=new364``
    (setHARD's ``>P12345 Cell.membrane-M new_test_set`` → split ``new_test_set``, selected with
    ``split: new_test_set``); one such word per header, letters, digits, ``-``, ``_`` or ``.``.
    Without it (the benchmark files) such a word is refused.
    """
    source = str(path)
    records: list[ProteinRecord] = []
    for rec in read_fasta(path, policy or CleaningPolicy()):
        where = f"{source}:{rec.line}: record '{rec.id}'"
        words = rec.description.split()[1:]
        if not words:
            raise InputError(
                f"{where}: header has no location label (expected e.g. '>{rec.id} Nucleus-U')"
            )
        location, membrane = _parse_location(words[0], where)
        rec_split = split
        own = None
        for word in words[1:]:
            if "=" in word:
                continue
            named = _SPLIT_NAMES.get(word.lower())
            if named is None and named_sets and own is None and all(ch.isalnum() or ch in "-_." for ch in word):
                named = own = word  # a set of the file's own (setHARD's new_test_set)
            if named is None:
                expected = "train, test, one set name or key=value" if named_sets else "train, test or key=value"
                raise InputError(f"{where}: unexpected header word {word!r} (expected {expected})")
            rec_split = named
        labels: dict[str, object] = {"location": location}
        if membrane in ("M", "S"):
            labels["membrane"] = membrane
        records.append(
            ProteinRecord(id=rec.id, sequence=rec.sequence, labels=labels, split=rec_split)
        )
    return records


# --------------------------------------------------------------------------- seq,label CSV

_KINDS = ("float", "int", "str")


def _parse_value(text: str, kind: str, where: str, task: str) -> object:
    value = text.strip()
    if not value:
        raise InputError(f"{where}: empty {task} label")
    if kind == "str":
        return value
    try:
        parsed = int(value) if kind == "int" else float(value)
    except ValueError:
        article = "an" if kind == "int" else "a"
        raise InputError(f"{where}: {task} label {value!r} is not {article} {kind}") from None
    if kind == "float" and not math.isfinite(parsed):
        raise InputError(f"{where}: {task} label {value!r} is not a finite number")
    return parsed


def load_seq_label_csv(
    path: PathLike,
    task: str,
    kind: str = "float",
    split: str | None = None,
    *,
    policy: CleaningPolicy | None = None,
    seq_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
) -> list[ProteinRecord]:
    """Load a TAPE/ProteinBERT/SCOP ``seq,label`` CSV, or any table with a sequence and a label
    column.

    ``labels[task]`` is the label parsed as ``kind`` (``"float"``, ``"int"`` or ``"str"``);
    ids are ``{stem}_row{i}`` with ``stem`` the file name without its last suffix
    (``stability.train_row1``) and ``i`` the 1-based data row. A bad value raises
    :class:`InputError` naming the row and line. ``seq_column`` / ``label_column`` name the
    columns (header names, case-insensitive; default ``seq`` or ``sequence``, ``label`` or
    ``target``); ``id_column`` a column of protein ids (unique) instead of the row ids.
    """
    if kind not in _KINDS:
        raise ConfigError(f"label kind must be one of {', '.join(_KINDS)}, not {kind!r}")
    policy = policy or CleaningPolicy()
    source = str(path)
    stem = Path(path).stem
    rows = _csv_rows(path)
    try:
        header_line, header = next(rows)
    except StopIteration:
        raise InputError(f"{source}: file is empty, expected a header 'seq,label'") from None
    columns = [h.strip().lower() for h in header]

    def named(option: str, name: str | None, defaults: tuple[str, ...]) -> int | None:
        if name is None:
            return next((columns.index(c) for c in defaults if c in columns), None)
        if name.strip().lower() not in columns:
            raise InputError(f"{source}:{header_line}: {option} {name!r} is not a column of the header "
                             f"({_header_words(header)})")
        return columns.index(name.strip().lower())

    seq_col = named("seq_column", seq_column, ("seq", "sequence"))
    label_col = named("label_column", label_column, ("label", "target"))
    id_col = named("id_column", id_column, ()) if id_column is not None else None
    if seq_col is None or label_col is None:
        raise InputError(
            f"{source}:{header_line}: the header ({_header_words(header)}) lacks a seq and a label column "
            "(expected 'seq,label'; name other columns with seq_column= and label_column=)"
        )
    records: list[ProteinRecord] = []
    seen: dict[str, int] = {}
    for row, (line, fields) in enumerate(rows, start=1):
        rid = f"{stem}_row{row}"
        where = f"{source}:{line}: row {row} ('{rid}')"
        if len(fields) != len(columns):
            raise InputError(f"{where}: has {len(fields)} fields, the header has {len(columns)}")
        if id_col is not None:
            rid = fields[id_col].strip()
            if not rid:
                raise InputError(f"{where}: empty id in column {id_column!r}")
            if rid in seen:
                raise InputError(f"{source}:{line}: id {rid!r} (column {id_column!r}) repeats row {seen[rid]}")
            seen[rid] = row
            where = f"{source}:{line}: row {row} ('{rid}')"
        sequence = _clean_sequence(fields[seq_col], policy, where)
        value = _parse_value(fields[label_col], kind, where, task)
        records.append(ProteinRecord(id=rid, sequence=sequence, labels={task: value}, split=split))
    if not records:
        raise InputError(f"{source}: no data rows after the header")
    return records


# --------------------------------------------------------------------------- biotrainer FASTA


def _parse_residue_values(target: str, length: int, where: str) -> np.ndarray:
    """``0.1;0.5;nan;…`` → float64 array (``nan`` or an empty field: no value at that residue)."""
    parts = target.split(";")
    if len(parts) != length:
        raise InputError(f"{where}: TARGET has {len(parts)} ';'-separated values but the sequence has {length} "
                         f"residues (per-residue values)")
    out = np.empty(length, dtype=np.float64)
    for i, part in enumerate(parts):
        text = part.strip()
        try:
            out[i] = float(text) if text and text.lower() != "nan" else np.nan
        except ValueError:
            raise InputError(f"{where}: TARGET value {i + 1} is {part!r}, not a number") from None
        if np.isinf(out[i]):
            raise InputError(f"{where}: TARGET value {i + 1} is infinite")
    return out


def load_biotrainer_fasta(
    path: PathLike,
    per_residue: bool | None = None,
    *,
    policy: CleaningPolicy | None = None,
) -> list[ProteinRecord]:
    """Load biotrainer's single-file format.

    Headers are ``>id KEY=value ...`` with ``TARGET=`` (per-protein value, or one class
    character per residue), ``SET=train|test`` (``val`` also accepted), optional
    ``VALIDATION=True|False`` (``SET=train VALIDATION=True`` → split ``"valid"``) and
    optional ``MASK=0111...`` (one 0/1 per residue).

    ``per_residue=None`` infers the task type: per residue iff every record's TARGET has
    exactly its sequence's length and that length is > 1. Per residue: TARGET goes to
    ``residue_labels["target"]`` and MASK to ``residue_masks["target"]``; otherwise TARGET
    (a string) goes to ``labels["target"]`` and MASK is ignored. ``SET=pred`` records may
    lack a TARGET. A TARGET of ``;``-separated numbers, one per residue (biotrainer's
    ``residue_to_value``), goes to ``residue_values["target"]`` (``nan`` or empty: no value).
    """
    source = str(path)
    parsed: list[tuple[FastaRecord, dict[str, str], str]] = []
    for rec in read_fasta(path, policy or CleaningPolicy()):
        attrs = _parse_attrs(rec, source)
        rec_split = _split_from_attrs(attrs, rec, source, named_sets=True)
        if "TARGET" not in attrs and rec_split != "pred":
            raise InputError(f"{source}:{rec.line}: record '{rec.id}': header has no TARGET=")
        parsed.append((rec, attrs, rec_split))
    if not parsed:
        raise InputError(f"{source}: no records")
    # biotrainer's residue_to_value: one number per residue, separated by ';'
    values = any(";" in a.get("TARGET", "") for _, a, _ in parsed)
    if per_residue is None:
        per_residue = values or all(
            len(r.sequence) > 1 and len(a.get("TARGET", r.sequence)) == len(r.sequence)
            for r, a, _ in parsed
        )
    records: list[ProteinRecord] = []
    for rec, attrs, rec_split in parsed:
        where = f"{source}:{rec.line}: record '{rec.id}'"
        record = ProteinRecord(id=rec.id, sequence=rec.sequence, split=rec_split)
        target = attrs.get("TARGET")
        if per_residue and values:
            if target is not None:
                record.residue_values["target"] = _parse_residue_values(target, len(rec.sequence), where)
            if "MASK" in attrs:
                if len(attrs["MASK"]) != len(rec.sequence):
                    raise InputError(f"{where}: MASK has {len(attrs['MASK'])} characters but the sequence has "
                                     f"{len(rec.sequence)} residues")
                record.residue_masks["target"] = _parse_mask(attrs["MASK"], where)
        elif per_residue:
            if target is not None:
                if len(target) != len(rec.sequence):
                    raise InputError(
                        f"{where}: TARGET has {len(target)} characters but the sequence has "
                        f"{len(rec.sequence)} residues (per-residue task)"
                    )
                record.residue_labels["target"] = target
            if "MASK" in attrs:
                mask = attrs["MASK"]
                if len(mask) != len(rec.sequence):
                    raise InputError(
                        f"{where}: MASK has {len(mask)} characters but the sequence has "
                        f"{len(rec.sequence)} residues"
                    )
                record.residue_masks["target"] = _parse_mask(mask, where)
        elif target is not None:
            record.labels["target"] = target
        records.append(record)
    return records


# --------------------------------------------------------------------------- registry

DATA_HINT = "is --data pointing at the protlm benchmark data folder?"


def _need(data_dir: PathLike, *parts: str) -> Path:
    path = Path(data_dir).joinpath(*parts)
    if not path.is_file():
        raise InputError(f"{path}: no such file ({DATA_HINT})")
    return path


def _netsurfp(data_dir: PathLike, policy: CleaningPolicy | None = None) -> list[ProteinRecord]:
    files = [_need(data_dir, "secondary_structure", f"{n}.fasta")
             for n in ("sequences", "sampled", "mask", "dssp8", "mask8")]
    return load_netsurfp(*files, policy=policy)


def _csv_loader(folder: str, file: str, task: str, kind: str, split: str):
    def load(data_dir: PathLike, policy: CleaningPolicy | None = None) -> list[ProteinRecord]:
        return load_seq_label_csv(_need(data_dir, folder, file), task, kind, split, policy=policy)

    load.__name__ = f"load_{file.replace('.csv', '').replace('.', '_')}"
    load.__doc__ = f"{folder}/{file}: labels[{task!r}] ({kind}), split {split!r}."
    return load


#: Benchmark name → ``f(data_dir, policy=None) -> list[ProteinRecord]`` for a folder laid out
#: like ``../shared/data``.
BENCHMARKS: dict[str, Callable[..., list[ProteinRecord]]] = {
    "netsurfp": _netsurfp,
    "cb513": lambda d, policy=None: load_prottrans_csv(
        _need(d, "secondary_structure", "CB513_HHblits.csv"), "cb513", policy=policy
    ),
    "deeploc_train": lambda d, policy=None: load_deeploc(
        _need(d, "localization", "deeploc_train_reconstructed_from_swissprot2014.fasta"), "train", policy=policy
    ),
    "deeploc_val": lambda d, policy=None: load_deeploc(
        _need(d, "localization", "deeploc_our_val_set.fasta"), "valid", policy=policy
    ),
    "stability_train": _csv_loader("tape", "stability.train.csv", "stability", "float", "train"),
    "stability_valid": _csv_loader("tape", "stability.valid.csv", "stability", "float", "valid"),
    "remote_homology_train": _csv_loader("tape", "remote_homology.train.csv", "fold", "int", "train"),
    "remote_homology_valid": _csv_loader("tape", "remote_homology.valid.csv", "fold", "int", "valid"),
    "fluorescence_valid": _csv_loader("tape", "fluorescence.valid.csv", "fluorescence", "float", "valid"),
    "scop": _csv_loader("scop", "scop.train.csv", "scop_class", "str", "train"),
}


def load_benchmark(name: str, data_dir: PathLike, policy: CleaningPolicy | None = None) -> list[ProteinRecord]:
    """Load benchmark ``name`` (a key of :data:`BENCHMARKS`) from ``data_dir``, sequences cleaned
    with ``policy`` (default: B/O/U/Z → X)."""
    try:
        loader = BENCHMARKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown benchmark {name!r} (choose from {', '.join(sorted(BENCHMARKS))})"
        ) from None
    return loader(data_dir, policy=policy)


# --------------------------------------------------------------------------- summary

MAX_COUNTED_VALUES = 50


def summarize(records: list[ProteinRecord]) -> dict:
    """Plain-JSON summary of loaded records.

    ``records``, ``residues``, ``length`` (min/median/max), ``splits`` (records per split;
    ``null`` split shown as ``"none"``), ``labels`` (per task: how many records carry it;
    strings with ≤ 50 distinct values get ``counts``, other strings/ints ``distinct``;
    numbers also ``min``/``max``/``mean``) and ``residue_labels`` (per task: records,
    positions, scored positions, ``coverage`` = scored/positions, and class counts over
    scored positions).
    """
    lengths = [len(r.sequence) for r in records]
    splits = Counter(r.split if r.split is not None else "none" for r in records)
    out: dict = {
        "records": len(records),
        "residues": int(sum(lengths)),
        "length": {
            "min": min(lengths) if lengths else 0,
            "median": float(statistics.median(lengths)) if lengths else 0.0,
            "max": max(lengths) if lengths else 0,
        },
        "splits": dict(sorted(splits.items())),
        "labels": {},
        "residue_labels": {},
    }

    values: dict[str, list] = {}
    for r in records:
        for task, value in r.labels.items():
            values.setdefault(task, []).append(value)
    for task, vals in sorted(values.items()):
        entry: dict = {"records": len(vals)}
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if numeric:
            arr = np.asarray(vals, dtype=np.float64)
            entry.update(min=float(arr.min()), max=float(arr.max()), mean=float(arr.mean()))
            if all(isinstance(v, int) for v in vals):
                entry["type"] = "int"
                entry["distinct"] = len(set(vals))
            else:
                entry["type"] = "float"
        else:
            entry["type"] = "str"
            counts = Counter(str(v) for v in vals)
            entry["distinct"] = len(counts)
            if len(counts) <= MAX_COUNTED_VALUES:
                entry["counts"] = dict(counts.most_common())
        out["labels"][task] = entry

    per_task: dict[str, dict] = {}
    for r in records:
        for task, lab in r.residue_labels.items():
            acc = per_task.setdefault(
                task, {"records": 0, "positions": 0, "scored": 0, "hist": np.zeros(256, np.int64)}
            )
            codes = np.frombuffer(lab.encode("utf-8", errors="replace"), dtype=np.uint8)
            mask = r.residue_masks.get(task)
            acc["records"] += 1
            acc["positions"] += len(lab)
            if mask is not None and len(mask) == len(codes):
                codes = codes[mask.astype(bool)]
            acc["scored"] += len(codes)
            acc["hist"] += np.bincount(codes, minlength=256)
    for task, acc in sorted(per_task.items()):
        hist = acc.pop("hist")
        acc["coverage"] = acc["scored"] / acc["positions"] if acc["positions"] else 0.0
        acc["counts"] = {chr(i): int(hist[i]) for i in np.flatnonzero(hist)}
        out["residue_labels"][task] = acc
    return out
