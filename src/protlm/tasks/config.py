"""Task configs for ``protlm train``: protocol, data, targets, embedder, head, training.

A config (see ``configs/benchmarks/*.yaml``)::

    name: secondary_structure
    protocol: residue_to_class        # a protocol of protlm.tasks.protocols (protocol_names())
    embedder: checkpoints/protlm-swissprot-masked-xs   # LM folder/hub id, onehot, blosum62, kmer,
                                                      # an HDF5 file written by `protlm embed`,
                                                      # or {name: …, layer: 2, dtype: bf16, …}
    data:                             # the protocol's own data section
      train: {benchmark: netsurfp, split: train}
      valid: {benchmark: netsurfp, split: valid}      # or: valid_fraction of train, by id hash
      test:
        new364: {benchmark: netsurfp, split: test}
        cb513: {benchmark: cb513}
    targets:                          # one output of the head per target, losses summed
      - {name: q3, label: dssp3, classes: [H, E, C]}
      - {name: q8, label: dssp8, classes: [H, G, I, E, B, T, S, C]}
    head: {type: cnn}                 # a head of protlm.tasks.heads that fits the protocol,
                                      # with the settings of that head's own Config
    train: {epochs: 30, lr: 0.001, batch_size: 32, patience: 5, seed: 0}
    evaluate: {n_boot: 1000, seed: 0} # bootstrap of the reported metrics (default: train.bootstrap)

Every section is built by :func:`protlm.configfile.build`: the generic sections from the
dataclasses here, ``data:`` from the protocol's ``data_config``, ``head:`` from the head's
``Config`` — an unknown key or a wrong type is one error naming the field.

``embedder:`` is an embedder spec (:func:`protlm.embed.spec.parse_spec`): a name, or a mapping
of the name and embed options (layer, device, dtype, int8, tokens_per_batch, …), which reach the
embedder. The older top-level ``layer:`` still sets the layer.

Label data sources (the six label protocols, :mod:`protlm.tasks.protocols.labels`): either
``{benchmark: NAME}`` (a set of ``protlm datasets``, read from the ``--data`` folder) or
``{file: PATH, format: FORMAT}`` for the user's own files (formats: ``biotrainer``, ``deeploc``,
``prottrans_csv``, ``csv`` with ``label``/``kind``), narrowed by ``split:`` and ``part:`` (a
deterministic fraction by id hash, ``{fraction: 0.5, take: first|rest}``). ``data.train`` may list
several sources, which are joined.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from protlm.embed.spec import parse_spec
from protlm.errors import ConfigError
from protlm.tasks.formats import get_format


#: Bootstrap resamples at most: 100,000 pins a 95% CI's ends to ~0.1% of their spread; more only
#: costs memory and time (a resample table of 10^12 rows ended runs with a MemoryError).
MAX_BOOTSTRAP = 100_000


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
    seq_column: str | None = None  # csv: the sequence column (default: seq or sequence)
    label_column: str | None = None  # csv: the label column (default: label or target)
    id_column: str | None = None  # csv: a column of protein ids (default: FILE_row<i>)
    split: str | None = None  # keep only records of this split (train | valid | test)
    part: PartConfig | None = None  # keep only one part of the ids, by hash


@dataclass
class DataConfig:
    """The ``data:`` section of the label protocols."""

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
class TrainSettings:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32  # proteins per batch
    patience: int = 5  # epochs without a better validation value before stopping
    # what early stopping watches on the validation split: "loss" (the training loss's value) or
    # "metric" (the protocol's headline metric of the first target: Q3/accuracy, Spearman ρ, P@L/5);
    # "" = the protocol's default (loss; contacts: P@L/5, their only choice)
    early_stopping: str = ""
    seed: int = 0  # the head's initialisation and the batch order
    subset_seed: int = 0  # which proteins max_train keeps (its own seed: each can vary alone)
    class_weights: bool = False  # inverse-frequency weights from the training labels
    bootstrap: int = 1000  # resamples of proteins for the CIs (evaluate.n_boot overrides)
    max_train: int = 0  # cap on training proteins (a sample drawn with subset_seed; 0 = all)
    max_residues: int = 0  # crop proteins longer than this in training (0 = no crop)
    pair_budget: int = 131072  # pair protocols: pairs per optimisation step (sum of crop² / 2), at most
    crop: int = 256  # pair protocols: residues; longer training chains are cut to a random window
    # the total norm of the gradients is clipped to this before each optimizer step (head, or LM and
    # head when fine-tuning; TAPE clips at 1.0); 0: no clipping
    clip_grad_norm: float = 0.0
    # a head on frozen features writes its resume checkpoint (OUT/train-state/) at the end of an epoch
    # once this many seconds have passed since the last one (0: every epoch); fine-tuning checkpoints
    # by finetune.checkpoint_steps. Not part of what names a head or a run: it changes no number.
    checkpoint_seconds: float = 60.0


#: ``train:`` fields that change no number (how often a resume checkpoint is written): never part of
#: what names a head (the suite's digests) or a run (a resume's digest)
UNNAMING_TRAIN_SETTINGS = ("checkpoint_seconds",)


@dataclass
class EvaluateSettings:
    n_boot: int | None = None  # bootstrap resamples of the reported metrics; None: train.bootstrap
    seed: int = 0  # the bootstrap's seed


@dataclass
class TaskConfig:
    name: str = "task"
    protocol: str = "residue_to_class"
    embedder: Any = ""  # a name or {name: …, option: …} (protlm.embed.spec)
    layer: int = -1  # hidden state of an LM embedder (-1 last); or embedder.layer
    data: Any = None  # the protocol's data_config
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    head: Any = None  # the head's Config (protlm.tasks.heads)
    train: TrainSettings = field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    finetune: Any = None  # protlm.tasks.finetune.FinetuneConfig: train the LM with the head (method != none)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def protocol_obj(self):
        """The registered protocol of ``protocol`` (a registry lookup, done when asked: the
        protocols import these sections, so this module cannot import them first)."""
        from protlm.tasks.protocols import get_protocol

        return get_protocol(self.protocol)

    @property
    def embedder_spec(self):
        """The embedder spec, with the top-level ``layer:`` applied."""
        spec = parse_spec(self.embedder, "embedder")
        if self.layer != -1:
            if spec.options.layer not in (-1, self.layer):
                raise ConfigError(f"config layer: {self.layer} disagrees with embedder.layer {spec.options.layer}; "
                                  f"give one")
            spec = spec.with_options(layer=self.layer)
        return spec

    @property
    def embedder_name(self) -> str:
        return self.embedder_spec.name

    @property
    def finetuning(self) -> bool:
        """The LM trains with the head (``finetune.method`` full, lora or top)."""
        return self.finetune is not None and self.finetune.active

    @property
    def n_boot(self) -> int:
        return self.train.bootstrap if self.evaluate.n_boot is None else self.evaluate.n_boot


def check_source(s: SourceConfig, where: str) -> None:
    if (s.benchmark is None) == (s.file is None):
        raise ConfigError(f"config {where}: give exactly one of benchmark: or file:")
    if s.file is not None:
        get_format(s.format, "--format" if where.startswith("--") else f"config {where}.format")
    if s.kind not in ("float", "int", "str"):
        raise ConfigError(f"config {where}.kind: must be float, int or str, not {s.kind!r}")
    for key in ("seq_column", "label_column", "id_column"):
        if getattr(s, key) is not None and s.format != "csv":
            raise ConfigError(f"config {where}.{key}: only for format: csv (a seq,label table), not {s.format!r}")
    if s.part is not None:
        if not 0 < s.part.fraction < 1:
            raise ConfigError(f"config {where}.part.fraction: must be in (0, 1)")
        if s.part.take not in ("first", "rest"):
            raise ConfigError(f"config {where}.part.take: must be first or rest, not {s.part.take!r}")


SOURCE_OPTIONS = ("seq_column", "label_column", "id_column", "kind", "label", "split")


def file_source(config: TaskConfig, file: str, format: str | None, where: str, **given: Any) -> SourceConfig:
    """A labelled file of a user's to score a head of ``config`` on (``protlm evaluate --file``,
    ``protlm benchmark --extra-test``). ``given``: :data:`SOURCE_OPTIONS`; ``None`` means not given.
    A CSV's label is stored under the task's label when it has one target, and parsed as a
    number for the ``*_to_value`` protocols, unless ``label`` / ``kind`` say otherwise."""
    unknown = sorted(k for k in given if k not in SOURCE_OPTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r} (choose from {', '.join(SOURCE_OPTIONS)})")
    given = {k: v for k, v in given.items() if v is not None}
    if format == "csv":
        if "label" not in given and len(config.targets) == 1:
            given["label"] = config.targets[0].label
        if "kind" not in given and config.protocol.endswith("_to_value"):
            given["kind"] = "float"
    src = SourceConfig(file=file, format=format, **given)
    check_source(src, where)
    return src


def need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config {where}: {msg}")
