"""Coordinates → contact maps, and the shared contact data set (``coords_ca_cb.npz``).

Convention (TAPE / ProteinNet / ESM): residues *i* and *j* are in contact when their CB atoms
are closer than 8 Å. Glycine has no CB; where a chain gives no CB for a residue (a NaN row, the
usual way user data marks it) its CA stands in. The shared data set carries an ideal-geometry
"virtual" CB for every residue, so the fallback never triggers there. A residue with neither
atom is *unobserved*: every pair that touches it is left out of training and scoring.

A structure often covers only a stretch of the protein's sequence (here: the longest contiguous
observed stretch of a PDB chain, starting ``offset`` residues into the NetSurfP sequence). A
language model sees the whole sequence when we have it, so predictions for the full sequence are
cut down to the stretch with :func:`to_stretch` before they are compared with the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protlm.data.fasta import read_fasta
from protlm.errors import InputError
from protlm.io.atomic import write_with

#: Angstrom; CB–CB distance below which two residues are in contact.
CONTACT_THRESHOLD = 8.0
#: Pairs closer than this in sequence are trivially close and never scored (the field's convention).
MIN_SEPARATION = 6
NPZ_NAME = "coords_ca_cb.npz"
#: The arrays a structure set needs (:func:`read_structures`); others (dssp8, pdb_id, …) are ignored.
REQUIRED = ("ids or netsurfp_id", "seq", "CB", "CA (where CB has NaN rows)")
SPLITS = ("train", "valid")


@dataclass
class Chain:
    """One structure stretch: its residues, coordinates and where it sits in the full sequence."""

    id: str
    seq: str  # the residues the structure covers (length L)
    ca: np.ndarray  # L × 3 float32, Å (NaN rows: missing)
    cb: np.ndarray  # L × 3 float32, Å (NaN rows: missing, e.g. glycine)
    split: str = ""
    offset: int = 0  # where ``seq`` starts inside ``full_seq``
    full_seq: str | None = None  # the whole protein sequence, when known

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def model_input(self) -> str:
        """The sequence a model should see: the full sequence when known, else the stretch."""
        return self.full_seq if self.full_seq is not None else self.seq


def representative_coords(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """CB per residue, CA where CB is missing (glycine in user data); NaN where both are."""
    ca = np.asarray(ca, dtype=np.float64)
    cb = np.asarray(cb, dtype=np.float64)
    if ca.shape != cb.shape or ca.ndim != 2 or ca.shape[1] != 3:
        raise InputError(f"CA and CB must both be L × 3 arrays, got {ca.shape} and {cb.shape}")
    missing = np.isnan(cb).any(axis=1)
    return np.where(missing[:, None], ca, cb)


def contact_map(ca: np.ndarray, cb: np.ndarray, threshold: float = CONTACT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """``(contacts, observed)``: L × L bool map (distance < threshold) and the L residues with coordinates.

    Pairs touching an unobserved residue are False in ``contacts``; use ``observed`` to leave
    them out of losses and scores rather than counting them as non-contacts.
    """
    x = representative_coords(ca, cb)
    observed = ~np.isnan(x).any(axis=1)
    diff = x[:, None, :] - x[None, :, :]
    with np.errstate(invalid="ignore"):
        dist = np.sqrt((diff * diff).sum(-1))
    contacts = np.zeros(dist.shape, dtype=bool)
    both = observed[:, None] & observed[None, :]
    contacts[both] = dist[both] < threshold
    return contacts, observed


def separation(length: int) -> np.ndarray:
    """L × L matrix of |i − j|."""
    idx = np.arange(length)
    return np.abs(idx[:, None] - idx[None, :])


def scored_pairs(observed: np.ndarray, min_separation: int = MIN_SEPARATION) -> np.ndarray:
    """L × L bool: the pairs a loss or a metric may use (both residues observed, |i − j| ≥ min_sep)."""
    observed = np.asarray(observed, dtype=bool)
    return (separation(len(observed)) >= min_separation) & observed[:, None] & observed[None, :]


def to_stretch(full_map: np.ndarray, offset: int, length: int) -> np.ndarray:
    """Cut a prediction for the whole sequence (N × N [× …]) down to the structure stretch."""
    n = full_map.shape[0]
    if offset < 0 or offset + length > n:
        raise InputError(f"the structure stretch [{offset}, {offset + length}) lies outside a sequence of {n} residues")
    return full_map[offset:offset + length, offset:offset + length]


def locate_stretch(full_seq: str, stretch: str, offset: int | None = None) -> int:
    """Offset of ``stretch`` inside ``full_seq``: the given one when it matches, else the only match."""
    if offset is not None and full_seq[offset:offset + len(stretch)] == stretch:
        return offset
    first = full_seq.find(stretch)
    if first < 0:
        raise InputError(f"the structure's residues are not a stretch of the given sequence "
                         f"({len(stretch)} vs {len(full_seq)} residues)")
    if offset is None and full_seq.find(stretch, first + 1) >= 0:
        raise InputError("the structure's residues occur more than once in the given sequence; give the offset")
    if offset is not None and full_seq.find(stretch, first + 1) >= 0:
        raise InputError(f"the recorded offset {offset} does not match the sequence, and the stretch occurs more "
                         "than once in it")
    return first


# --------------------------------------------------------------------------- the npz data set


def resolve_npz(path: Path | str) -> Path:
    """``coords_ca_cb.npz`` itself, or the folder that holds it."""
    p = Path(path)
    if p.is_dir():
        p = p / NPZ_NAME
    if not p.is_file():
        raise InputError(f"{p}: no such file (expected the contacts data: a folder with {NPZ_NAME}, or the file)")
    return p


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz archive, or one clear error: not a zip, a damaged zip, a single
    ``.npy`` array, object arrays (never unpickled)."""
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive of named arrays")
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable npz file ({why})") from None


