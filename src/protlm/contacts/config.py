"""The ``residues_to_class`` (contact prediction) config: YAML/dict → checked dataclasses.

Schema (docs/contacts.md has the full description)::

    name: contacts_pair_mlp_masked_xs
    protocol: residues_to_class
    embedder: checkpoints/protlm-swissprot-masked-xs   # LM folder | onehot | blosum62 | kmer folder
                                                       # | random-init:LM_FOLDER (same shape, random weights)
    data:      {path, full_sequences, train_chains, early_stop_chains, eval_chains, max_length,
                min_length, threshold, min_separation, seed}
    head:      {type: pair_mlp | resnet2d | attention_lr, ...hyper-parameters of that type}
    train:     {epochs, lr, weight_decay, batch_size, pair_budget, crop, patience, seed}
    evaluate:  {n_boot, seed}

Every key is checked: an unknown key or a wrong type is one ``ConfigError`` line naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protlm.errors import ConfigError

#: ESM fit its regression on 20 proteins; a few dozen keep the fit cheap and stable.
ATTENTION_TRAIN_CHAINS = 30
HEAD_TYPES = ("pair_mlp", "resnet2d", "attention_lr")
#: Hyper-parameters each head type accepts, with defaults.
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pair_mlp": {"hidden": 128, "dropout": 0.1, "features": ["concat", "absdiff", "product"]},
    "resnet2d": {"proj": 32, "channels": 32, "blocks": 4, "kernel": 3, "dropout": 0.1},
    "attention_lr": {"C": 0.15, "penalty": "l1", "max_iter": 1000, "max_pairs": 200000},
}


PATH_KEYS = ("path", "full_sequences")
NULLABLE_INT_KEYS = ("max_length",)  # null: no cap


@dataclass
class DataConfig:
    path: str | None = None  # folder with coords_ca_cb.npz, or the file; the data_dir argument overrides
    full_sequences: str | None = None  # FASTA of whole sequences (id → sequence): the LM reads those
    train_chains: int = 300  # attention_lr: default 30 (ATTENTION_TRAIN_CHAINS)
    early_stop_chains: int = 100  # validation chains used to choose the epoch
    eval_chains: int = 200  # other validation chains (disjoint from the early-stopping ones) to report
    max_length: int | None = 300
    min_length: int = 30
    threshold: float = 8.0
    min_separation: int = 6
    seed: int = 0


@dataclass
class TrainConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    pair_budget: int = 131072
    crop: int = 256
    patience: int = 3
    seed: int = 0


@dataclass
class EvalConfig:
    n_boot: int = 1000
    seed: int = 0


@dataclass
class ContactConfig:
    embedder: str
    head_type: str
    head: dict[str, Any]
    name: str = "contacts"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def as_dict(self) -> dict:
        return {"name": self.name, "protocol": "residues_to_class", "embedder": self.embedder,
                "head": {"type": self.head_type, **self.head}, "data": dataclasses.asdict(self.data),
                "train": ({"seed": self.train.seed} if self.head_type == "attention_lr"
                          else dataclasses.asdict(self.train)), "evaluate": dataclasses.asdict(self.evaluate)}


def _check(value: Any, default: Any, where: str) -> Any:
    """Type check a value against its default's type (None defaults accept int or str by name)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        from protlm.configfile import parse_number

        return parse_number(value, where)  # 1e-4 (a string to YAML 1.1) is a number; inf/nan are not
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"config {where}: must be like {default!r}, not {value!r}")
    return value


