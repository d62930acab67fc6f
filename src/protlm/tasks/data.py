"""Labelled sets for the label protocols: records from benchmark names or user files, targets
encoded by the protocol (:meth:`protlm.tasks.protocols.labels.LabelProtocol.encode_target`), with
one convention for "no label":

- per residue, classes: an int array of length L per protein, class index or ``-1`` where the
  mask is 0, the label is a missing value (``-`` in 8-state files) or the record has no such label;
- per residue, values: a float array of length L, ``NaN`` where there is no value;
- per protein, classes: an int per protein, ``-1`` when missing;
- per protein, values: a float per protein, ``NaN`` when missing.

A record with none of the task's labels is dropped (and counted); an unknown class, or a label
string whose length differs from the sequence, is an error naming the set and the record.

Sequences are read with the rare residues kept (``written``: the sequence as written, the key of
:func:`protlm.embed.store.hash_key`) and given to embedders with B/O/U/Z mapped to X
(``sequences``, the papers' cleaning); both have the same length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from protlm.data.alphabet import RARE_TO_X  # noqa: F401 (RARE_TO_X: used by the protocols)
from protlm.data.benchmarks import load_benchmark
from protlm.data.records import ProteinRecord
from protlm.errors import ConfigError, InputError
from protlm.io.resources import data_root
from protlm.tasks.config import SourceConfig, TaskConfig
from protlm.tasks.formats import KEEP_RARE, get_format

log = logging.getLogger("protlm.tasks")

MISSING_RESIDUE = "-"


@dataclass
class LabelledSet:
    """Proteins of one split with their encoded targets (one entry per target)."""

    name: str
    ids: list[str]
    sequences: list[str]
    targets: list[list] = field(default_factory=list)  # per target: list of arrays / scalars
    dropped: int = 0
    written: list[str] = field(default_factory=list)  # as written (rare residues kept); [] = sequences

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hash_sequences(self) -> list[str]:
        """The sequences the HDF5 hash key is taken over (see :func:`protlm.embed.store.hash_key`)."""
        return self.written or self.sequences

    def subset(self, idx: list[int]) -> "LabelledSet":
        return LabelledSet(self.name, [self.ids[i] for i in idx], [self.sequences[i] for i in idx],
                           [[t[i] for i in idx] for t in self.targets], self.dropped,
                           [self.written[i] for i in idx] if self.written else [])


def _hash_fraction(pid: str, salt: str) -> float:
    return xxhash.xxh3_64_intdigest(f"{salt}:{pid}".encode()) / 2.0**64


def load_source(src: SourceConfig, data_dir: str | Path | None, where: str, per_residue: bool | None = None
                ) -> list[ProteinRecord]:
    """The records a source names, narrowed by ``split`` and ``part``; sequences as written
    (rare residues kept: :func:`encode` maps them to X for the embedder).

    ``per_residue`` tells biotrainer files whether TARGET is per residue (else inferred)."""
    if src.benchmark is not None:
        if data_dir is None:
            data_dir = data_root()
            if not data_dir.is_dir():
                raise ConfigError(f"{where}: benchmark {src.benchmark!r} needs --data (the benchmark data folder; "
                                  f"the default {data_dir} does not exist)")
        records = load_benchmark(src.benchmark, data_dir, policy=KEEP_RARE)
    else:
        path = Path(src.file)
        if not path.is_file():
            raise InputError(f"{where}: {path}: no such file")
        records = get_format(src.format, f"{where}.format").loader(path, src, per_residue)
    if src.split is not None:
        records = [r for r in records if r.split == src.split]
    if src.part is not None:
        first = [_hash_fraction(r.id, src.part.salt) < src.part.fraction for r in records]
        want = src.part.take == "first"
        records = [r for r, f in zip(records, first) if f == want]
    if not records:
        raise InputError(f"{where}: no records (check split:/part: against the data)")
    return records


def encode(records: list[ProteinRecord], config: TaskConfig, classes: list[list[str] | None], name: str,
           unknown_class_ok: bool = False) -> LabelledSet:
    """Encode the targets of ``records`` (the protocol's :meth:`encode_target`); drop records
    that carry none of them.

    ``unknown_class_ok``: a test-set class never seen in training is kept as class index
    ``len(classes)`` (always scored wrong) instead of being an error — fold classification
    test sets contain such folds.
    """
    proto = config.protocol_obj
    out = LabelledSet(name, [], [], [[] for _ in config.targets])
    for r in records:
        encoded = [proto.encode_target(r, tg, cls, name, unknown_class_ok) for tg, cls in zip(config.targets, classes)]
        if all(proto.is_missing(e) for e in encoded):
            out.dropped += 1
            continue
        out.ids.append(r.id)
        out.sequences.append(r.sequence.translate(RARE_TO_X))
        out.written.append(r.sequence)
        for t, e in zip(out.targets, encoded):
            t.append(e)
    if out.dropped:
        log.info("%s: %d records carry none of the task's labels and were left out", name, out.dropped)
    if not out.ids:
        raise InputError(f"{name}: no record carries the labels {[t.label for t in config.targets]}")
    return out


def load_task_data(config: TaskConfig, data_dir: str | Path | None) -> tuple[LabelledSet, LabelledSet, dict[str, LabelledSet], list]:
    """Train, validation and test sets of a task, and the class list of each target."""
    proto = config.protocol_obj
    per_residue = proto.output_level == "residue"
    train_records = [r for i, src in enumerate(config.data.train)
                     for r in load_source(src, data_dir, f"data.train[{i}]", per_residue)]
    if config.data.valid is not None:
        valid_records = load_source(config.data.valid, data_dir, "data.valid", per_residue)
    else:
        frac = config.data.valid_fraction
        is_valid = [_hash_fraction(r.id, "protlm-valid") < frac for r in train_records]
        valid_records = [r for r, v in zip(train_records, is_valid) if v]
        train_records = [r for r, v in zip(train_records, is_valid) if not v]
        if not valid_records or not train_records:
            raise InputError(f"data.valid_fraction {frac}: leaves an empty train or validation set")
    if config.train.max_train and len(train_records) > config.train.max_train:
        rng = np.random.default_rng(config.train.subset_seed)  # not train.seed: each can vary alone
        keep = sorted(rng.choice(len(train_records), config.train.max_train, replace=False).tolist())
        train_records = [train_records[i] for i in keep]
    classes = [proto.class_list(t, train_records) for t in config.targets]
    train = encode(train_records, config, classes, "train")
    valid = encode(valid_records, config, classes, "valid", unknown_class_ok=True)
    tests = {name: encode(load_source(src, data_dir, f"data.test.{name}", per_residue), config, classes, name,
                          unknown_class_ok=True)
             for name, src in config.data.test.items()}
    return train, valid, tests, classes


def task_proteins(config: TaskConfig, data_dir: str | Path | None, split: str = "all") -> list[tuple[str, str, str]]:
    """(id, sequence as written, set name) of every protein a task uses — after ``max_train``,
    the splits and dropping records without labels — for ``split`` ``train``, ``valid``, ``test``
    (every test set) or ``all``. A protein in several sets is listed once (the first set); one id
    with two different sequences is an error (a FASTA file cannot hold both)."""
    if split not in ("train", "valid", "test", "all"):
        raise ConfigError(f"--split must be train, valid, test or all, not {split!r}")
    train, valid, tests, _ = load_task_data(config, data_dir)
    sets = {"train": [train], "valid": [valid], "test": list(tests.values()),
            "all": [train, valid, *tests.values()]}[split]
    seen: dict[str, str] = {}
    out = []
    for s in sets:
        for pid, seq in zip(s.ids, s.hash_sequences):
            if pid in seen:
                if seen[pid] != seq:
                    raise InputError(f"protein {pid!r} has two different sequences in the task's sets; a FASTA file "
                                     f"cannot hold both (export one --split at a time)")
                continue
            seen[pid] = seq
            out.append((pid, seq, s.name))
    return out