#: Names of the id array: ``ids`` (a structure set of your own) or ``netsurfp_id`` (the shared set).
ID_ARRAYS = ("ids", "netsurfp_id")


def read_structures(path: Path | str) -> dict[str, np.ndarray]:
    """A structure set in the npz layout, checked, as ``ids``, ``split``, ``lengths``,
    ``offsets``, ``seq`` (S1 per residue), ``CA``, ``CB``, ``stretch_offset`` (docs/contacts.md).

    Required: ids (``ids``, or ``netsurfp_id`` as in the shared set), ``seq`` and ``CB``; ``seq``
    is either one string per chain or one byte per residue with ``lengths``. Optional: ``CA``
    (stands in for a NaN CB; NaN in both marks an unobserved residue), ``lengths``, ``offsets``,
    ``split``, ``offset_in_netsurfp_seq``. Every problem is one :class:`InputError` line.
    """
    path = resolve_npz(path)
    z = read_npz(path)
    where = f"{path}"
    id_name = next((k for k in ID_ARRAYS if k in z), None)
    missing = [k for k in ("ids", "seq", "CB") if (k == "ids" and id_name is None) or (k != "ids" and k not in z)]
    if missing:
        raise InputError(f"{where}: missing array{'s' if len(missing) > 1 else ''} {', '.join(missing)} (a structure "
                         f"set needs ids, seq, CB, and CA where CB is missing; see docs/contacts.md)")
    ids = np.asarray(z[id_name]).astype(str)
    id_list = ids.tolist()
    if ids.ndim != 1:
        raise InputError(f"{where}: {id_name} must be one id per chain (1-D), got shape {ids.shape}")
    n = len(ids)
    if len(set(id_list)) != n:
        dup = next(i for i in id_list if id_list.count(i) > 1)
        raise InputError(f"{where}: chain id {dup!r} occurs more than once in {id_name}")
    seq = np.asarray(z["seq"])
    if seq.ndim != 1:
        raise InputError(f"{where}: seq must be 1-D (one string per chain, or one byte per residue), got {seq.shape}")
    if seq.dtype.kind not in "SU":
        raise InputError(f"{where}: seq must hold strings (one per chain) or single bytes (S1, one per residue), "
                         f"not {seq.dtype}")
    given = np.asarray(z["lengths"]).astype(np.int64) if "lengths" in z else None
    per_residue = given is not None and given.ndim == 1 and int(given.sum()) == len(seq) and len(seq) != n
    if not per_residue and len(seq) == n:  # one string per chain
        strings = seq.astype(str).tolist()
        lengths = np.array([len(x) for x in strings], dtype=np.int64)
        if given is not None and not np.array_equal(given, lengths):
            raise InputError(f"{where}: lengths disagree with the lengths of the seq strings")
        residues = "".join(strings)
    elif given is None:
        raise InputError(f"{where}: missing array lengths (seq holds {len(seq)} entries for {n} ids: give the chain "
                         f"lengths for one byte per residue, or one seq string per chain)")
    else:
        lengths = given
        residues = seq.tobytes().decode("ascii", "replace") if seq.dtype == np.dtype("S1") else "".join(seq.tolist())
    if lengths.shape != (n,):
        raise InputError(f"{where}: lengths has {lengths.size} entries for {n} ids")
    if (lengths < 1).any():
        raise InputError(f"{where}: chain {id_list[int(np.argmax(lengths < 1))]!r} has no residues")
    total = int(lengths.sum())
    if len(residues) != total:
        raise InputError(f"{where}: seq holds {len(residues)} residues, lengths add up to {total}")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if "offsets" in z and not np.array_equal(np.asarray(z["offsets"]).astype(np.int64), offsets):
        raise InputError(f"{where}: offsets and lengths disagree (chain k must be rows offsets[k]:offsets[k+1])")
    cb = np.asarray(z["CB"])
    ca = np.asarray(z["CA"]) if "CA" in z else None
    for name, a in (("CB", cb), ("CA", ca)):
        if a is None:
            continue
        if a.ndim != 2 or a.shape[1] != 3 or a.dtype.kind != "f":
            raise InputError(f"{where}: {name} must be a float array of shape (residues, 3), got {a.dtype} {a.shape}")
        if len(a) != total:
            raise InputError(f"{where}: {name} has {len(a)} rows, the chains have {total} residues")
    for name, a in (("CB", cb), ("CA", ca)):
        if a is not None and np.isinf(a).any():  # inf is no coordinate and no "unobserved" mark (NaN is)
            r = int(np.argmax(np.isinf(a).any(axis=1)))
            k = int(np.searchsorted(offsets, r, side="right") - 1)
            raise InputError(f"{where}: {name} is infinite at chain {id_list[k]!r} residue {r - offsets[k] + 1}; "
                             f"coordinates must be finite (NaN marks an unobserved residue)")
    letters = np.frombuffer(residues.encode("ascii", "replace"), dtype=np.uint8)
    bad = ~(((letters >= 65) & (letters <= 90)) | ((letters >= 97) & (letters <= 122)))
    if bad.any():
        r = int(np.argmax(bad))
        k = int(np.searchsorted(offsets, r, side="right") - 1)
        raise InputError(f"{where}: seq of chain {id_list[k]!r} has {residues[r]!r} at residue {r - offsets[k] + 1}; "
                         f"a structure's sequence holds one letter per residue")
    bad_cb = np.isnan(cb).any(axis=1)
    if ca is None:
        if bad_cb.any():
            r = int(np.argmax(bad_cb))
            k = int(np.searchsorted(offsets, r, side="right") - 1)
            raise InputError(f"{where}: CB is NaN at chain {id_list[k]!r} residue {r - offsets[k] + 1} and the file has no "
                             f"CA to stand in; add CA (NaN in both marks an unobserved residue)")
        ca = np.full_like(cb, np.nan)
    split = np.asarray(z["split"]).astype(str) if "split" in z else np.full(n, "", dtype=str)
    if split.shape != (n,):
        raise InputError(f"{where}: split has {split.size} entries for {n} ids")
    stretch = np.asarray(z.get("offset_in_netsurfp_seq", np.zeros(n))).astype(np.int64)
    if stretch.shape != (n,):
        raise InputError(f"{where}: offset_in_netsurfp_seq has {stretch.size} entries for {n} ids")
    return {"ids": ids, "split": split, "lengths": lengths, "offsets": offsets,
            "seq": np.frombuffer(residues.encode("ascii", "replace"), dtype="S1"), "CA": ca.astype(np.float32),
            "CB": cb.astype(np.float32), "stretch_offset": stretch, "has_split": np.array("split" in z)}