def _section(cls, tree: Any, where: str):
    if tree is None:
        return cls()
    if not isinstance(tree, dict):
        raise ConfigError(f"config {where}: must be a mapping, not {tree!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(names))
    if unknown:
        raise ConfigError(f"config {where}.{unknown[0]}: unknown field; expected one of {sorted(names)}")
    base = cls()
    kwargs = {}
    for key, value in tree.items():
        default = getattr(base, key)
        if key in PATH_KEYS:
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"config {where}.{key}: must be a path, not {value!r}")
            kwargs[key] = value
        elif key in NULLABLE_INT_KEYS and value is None:
            kwargs[key] = None
        elif key in NULLABLE_INT_KEYS:
            kwargs[key] = _check(value, 0, f"{where}.{key}")
        else:
            kwargs[key] = _check(value, default, f"{where}.{key}")
    return cls(**kwargs)


def parse_config(tree: dict) -> ContactConfig:
    """Check a config tree (as read from YAML) and fill in defaults."""
    if not isinstance(tree, dict):
        raise ConfigError("config: must be a mapping with keys name, protocol, embedder, data, head, train")
    allowed = {"name", "protocol", "embedder", "data", "head", "train", "evaluate"}
    unknown = sorted(set(tree) - allowed)
    if unknown:
        raise ConfigError(f"config {unknown[0]}: unknown field; expected one of {sorted(allowed)}")
    protocol = tree.get("protocol", "residues_to_class")
    if protocol != "residues_to_class":
        raise ConfigError(f"config protocol: contact prediction is residues_to_class, not {protocol!r}")
    embedder = tree.get("embedder")
    if not isinstance(embedder, str) or not embedder:
        raise ConfigError("config embedder: required (an LM folder, onehot, blosum62, a k-mer folder, "
                          "or random-init:LM_FOLDER)")
    head = tree.get("head")
    if not isinstance(head, dict) or head.get("type") not in HEAD_TYPES:
        got = head.get("type") if isinstance(head, dict) else head
        raise ConfigError(f"config head.type: must be one of {list(HEAD_TYPES)}, not {got!r}")
    head_type = head["type"]
    defaults = HEAD_DEFAULTS[head_type]
    params = dict(defaults)
    for key, value in head.items():
        if key == "type":
            continue
        if key not in defaults:
            raise ConfigError(f"config head.{key}: unknown for head type {head_type}; expected one of {sorted(defaults)}")
        params[key] = _check(value, defaults[key], f"head.{key}")
    name = tree.get("name", "contacts")
    if not isinstance(name, str):
        raise ConfigError(f"config name: must be a string, not {name!r}")
    cfg = ContactConfig(embedder=embedder, head_type=head_type, head=params, name=name,
                        data=_section(DataConfig, tree.get("data"), "data"),
                        train=_section(TrainConfig, tree.get("train"), "train"),
                        evaluate=_section(EvalConfig, tree.get("evaluate"), "evaluate"))
    if head_type == "attention_lr" and "train_chains" not in (tree.get("data") or {}):
        cfg.data.train_chains = ATTENTION_TRAIN_CHAINS
    if head_type == "attention_lr" and tree.get("train"):
        extra = sorted(set(tree["train"]) - {"seed"})
        if extra:
            raise ConfigError(f"config train.{extra[0]}: attention_lr has no training loop (only train.seed applies)")
    if head_type == "attention_lr" and embedder in ("onehot", "blosum62"):
        raise ConfigError(f"config embedder: attention_lr needs a transformer LM folder, not the baseline {embedder!r}")
    for key in ("train_chains", "early_stop_chains", "eval_chains", "min_length", "min_separation"):
        if getattr(cfg.data, key) < 1:
            raise ConfigError(f"config data.{key}: must be a positive integer")
    if not cfg.data.threshold > 0:
        raise ConfigError("config data.threshold: must be a positive distance in Å")
    if cfg.evaluate.n_boot < 0:
        raise ConfigError("config evaluate.n_boot: must be >= 0")
    return cfg


def load_config(path: Path | str, overrides: list[str] | None = None) -> ContactConfig:
    """Read a YAML config file (and ``key=value`` overrides with dotted keys) into a :class:`ContactConfig`."""
    from protlm.configfile import load_tree

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    return parse_config(load_tree(p, overrides))
