"""Task configs for ``protlm train``: protocol, data, targets, embedder, head, training.

A config (see ``configs/benchmarks/*.yaml``)::

    name: secondary_structure
    protocol: residue_to_class        # residue_to_class | sequence_to_class | sequence_to_value
    embedder: checkpoints/protlm-swissprot-masked-xs   # LM folder/hub id, onehot, blosum62, kmer,
                                                      # or an HDF5 file written by `protlm embed`
    data:
      train: {benchmark: netsurfp, split: train}
      valid: {benchmark: netsurfp, split: valid}      # or: valid_fraction of train, by id hash
      test:
        new364: {benchmark: netsurfp, split: test}
        cb513: {benchmark: cb513}
    targets:                          # one output of the head per target, losses summed
      - {name: q3, label: dssp3, classes: [H, E, C]}
      - {name: q8, label: dssp8, classes: [H, G, I, E, B, T, S, C]}
    head: {type: cnn}                 # cnn | ffn | light_attention | logreg
    train: {epochs: 30, lr: 0.001, batch_size: 32, patience: 5, seed: 0}

A data source is either ``{benchmark: NAME}`` (a set of ``protlm datasets``, read from the
``--data`` folder) or ``{file: PATH, format: FORMAT}`` for the user's own files (formats:
``biotrainer``, ``deeploc``, ``prottrans_csv``, ``csv`` with ``label``/``kind``), narrowed by
``split:`` (the records' own split) and ``part:`` (a deterministic half/fraction by id hash,
``{fraction: 0.5, take: first|rest}``), so one labelled file can be split without code.
``data.train`` may list several sources, which are joined (localization: DeepLoc's training
set has no membrane labels, half of the validation set adds them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from protlm.configfile import build, load_tree
from protlm.errors import ConfigError

PROTOCOLS = ("residue_to_class", "sequence_to_class", "sequence_to_value")
HEADS = {
    "residue_to_class": ("cnn", "logreg"),
    "sequence_to_class": ("ffn", "light_attention", "logreg"),
    "sequence_to_value": ("ffn", "light_attention", "logreg"),
}
FILE_FORMATS = ("biotrainer", "deeploc", "prottrans_csv", "csv")


@dataclass
class PartConfig:
    fraction: float = 0.5  # share of ids (by hash) in the first part
    take: str = "first"  # first | rest
    salt: str = "protlm-part"


@dataclass
class SourceConfig:
    benchmark: str | None = None  # a name of `protlm datasets`
    file: str | None = None  # or a labelled file of the user's
    format: str | None = None  # biotrainer | deeploc | prottrans_csv | csv
    label: str = "target"  # csv: the label name the column is stored under
    kind: str = "str"  # csv: float | int | str
    split: str | None = None  # keep only records of this split (train | valid | test)
    part: PartConfig | None = None  # keep only one part of the ids, by hash


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)  # one source, or several joined
    valid: SourceConfig | None = None  # None: valid_fraction of train, by id hash
    valid_fraction: float = 0.1
    test: dict[str, SourceConfig] = field(default_factory=dict)


@dataclass
class TargetConfig:
    name: str = "target"  # the output's name in reports (q3, q8, q10, q2, stability, ...)
    label: str = "target"  # the record's label key (dssp3, location, stability, ...)
    classes: list[str] | None = None  # None: the classes seen in train (sorted)
    missing: list[str] = field(default_factory=list)  # label values that mean "no label"
    metric: str = ""  # report name; "" uses the protocol's default


@dataclass
class HeadConfig:
    type: str = "cnn"
    hidden: int = 32  # the papers' 32 channels / units
    kernel: int = 0  # convolution window; 0: the head's default (cnn 7, light_attention 9)
    dropout: float = 0.25


@dataclass
class TrainSettings:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32  # proteins per batch
    patience: int = 5  # epochs without a lower validation loss before stopping
    seed: int = 0  # the head's initialisation and the batch order
    subset_seed: int = 0  # which proteins max_train keeps (its own seed: each can vary alone)
    class_weights: bool = False  # inverse-frequency weights from the training labels
    bootstrap: int = 1000  # resamples of proteins for the CIs
    max_train: int = 0  # cap on training proteins (a sample drawn with subset_seed; 0 = all)
    max_residues: int = 0  # crop proteins longer than this in training (0 = no crop)


@dataclass
class TaskConfig:
    name: str = "task"
    protocol: str = "residue_to_class"
    embedder: str = ""
    layer: int = -1  # hidden state of an LM embedder (-1 last)
    data: DataConfig = field(default_factory=DataConfig)
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def per_residue(self) -> bool:
        return self.protocol == "residue_to_class"

    @property
    def regression(self) -> bool:
        return self.protocol == "sequence_to_value"


def check_source(s: SourceConfig, where: str) -> None:
    if (s.benchmark is None) == (s.file is None):
        raise ConfigError(f"config {where}: give exactly one of benchmark: or file:")
    if s.file is not None and s.format not in FILE_FORMATS:
        raise ConfigError(f"config {where}.format: must be one of {list(FILE_FORMATS)}, not {s.format!r}")
    if s.kind not in ("float", "int", "str"):
        raise ConfigError(f"config {where}.kind: must be float, int or str, not {s.kind!r}")
    if s.part is not None:
        if not 0 < s.part.fraction < 1:
            raise ConfigError(f"config {where}.part.fraction: must be in (0, 1)")
        if s.part.take not in ("first", "rest"):
            raise ConfigError(f"config {where}.part.take: must be first or rest, not {s.part.take!r}")


def validate(c: TaskConfig) -> None:
    def need(cond: bool, where: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config {where}: {msg}")

    need(c.protocol in PROTOCOLS, "protocol",
         f"unknown protocol {c.protocol!r}; choose one of {list(PROTOCOLS)} (residues_to_class: contacts)")
    need(bool(c.embedder), "embedder", "give an LM folder or hub id, onehot, blosum62, kmer, or an HDF5 file")
    need(c.head.type in HEADS[c.protocol], "head.type",
         f"{c.head.type!r} does not fit {c.protocol}; choose one of {list(HEADS[c.protocol])}")
    need(c.head.hidden >= 1, "head.hidden", "must be >= 1")
    need(c.head.kernel == 0 or (c.head.kernel >= 1 and c.head.kernel % 2 == 1), "head.kernel",
         "must be 0 (the head's default) or a positive odd number")
    need(0 <= c.head.dropout < 1, "head.dropout", "must be in [0, 1)")
    t = c.train
    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(t.lr > 0, "train.lr", "must be positive")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.patience >= 1, "train.patience", "must be >= 1")
    need(t.bootstrap >= 0, "train.bootstrap", "must be >= 0")
    need(t.max_train >= 0 and t.max_residues >= 0, "train.max_train", "caps must be >= 0")
    need(not (t.class_weights and c.regression), "train.class_weights", "only for classification protocols")
    need(len(c.targets) >= 1, "targets", "give at least one target")
    names = [tg.name for tg in c.targets]
    need(len(set(names)) == len(names), "targets", f"target names must be distinct: {names}")
    for i, tg in enumerate(c.targets):
        need(not (c.regression and tg.classes), f"targets[{i}].classes", "a regression target has no classes")
        if tg.classes is not None:
            need(len(tg.classes) >= 2, f"targets[{i}].classes", "need at least two classes")
            need(len(set(tg.classes)) == len(tg.classes), f"targets[{i}].classes", "classes must be distinct")
            if c.per_residue:
                need(all(len(x) == 1 for x in tg.classes), f"targets[{i}].classes",
                     "per-residue classes are single characters (one per residue in the label string)")
    need(len(c.data.train) >= 1, "data.train", "give a training source")
    for i, src in enumerate(c.data.train):
        check_source(src, f"data.train[{i}]")
    if c.data.valid is not None:
        check_source(c.data.valid, "data.valid")
    else:
        need(0 < c.data.valid_fraction < 1, "data.valid_fraction", "must be in (0, 1)")
    for name, src in c.data.test.items():
        check_source(src, f"data.test.{name}")


def load_task_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     data: dict | None = None) -> TaskConfig:
    tree = load_tree(path, overrides, data)
    data_tree = tree.get("data")
    if isinstance(data_tree, dict) and isinstance(data_tree.get("train"), dict):
        data_tree["train"] = [data_tree["train"]]  # one source may be written without a list
    if tree.get("protocol") == "residues_to_class":
        raise ConfigError("config protocol: residues_to_class (contacts) is read by protlm.contacts, not here")
    config = build(TaskConfig, tree, "")
    validate(config)
    return config