def read_full_sequences(fasta: Path | str) -> dict[str, str]:
    """Full protein sequences by id (first word of the header) from a FASTA file."""

    return {rec.id: rec.sequence for rec in read_fasta(fasta)}


def load_chains(path: Path | str, split: str | None = "train", *, max_length: int | None = None,
                min_length: int = 1, max_chains: int | None = None, seed: int = 0,
                ids: list[str] | None = None, full_sequences: dict[str, str] | None = None) -> list[Chain]:
    """Chains of one split from the npz layout, capped by length and count.

    ``split``: ``train``, ``valid`` (``validation`` is accepted) or None for all. Chains longer
    than ``max_length`` are skipped (not cropped: a crop would change L and hence the top-L/k
    counts); ``max_chains`` keeps a seeded random sample, returned in file order, so the same
    seed always gives the same chains. ``ids`` selects chains by id instead. ``full_sequences``
    (id → sequence) attaches the whole protein sequence; the stored offset is checked against it.
    """
    npz = resolve_npz(path)
    z = read_structures(npz)
    if split == "validation":
        split = "valid"
    lengths, offsets, names, splits = z["lengths"], z["offsets"], z["ids"], z["split"]
    if split is not None and split not in set(splits):
        if not bool(z["has_split"]):
            raise InputError(f"{npz}: no split array (a structure set of your own: every chain is scored; "
                             f"it has no {split} split)")
        raise InputError(f"{npz}: no chains in split {split!r} (the file has {', '.join(sorted(set(splits)))})")
    keep = np.ones(len(lengths), dtype=bool)
    if ids is not None:
        wanted = set(ids)
        keep &= np.isin(names, list(wanted))
        unknown = wanted - set(names[keep])
        if unknown:
            raise InputError(f"{npz}: no chain named {sorted(unknown)[0]!r}")
    elif split is not None:
        keep &= splits == split
    keep &= lengths >= min_length
    if max_length is not None:
        keep &= lengths <= max_length
    chosen = np.flatnonzero(keep)
    if max_chains is not None and len(chosen) > max_chains:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(chosen, size=max_chains, replace=False))
    stretch_off = z["stretch_offset"]
    seq_bytes = z["seq"]
    chains = []
    for k in chosen:
        a, b = offsets[k], offsets[k + 1]
        seq = seq_bytes[a:b].tobytes().decode("ascii")
        off = int(stretch_off[k])
        chain = Chain(id=str(names[k]), seq=seq, ca=z["CA"][a:b], cb=z["CB"][a:b], split=str(splits[k]))
        if full_sequences is not None:
            full = full_sequences.get(chain.id)
            if full is None:
                raise InputError(f"{npz}: no full sequence for chain {chain.id!r} in the given FASTA")
            try:
                chain.offset = locate_stretch(full, seq, off)
            except InputError as e:
                raise InputError(f"{npz}: chain {chain.id!r}: {e}") from None
            chain.full_seq = full
        chains.append(chain)
    return chains


