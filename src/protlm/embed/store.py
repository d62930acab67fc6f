"""Embedding files: HDF5 in the field's convention, written so that no kill can corrupt them.

Layout (documented in the README): one dataset per protein at the root of the file, named by the
FASTA id with ``/`` replaced by ``_`` (``--key id``) or by biotrainer's sequence hash
(``--key hash``: SHA-256 hex of ``f"{sequence}_{len(sequence)}"``, the sequence as written in
the FASTA). ``attrs["original_id"]`` holds the FASTA id. Per-residue datasets are L × D
(special tokens removed), per-protein ones D. File attributes: model, family, level, layer,
dtype, int8, protlm_version, key.

While a run is going, finished batches go to a journal folder ``OUT.h5.parts/`` as
``part-NNNNNN.npz`` files (each written to a temporary name and renamed, read back without
pickle). The HDF5 file is assembled from the journal at the end into a temporary file (protlm.io.atomic) and renamed
into place. A run killed at any moment (even SIGKILL) loses at most the batch in flight, and
``--resume`` skips every protein already in the journal or in an existing output file — after
checking each of them (:class:`EntryCheck`) before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from protlm.errors import InputError
from protlm.io.atomic import write_json, write_npz, write_with_path

log = logging.getLogger("protlm.embed")


def id_key(pid: str) -> str:
    return pid.replace("/", "_")


def hash_key(raw_sequence: str) -> str:
    """The one key of a sequence, biotrainer's: SHA-256 (hex) of ``f"{seq}_{len(seq)}"``.

    ``seq`` is the sequence as written in the input: the record's residues without line breaks,
    upper case, **B/O/U/Z kept** (for a protein FASTA that is the text as written). Writers
    (``protlm embed --key hash``) and readers (task features, ``protlm predict``) both take it
    from the sequence *before* rare residues are mapped to X, so a hash-keyed file made by
    protlm, biotrainer or another tool from the same sequences is found.
    """
    return hashlib.sha256(f"{raw_sequence}_{len(raw_sequence)}".encode()).hexdigest()


def build_keys(ids: list[str], mode: str, raw: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Dataset keys in input order, and key → original id. Id collisions after ``/``→``_`` are an
    error; in hash mode identical sequences share one key (embedded once)."""
    keys: list[str] = []
    owner: dict[str, str] = {}
    for pid in ids:
        if mode == "id":
            key = id_key(pid)
            if key.strip(".") == "":  # "." is the file's root group in HDF5: such a protein would vanish
                raise InputError(f"id {pid!r} cannot be an HDF5 dataset name ('.' and '..' name groups); rename "
                                 f"the record, or use --key hash")
            if key in owner:
                raise InputError(f"ids {owner[key]!r} and {pid!r} both become dataset name {key!r} "
                                 f"(HDF5 names cannot contain '/'); rename one, or use --key hash")
        else:
            key = hash_key(raw[pid] if raw is not None else pid)
        owner.setdefault(key, pid)
        keys.append(key)
    return keys, owner


