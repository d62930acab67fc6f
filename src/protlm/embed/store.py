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
``--resume`` skips every protein already in the journal or in an existing output file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from protlm.errors import InputError
from protlm.io.atomic import write_json, write_npz, write_with_path


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


class Journal:
    """Finished batches on disk, one atomic ``.npz`` per batch, and ``run.json``: what made them."""

    def __init__(self, output: Path):
        self.folder = Path(str(output) + ".parts")

    def claim(self, run: dict) -> None:
        """Record the run's identity, or refuse when the journal was made by another run."""
        meta = self.folder / "run.json"
        if meta.exists() and self.parts():  # a claim without finished parts holds nothing to protect
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
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(meta, run)

    def done_sequences(self) -> dict[str, str]:
        """key → sequence digest ("" for parts of older runs that did not record it)."""
        done: dict[str, str] = {}
        for part in self.parts():
            try:
                with np.load(part, allow_pickle=False) as z:
                    keys = z["keys"].tolist()
                    digests = z["sequence_digests"].tolist() if "sequence_digests" in z else [""] * len(keys)
            except (OSError, ValueError, KeyError, EOFError):  # a torn file from a crash: redo its batch
                part.unlink(missing_ok=True)
                continue
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


def existing_sequences(path: Path) -> dict[str, str]:
    """key → sequence digest of an existing output ("" where an older protlm did not record it)."""
    import h5py

    if not path.exists():
        return {}
    try:
        with h5py.File(path, "r") as f:
            return {k: str(f[k].attrs.get("sequence_digest", "")) for k in f.keys()}
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


def merge_files(output: Path, inputs: list[Path]) -> int:
    """Join HDF5 embedding files (e.g. ``--shard i/N`` parts) into one; the same key in two
    inputs is an error unless the arrays are identical."""
    import h5py

    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: no such file")
    n = 0

    def write(tmp: str) -> None:
        nonlocal n
        with h5py.File(tmp, "w") as out:
            for p in inputs:
                try:
                    src = h5py.File(p, "r")
                except OSError:
                    raise InputError(f"{p}: not a readable HDF5 file") from None
                with src:
                    if not out.attrs.keys():
                        for k, v in src.attrs.items():
                            out.attrs[k] = v
                    elif src.attrs.get("model") != out.attrs.get("model") or src.attrs.get("level") != out.attrs.get("level"):
                        raise InputError(f"{p}: made with another model or level than {inputs[0]}; not merged")
                    for key in src.keys():
                        if key in out:
                            if not np.array_equal(out[key][()], src[key][()]):
                                raise InputError(f"{key!r} is in two inputs with different values ({p})")
                            continue
                        src.copy(src[key], out, name=key)
                        n += 1

    write_with_path(output, write)
    return n