def write_chains(path: Path | str, chains: list[Chain]) -> Path:
    """Write chains in the npz layout of the shared data set (atomically). Used by tests and tools."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(c) for c in chains], dtype=np.int64)
    arrays = {
        "netsurfp_id": np.array([c.id for c in chains]),
        "split": np.array([c.split for c in chains]),
        "lengths": lengths,
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "seq": np.frombuffer("".join(c.seq for c in chains).encode("ascii"), dtype="S1"),
        "CA": np.concatenate([c.ca for c in chains]).astype(np.float32),
        "CB": np.concatenate([c.cb for c in chains]).astype(np.float32),
        "offset_in_netsurfp_seq": np.array([c.offset for c in chains], dtype=np.int64),
    }
    return write_with(path, lambda fh: np.savez(fh, **arrays))


# --------------------------------------------------------------------------- evaluation sets


class ChainSet(list):
    """Chains to score, with ``selection``: how they were chosen from the set (what a cap left
    out, which chains were dropped and why) — reported next to the numbers."""

    selection: dict

    def __init__(self, chains=(), selection: dict | None = None):
        super().__init__(chains)
        self.selection = selection or {}


def select_chains(pool: list[Chain], *, exclude: set[str] | frozenset = frozenset(), max_length: int | None = None,
                  max_chains: int | None = None, seed: int = 0, sampled: str = "") -> ChainSet:
    """Every chain of ``pool`` (file order) not in ``exclude``, unless asked otherwise.

    ``max_length`` drops longer chains, each listed with its id, length and why. ``max_chains``
    keeps a seeded sample: the first ``max_chains`` chains not excluded in a permutation
    (``numpy.random.default_rng(seed)``) of the chains within the length limit — the rule a
    contact config's evaluation chains were drawn with, so the same limits and seed give the same
    chains — listed by id. The result keeps file order.
    """
    dropped, fitting = [], []
    for c in pool:
        if max_length is not None and len(c.model_input) > int(max_length):
            if c.id not in exclude:
                dropped.append({"id": c.id, "length": len(c.model_input),
                                "reason": f"longer than --max-length {int(max_length)}"})
        else:
            fitting.append(c)
    kept = [c for c in fitting if c.id not in exclude]
    selection: dict = {"set_chains": sum(c.id not in exclude for c in pool), "scored_chains": 0, "dropped": dropped,
                       "max_length": None if max_length is None else int(max_length), "sample": None}
    if max_chains is not None and len(kept) > int(max_chains):
        order = np.random.default_rng(seed).permutation(len(fitting))
        picked = sorted([int(k) for k in order if fitting[k].id not in exclude][:int(max_chains)])
        kept = [fitting[k] for k in picked]
        selection["sample"] = {"max_chains": int(max_chains), "seed": int(seed), "how": sampled,
                               "ids": [c.id for c in kept]}
    selection["scored_chains"] = len(kept)
    return ChainSet(kept, selection)


def selection_lines(selection: dict) -> list[str]:
    """The CLI summary's account of a :class:`ChainSet`'s selection."""
    if not selection:
        return []
    n, total = selection.get("scored_chains"), selection.get("set_chains")
    lines = [f"chains scored: {n} of the set's {total}" + ("" if n != total else " (all)")]
    sample = selection.get("sample")
    if sample:
        lines.append(f"capped at {sample['max_chains']} chains (seed {sample['seed']}; {sample['how']}): "
                     + ", ".join(sample["ids"]))
    for d in selection.get("dropped") or []:
        lines.append(f"dropped {d['id']} ({d['length']} residues): {d['reason']}")
    if selection.get("limits"):
        lines.append(f"limits: {selection['limits']}")
    return lines