def sequence_digest(sequence: str) -> str:
    """What each entry records of the sequence it was made from (so ``--resume`` can refuse a
    changed sequence under the same name): the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(sequence.encode()).hexdigest()[:16]


class EntryCheck:
    """What every entry of one output level must be before it is kept (``--resume``) or joined
    (``merge``): an array, not an HDF5 group, of floats, L × D per residue or D per protein, one
    width D and one dtype throughout, every value finite.

    ``width`` / ``dtype``: what they must be (the model's D, the recorded ``output_dtype``); when
    None, the first entry checked sets them and every later one must match it. ``lengths``: key →
    L, for the proteins whose sequence is known.
    """

    def __init__(self, level: str, width: int | None = None, dtype: str | None = None,
                 lengths: dict[str, int] | None = None):
        self.level, self.lengths = level, lengths or {}
        self.width, self.width_from = width, "the model's width"
        self.dtype, self.dtype_from = (np.dtype(dtype) if dtype is not None else None), "the recorded output_dtype"

    def problem(self, key: str, a, where: str, dtype: bool = True) -> str | None:
        """Why entry ``key`` (a numpy array or an h5py dataset, from ``where``) cannot be trusted,
        or None. ``dtype=False``: the stored dtype is not checked (journal parts hold the model's
        output; the dtype is chosen when the file is assembled)."""
        shape, kind = getattr(a, "shape", None), getattr(getattr(a, "dtype", None), "kind", None)
        if shape is None or kind is None:  # an HDF5 group (or a link to nothing): not an embedding
            return f"{key!r} is not a dataset"
        if kind != "f":
            return f"{key!r} holds {a.dtype} values, not floats"
        if dtype:
            if self.dtype is None:
                self.dtype, self.dtype_from = a.dtype, f"{key!r} in {where}"
            elif a.dtype != self.dtype:
                return f"{key!r} is stored as {a.dtype}, not {self.dtype} as {self.dtype_from}"
        ndim = 2 if self.level == "residue" else 1
        if len(shape) != ndim:
            return f"{key!r} has shape {shape}; a per-{self.level} entry is {'L × D' if ndim == 2 else 'one D-vector'}"
        length = self.lengths.get(key)
        if ndim == 2 and length is not None and shape[0] != length:
            return f"{key!r} has {shape[0]} rows for a sequence of {length} residues"
        if self.width is None:
            self.width, self.width_from = shape[-1], f"{key!r} in {where}"
        elif shape[-1] != self.width:
            return f"{key!r} has width {shape[-1]}, not {self.width} as {self.width_from}"
        if not np.isfinite(a[()]).all():
            return f"{key!r} holds non-finite values (NaN or inf)"
        return None


class Journal:
    """Finished batches on disk, one atomic ``.npz`` per batch, and ``run.json``: what made them."""

    def __init__(self, output: Path):
        self.folder = Path(str(output) + ".parts")
        self._claim: dict | None = None  # run.json still to write, with the first part

    def claim(self, run: dict) -> None:
        """Refuse a journal made by another run; record this run's identity with its first part (a
        run that fails before finishing a batch leaves nothing that changes the next run)."""
        meta = self.folder / "run.json"
        if self.parts():  # a claim without finished parts holds nothing to protect
            if not meta.exists():
                raise InputError(f"{self.folder}: holds unfinished parts but no run.json recording which model and "
                                 f"options made them, so they cannot be checked against this run; remove the folder "
                                 f"(its proteins are embedded again)")
            try:
                old = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                old = None
            if old != run:
                diff = ", ".join(f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in run.items()
                                 if not isinstance(old, dict) or old.get(k) != v) if isinstance(old, dict) else "unreadable"
                raise InputError(f"{self.folder}: holds the unfinished parts of another run ({diff}); finish that run "
                                 f"with its own options, or remove the folder")
            return
        self._claim = run

    def done_sequences(self, checks: dict[str, EntryCheck] | None = None) -> dict[str, str]:
        """key → sequence digest ("" for parts of older runs that did not record it).

        Every part is read whole here, before any work: one that cannot be read (torn, damaged
        bytes) or holds an entry that ``checks`` (per level) refuses — a missing array, a wrong
        shape, non-finite values — is removed and its proteins are embedded again, so assembling
        the output never meets a bad part after the run.
        """
        done: dict[str, str] = {}
        for part in self.parts():
            try:
                with np.load(part, allow_pickle=False) as z:
                    arrays = {name: z[name] for name in z.files}  # reads every member: a bad CRC shows here
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                problem = f"unreadable ({exc})"
            else:
                keys, problem = _part_problem(arrays, checks or {}, part.name)
            if problem is not None:
                log.warning("%s: %s; its proteins are embedded again", part, problem)
                part.unlink(missing_ok=True)
                continue
            digests = arrays["sequence_digests"].tolist() if "sequence_digests" in arrays else [""] * len(keys)
            done.update(zip(keys, digests))
        return done

    def exists(self) -> bool:
        return self.folder.is_dir()

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz")) if self.folder.is_dir() else []

    def done_keys(self) -> set[str]:
        return set(self.done_sequences())

    def write(self, keys: list[str], originals: list[str], residue: list[np.ndarray] | None,
              protein: list[np.ndarray] | None, digests: list[str] | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._claim is not None:
            write_json(self.folder / "run.json", self._claim)
            self._claim = None
        index = len(self.parts())
        name = self.folder / f"part-{index:06d}.npz"
        while name.exists():
            index += 1
            name = self.folder / f"part-{index:06d}.npz"
        arrays = {"keys": np.array(keys, dtype=str), "original_ids": np.array(originals, dtype=str)}
        if digests is not None:
            arrays["sequence_digests"] = np.array(digests, dtype=str)
        for i in range(len(keys)):
            if residue is not None:
                arrays[f"r{i}"] = residue[i]
            if protein is not None:
                arrays[f"p{i}"] = protein[i]
        write_npz(name, arrays)

    def read(self) -> Iterable[tuple[str, str, np.ndarray | None, np.ndarray | None, str]]:
        for part in self.parts():
            with np.load(part, allow_pickle=False) as z:
                keys = z["keys"].tolist()
                originals = z["original_ids"].tolist()
                digests = z["sequence_digests"].tolist() if "sequence_digests" in z else [""] * len(keys)
                for i, (key, orig) in enumerate(zip(keys, originals)):
                    yield (key, orig, (z[f"r{i}"] if f"r{i}" in z else None), (z[f"p{i}"] if f"p{i}" in z else None),
                           digests[i])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _part_problem(arrays: dict[str, np.ndarray], checks: dict[str, EntryCheck], where: str) -> tuple[list, str | None]:
    """A journal part's keys, and why it cannot be adopted (None when it can)."""
    if "keys" not in arrays or "original_ids" not in arrays:
        return [], "no keys or original_ids array"
    keys = arrays["keys"].tolist()
    digests = arrays.get("sequence_digests")
    if len(arrays["original_ids"]) != len(keys) or (digests is not None and len(digests) != len(keys)):
        return keys, "its key, id and digest lists differ in length"
    for level, check in checks.items():
        prefix = "r" if level == "residue" else "p"
        for i, key in enumerate(keys):
            if f"{prefix}{i}" not in arrays:
                return keys, f"the {level} array of {key!r} ({prefix}{i}) is missing"
            problem = check.problem(key, arrays[f"{prefix}{i}"], where, dtype=False)
            if problem is not None:
                return keys, problem
    return keys, None


