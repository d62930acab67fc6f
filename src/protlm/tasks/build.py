"""Building and loading task configs: the layer above the protocols.

:mod:`protlm.tasks.config` holds the config's sections (dataclasses every protocol imports);
building a config needs the protocol registry (the ``data:`` section is the protocol's own
dataclass, the head's section the head's), so it lives here, above both, and nothing below imports
it — no import circle between the sections and the protocols.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

from protlm.configfile import build, load_tree, parse_overrides, set_dotted
from protlm.errors import ConfigError
from protlm.io.checksums import xxh3_file
from protlm.tasks.config import MAX_BOOTSTRAP, TaskConfig, need
from protlm.tasks.finetune import build_finetune
from protlm.tasks.heads import build_head_config, get_head
from protlm.tasks.protocols import get_protocol, resolve_name

log = logging.getLogger("protlm.tasks")


def validate(c: TaskConfig) -> None:
    """The generic checks; the protocol and the head check their own sections."""
    need(c.embedder not in ("", None), "embedder",
         "give an LM folder or hub id, onehot, blosum62, kmer, or an HDF5 file")
    c.embedder_spec  # noqa: B018 (parses the spec: a bad option is a ConfigError naming it)
    t = c.train
    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(t.lr > 0, "train.lr", "must be positive")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.patience >= 1, "train.patience", "must be >= 1")
    need(t.early_stopping in ("", "loss", "metric"), "train.early_stopping",
         f"{t.early_stopping!r}: must be loss or metric")
    need(0 <= t.bootstrap <= MAX_BOOTSTRAP, "train.bootstrap", f"must be in [0, {MAX_BOOTSTRAP:,}]")
    need(t.max_train >= 0 and t.max_residues >= 0, "train.max_train", "caps must be >= 0")
    need(t.pair_budget >= 1 and t.crop >= 1, "train.pair_budget", "pair_budget and crop must be >= 1")
    need(t.checkpoint_seconds >= 0, "train.checkpoint_seconds", "must be >= 0")
    need(t.clip_grad_norm >= 0, "train.clip_grad_norm", "must be >= 0 (0: no clipping)")
    need(c.evaluate.n_boot is None or 0 <= c.evaluate.n_boot <= MAX_BOOTSTRAP, "evaluate.n_boot",
         f"must be in [0, {MAX_BOOTSTRAP:,}]")
    c.protocol_obj.validate(c)
    if c.finetuning:
        proto = c.protocol_obj
        need(proto.can_finetune, "finetune.method",
             f"not offered for the {proto.name} protocol: it trains on frozen features in this version")
        need(get_head(c.head.type).input != "attention", "finetune.method", "an attention-map head reads no embeddings")
        need(c.embedder_spec.options.pooling == "mean", "embedder.pooling",
             f"{c.embedder_spec.options.pooling}: a fine-tuned LM's head reads per-residue states; leave pooling "
             f"at mean to fine-tune")


def build_task_config(tree: dict) -> TaskConfig:
    """A checked TaskConfig from a config tree (YAML as read, or a head.json's ``config``)."""
    if not isinstance(tree, dict):
        raise ConfigError("config: must be a mapping with name, protocol, embedder, data, head, train")
    tree = dict(tree)
    tree["protocol"] = resolve_name(tree.get("protocol", TaskConfig.protocol), tree)
    protocol = get_protocol(tree["protocol"])
    protocol.prepare_tree(tree)
    tree["data"] = build(protocol.data_config, tree.get("data"), "data") if protocol.data_config else tree.get("data")
    tree["head"] = build_head_config(tree.get("head"), protocol)
    tree["finetune"] = build_finetune(tree.get("finetune"))
    config = build(TaskConfig, tree, "")
    validate(config)
    return config


def load_task_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     data: dict | None = None, embedder=None) -> TaskConfig:
    """The config file (or tree ``data``) with ``key=value`` overrides, checked. Relative data paths
    written in a config file are read from the file's own folder (:func:`resolve_data_paths`);
    those given as overrides, from the working directory. ``embedder`` (``--embedder``) replaces
    the file's embedder before the overrides are applied, so ``embedder.dtype=bf16`` given beside
    it applies to it (it used to be dropped with exit 0)."""
    tree = load_tree(path, None, data)
    if path is not None and data is None:
        resolve_data_paths(tree, Path(path).resolve().parent, str(path))
    if embedder is not None:
        tree["embedder"] = copy.deepcopy(embedder)  # the overrides below must not edit the caller's
    pairs = parse_overrides(overrides or [])
    if isinstance(tree.get("embedder"), str) and any(key.startswith("embedder.") for key, _ in pairs):
        # `embedder: NAME` is the short form of `embedder: {name: NAME}`; an option given as an
        # override (embedder.dtype=bf16) extends it
        tree["embedder"] = {"name": tree["embedder"]}
    for key, value in pairs:
        set_dotted(tree, key, value)
    return build_task_config(tree)


def resolve_data_paths(tree: dict, folder: Path, where: str) -> None:
    """Make the relative paths of a config file's ``data:`` section absolute, read from the
    config's own folder (as biotrainer does), so a config runs from any working directory and a
    head records where its data is. A path found only relative to the working directory (protlm
    0.4's rule) is still used, with a warning."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return

    def fix(value, key: str):
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        mine, theirs = folder / value, Path.cwd() / value
        if mine.exists() or not theirs.exists():
            return str(mine)
        log.warning("config %s: %s %s is not beside the config (%s) but is in the working directory; reading it "
                    "from there (relative paths are read from the config's folder)", where, key, value, mine)
        return str(theirs.resolve())

    get_protocol(resolve_name(tree.get("protocol", TaskConfig.protocol), tree)).resolve_paths(data, fix)


def with_finetune(config: TaskConfig, method: str) -> TaskConfig:
    """The config with ``finetune.method`` set (the other finetune settings kept), checked again."""
    config = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, method=method))
    config.finetune.validate()
    validate(config)
    return config


def data_files(config: TaskConfig) -> dict[str, str]:
    """Absolute path → XXH3 of the content of every file the config's data section reads (training,
    validation and test sets; ``benchmark:`` sets come from the shared data folder and are not
    files of the user's). A head records them: its own test sets are the files it names, unchanged."""
    out: dict[str, str] = {}
    for path in config.protocol_obj.data_files(config):
        if Path(path).is_file():
            key = str(Path(path).resolve())
            if key not in out:
                out[key] = xxh3_file(path)
    return out