# --------------------------------------------------------------------------- reading


def open_embeddings(path: str | os.PathLike, what: str = "embeddings"):
    """An HDF5 embedding file opened read-only (``h5py.File``; use it as a context manager), or one
    error line: no such file, or not HDF5. Every reader of embedding files opens them here."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p}: no such file")
    try:
        return h5py.File(p, "r")
    except OSError:
        raise InputError(f"{what} {p}: not a readable HDF5 file") from None


def file_attr(h5, key: str, default=None):
    """A file attribute as a Python value (bytes decoded, numpy scalars unwrapped)."""
    v = h5.attrs.get(key, default)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v.item() if isinstance(v, np.generic) else v


def file_level(h5, where: str) -> str:
    """"residue" or "protein": what an embedding file holds — its ``level`` attribute (``protlm
    embed`` writes it), else the shape of its first dataset (biotrainer's reduced files: one
    D-vector per protein; its per-residue files: L × D)."""
    level = file_attr(h5, "level")
    if level is None:
        first = next(iter(h5.keys()), None)
        level = "protein" if first is not None and getattr(h5[first], "ndim", 2) == 1 else "residue"
    if level not in ("residue", "protein"):
        raise InputError(f"{where}: level attribute {str(level)[:40]!r}; expected residue or protein")
    return str(level)


def existing_keys(path: Path) -> set[str]:
    return set(existing_sequences(path))


def existing_sequences(path: Path, check: EntryCheck | None = None) -> dict[str, str]:
    """key → sequence digest of an existing output ("" where an older protlm did not record it).

    With ``check`` (``--resume``, before any work) every entry is checked and a bad one refused,
    as is an entry without its digest in a file that records its run's fingerprint (protlm wrote
    both from the start, so the entry was changed and its sequence cannot be checked)."""
    import h5py

    if not path.exists():
        return {}
    try:
        with h5py.File(path, "r") as f:
            fingerprinted = file_attr(f, "fingerprint") is not None
            done = {}
            for k in f.keys():
                problem = None
                if check is not None:
                    problem = check.problem(k, f.get(k), str(path))  # get: a dangling link is None
                    if problem is None and fingerprinted and "sequence_digest" not in f[k].attrs:
                        problem = f"{k!r} does not record the sequence it was made from"
                if problem is not None:
                    raise InputError(f"--resume {path}: {problem}; the file is not as protlm embed wrote it, so "
                                     f"what it holds cannot be trusted: remove it (or use a new --output) to embed again")
                done[k] = str(f[k].attrs.get("sequence_digest", ""))
            return done
    except OSError:
        raise InputError(f"{path} exists but is not a readable HDF5 file; move it away or choose another --output") from None


def check_resumable(path: Path, run: dict) -> None:
    """Refuse ``--resume`` into a file made by another model, options or layout (``run``: fingerprint,
    level, key, output_dtype)."""
    import h5py

    if not path.exists():
        return
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs.get(k) for k in run}
    except OSError:
        raise InputError(f"{path} exists but is not a readable HDF5 file; move it away or choose another --output") from None
    if attrs.get("fingerprint") is None:
        raise InputError(f"--resume {path}: the file does not record what made it (an older protlm); it cannot be "
                         f"checked against this run, so embed into a new --output")
    diff = [f"{k}: {attrs[k]!r} there, {v!r} now" for k, v in run.items() if str(attrs.get(k)) != str(v)]
    if diff:
        raise InputError(f"--resume {path}: the file was made by another run ({'; '.join(diff)}); use the same "
                         f"--model and options, or a new --output")


def assemble(outputs: dict[str, Path], journal: Journal, attrs: dict, dtype: str = "float32",
             keep_existing: bool = True, compress: bool = False) -> dict[str, int]:
    """Write the journal (plus what an existing output holds) into the final HDF5 file(s).

    ``compress``: gzip level 4 with byte shuffling per dataset (as biotrainer writes them); about
    10–20% smaller for float32 embeddings, slower to write; readers need nothing special.
    """
    import h5py

    compression = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}

    counts = {}
    for level, path in outputs.items():
        n = 0

        def write(tmp: str, path=path, level=level) -> None:
            nonlocal n
            with h5py.File(tmp, "w") as out:
                if keep_existing and path.exists():
                    with h5py.File(path, "r") as old:
                        for key in old.keys():
                            old.copy(old[key], out, name=key)
                            n += 1
                for key, orig, residue, protein, digest in journal.read():
                    data = residue if level == "residue" else protein
                    if data is None or key in out:
                        continue
                    ds = out.create_dataset(key, data=data.astype(dtype), **compression)
                    ds.attrs["original_id"] = orig
                    if digest:
                        ds.attrs["sequence_digest"] = digest
                    n += 1
                for k, v in {**attrs, "level": level}.items():
                    out.attrs[k] = v

        write_with_path(path, write)
        counts[level] = n
    return counts


def write_vectors(path: Path, ids: list[str], arrays, attrs: dict) -> Path:
    """Arrays already in memory (per protein or per residue) into one HDF5 file in this layout,
    keyed by id (atomic)."""
    import h5py

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for pid, vec in zip(ids, arrays):
                ds = f.create_dataset(id_key(pid), data=vec)
                ds.attrs["original_id"] = pid
            for k, v in attrs.items():
                f.attrs[k] = v

    return write_with_path(Path(path), write)


def _identity(h5, where: str) -> dict:
    """What two embedding files must share to be joined: the run's fingerprint (weights, layer,
    precision, pooling), level, key mode and stored dtype; a file without a fingerprint (another
    tool, an older protlm) by its model."""
    ident = {k: file_attr(h5, k) for k in ("fingerprint", "key", "output_dtype")}
    ident["level"] = file_level(h5, where)
    if ident["fingerprint"] is None:
        ident["model"] = file_attr(h5, "model")
    return ident


def merge_files(output: Path, inputs: list[Path]) -> int:
    """Join HDF5 embedding files (e.g. ``--shard i/N`` parts) into one; the same key in two
    inputs is an error unless the arrays are identical. Inputs must come from the same run
    (:func:`_identity`: a file that records none joins only others that record none) and every
    entry must pass one :class:`EntryCheck`; anything else is refused, and nothing is written."""
    import h5py

    for p in inputs:
        if p.is_dir():
            raise InputError(f"{p}: is a folder, not an HDF5 embedding file")
        if not p.exists():
            raise InputError(f"{p}: no such file")
    n = 0

    def write(tmp: str) -> None:
        nonlocal n
        first = check = None
        with h5py.File(tmp, "w") as out:
            for p in inputs:
                try:
                    src = h5py.File(p, "r")
                except OSError:
                    raise InputError(f"{p}: not a readable HDF5 file") from None
                with src:
                    ident = _identity(src, str(p))
                    if first is None:
                        first = ident
                        try:
                            check = EntryCheck(ident["level"], dtype=ident["output_dtype"])
                        except TypeError:
                            raise InputError(f"{p}: output_dtype {ident['output_dtype']!r} is not a dtype; "
                                             f"not merged") from None
                        for k, v in src.attrs.items():
                            out.attrs[k] = v
                    elif ident != first:
                        diff = "; ".join(f"{k}: {first.get(k)!r} there, {ident.get(k)!r} here"
                                         for k in {**first, **ident} if first.get(k) != ident.get(k))
                        raise InputError(f"{p}: made by another run than {inputs[0]} ({diff}); not merged")
                    for key in src.keys():
                        problem = check.problem(key, src.get(key), str(p))  # get: a dangling link is None
                        if problem is not None:
                            raise InputError(f"{p}: {problem}; not merged")
                        if key in out:
                            if not np.array_equal(out[key][()], src[key][()]):
                                raise InputError(f"{key!r} is in two inputs with different values ({p})")
                            continue
                        src.copy(src[key], out, name=key)
                        n += 1

    write_with_path(output, write)
    return n
