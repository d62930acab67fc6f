"""The protocol interface and registry (biotrainer's ``protocols``, TAPE's registry).

A protocol is what a task *is*: what the data look like, how targets are encoded, the loss, how
head outputs are decoded, the metrics and the headline metric, and how predictions are written.
``protlm train / evaluate / predict / benchmark`` (:mod:`protlm.tasks.train`,
:mod:`protlm.tasks.suite`) only call the methods below; they never ask which protocol they have.

Each protocol is one file of this package, a subclass registered by name::

    @register_protocol
    class MyProtocol(Protocol):
        name = "my_protocol"
        output_level = "protein"     # the heads it takes: those whose levels include this
        ...

and the package imports every file, so a new protocol is one new file (docs/architecture.md,
"A new protocol"). :class:`protlm.tasks.protocols.labels.LabelProtocol` implements the whole
interface for protocols whose targets are labels of proteins or residues (the six biotrainer
protocols); a new one of that kind only overrides what differs.

The engine's calls, in order (train):

1. ``prepare_tree(tree)`` / ``data_config`` / ``validate(config)`` — reading the config;
2. ``load_data(config, data_dir)`` → :class:`TaskData` (train / valid / test sets and ``info``:
   what ``head.json`` must keep to decode outputs: classes, normalisation, …);
3. ``open_source`` and ``inputs(config, source, dataset)`` — the head's inputs (embeddings);
4. ``new_head`` → ``fit_state`` → per epoch ``train_batches`` / ``batch_loss`` / ``validation``;
5. ``predict`` → ``score`` per set; ``headline`` for the results table; ``per_protein`` /
   ``statistic`` for paired differences; ``prediction_rows`` / ``write_predictions`` for predict.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from protlm.embed.spec import parse_spec
from protlm.errors import ConfigError
from protlm.tasks.features import FeatureSource
from protlm.tasks.heads import heads_for

log = logging.getLogger("protlm.tasks")

_PROTOCOLS: dict[str, "Protocol"] = {}
_DEPRECATED: dict[str, Callable[[dict], str | None]] = {}
_WARNED: set[tuple[str, str]] = set()


@dataclass
class TaskData:
    """The sets of one task: ``train`` and ``valid`` (early stopping), named ``tests`` (scored,
    never used for a decision), and ``info`` (kept in head.json: classes, normalisation, …)."""

    train: Any
    valid: Any
    tests: dict[str, Any] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), **{f"test:{k}": len(v) for k, v in self.tests.items()}}


@dataclass
class FitState:
    """What a protocol needs during training beyond the model (class weights, normalisation, …)."""

    values: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.values[key]


class Protocol:
    """Base class: see the module docstring. Subclasses set the attributes and implement the methods."""

    name: str = ""
    help: str = ""
    output_level: str = "protein"  # residue | protein | pair: which heads fit
    default_head: str = ""
    data_config: type | None = None  # the dataclass of the ``data:`` section
    train_defaults: dict = {}  # train: settings that differ from TrainSettings' defaults
    validation_key: str = "valid_loss"  # the name of the early-stopping value in the history
    higher_is_better: bool = False  # for the early-stopping value
    headline_label: str = ""  # the results table's metric column
    scores_valid: bool = True  # score the early-stopping set too (metrics.json "valid")
    validation_text: str = ""  # the early-stopping value in words, for reports (default: "validation loss")
    count_key: str = "proteins"  # the key of a set's metrics that counts what was scored (contacts: chains)
    data_path_fields: tuple[str, ...] = ()  # data: fields holding paths (a string, or a list/mapping of them)
    legacy_state_keys: tuple[str, ...] = ()  # head.json keys that held the protocol state before protlm 0.5
    can_finetune: bool = True  # the LM may train with the head (finetune.method other than none)
    own_tests: tuple[str, ...] = ()  # test sets the protocol makes itself, not named in data.test (contacts)

    # ------------------------------------------------------------------ config

    def head_names(self) -> list[str]:
        return heads_for(self.output_level)

    def prepare_tree(self, tree: dict) -> None:
        """Adjust a raw config tree before it is built (shorthands, defaults)."""
        if tree.get("train") is None:
            tree["train"] = {}
        train = tree["train"]
        if isinstance(train, dict):
            for key, value in self.train_defaults.items():
                train.setdefault(key, value)

    def validate(self, config) -> None:
        """Protocol-specific checks; raise ConfigError naming the field."""

    def resolve_paths(self, data: dict, fix: Callable[[Any, str], Any]) -> None:
        """Make the paths of a raw ``data:`` section absolute: ``fix(value, "data.KEY")`` on every
        string of the :attr:`data_path_fields` (inside lists and mappings too). A protocol whose
        paths sit deeper (label sources' ``file:``) overrides this."""
        def walk(value, where):
            if isinstance(value, str):
                return fix(value, where)
            if isinstance(value, list):
                return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
            if isinstance(value, dict):
                return {k: walk(v, f"{where}.{k}") for k, v in value.items()}
            return value

        for key in self.data_path_fields:
            if key in data:
                data[key] = walk(data[key], f"data.{key}")

    def data_files(self, config) -> list[str]:
        """The files a head's data came from (recorded with their checksums in head.json, so a head
        scored on its own test files knows they did not change); default: none recorded."""
        return []

    def extra_test(self, config, name: str, file: str, format: str | None, options: dict, where: str) -> Any:
        """The ``data.test`` entry for a file of the user's (``protlm benchmark --extra-test``);
        default: the protocol takes none."""
        raise ConfigError(f"{where}: the {self.name} protocol takes no extra test files")

    def training_files(self, config, data_dir=None) -> list[str]:
        """The files the training and early-stopping sets are read from (``data_dir``: ``--data``):
        a file rewritten in place trains the suite's head again (its content is in the head's
        digest) and is refused when a run resumes; files of the benchmark data folder, which do not
        change, are left out; default: none."""
        return []

    def source_files(self, source) -> list[str]:
        """The files one entry of ``data.test`` reads (a re-made file is scored again by the suite);
        default: the entry itself when it is a path."""
        return [source] if isinstance(source, str) else []

    def input_dim(self, config, source_dim: int) -> int:
        """The head's input width for an embedder of ``source_dim`` (a protocol that combines
        embeddings, e.g. of two proteins, widens it)."""
        return source_dim

    def state_of(self, head_json: dict) -> dict:
        """The protocol's state (:attr:`TaskData.info`) of a head.json: its ``protocol_state``, or,
        for a head written before protlm 0.5, the :attr:`legacy_state_keys` it kept at the top."""
        state = head_json.get("protocol_state")
        if state is None:
            return {k: head_json[k] for k in self.legacy_state_keys if k in head_json}
        return state

    # ------------------------------------------------------------------ data and inputs

    def load_data(self, config, data_dir) -> TaskData:
        raise NotImplementedError

    def test_sets(self, head, names: list[str], data_dir) -> dict[str, Any]:
        """The test sets ``names`` of a trained head's config (the suite scores a new or changed
        one with the saved head, without retraining); default: from :meth:`load_data`."""
        tests = self.load_data(head.config, data_dir).tests
        return {k: tests[k] for k in names if k in tests}

    def evaluation_sets(self, head, request: dict, data_dir) -> dict[str, Any]:
        """Sets to score a trained head on (``protlm evaluate``): ``request`` holds the CLI's choices."""
        raise NotImplementedError

    def proteins(self, config, data_dir, split: str) -> list[tuple[str, str, str]]:
        """(id, sequence as written, set name) of the proteins a task uses (``protlm export-fasta``)."""
        raise ConfigError(f"export-fasta: not offered for the {self.name} protocol")

    def open_source(self, config, cache_dir, embedder=None):
        """What computes the head's inputs (default: a :class:`~protlm.tasks.features.FeatureSource`)."""
        spec = config.embedder_spec
        if embedder is not None:  # another embedder (or an HDF5 file) for the same head: the config's layer
            other = parse_spec(embedder, "--embedder")
            spec = other if other.options.layer != -1 else other.with_options(layer=spec.options.layer)
        return FeatureSource(spec, spec.options.layer, cache_dir)

    def inputs(self, config, source, dataset, progress=None):
        raise NotImplementedError

    def query_inputs(self, config, source, ids: list[str], sequences: list[str]):
        """Inputs of unlabelled proteins (``protlm predict``), sequences as written."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the head and its training

    def new_head(self, config, dim: int, info: dict) -> torch.nn.Module:
        raise NotImplementedError

    def check_info(self, config, info: dict, where: str) -> None:
        """Check what a head.json holds for decoding (classes, normalisation, …) fits the config."""

    def fit_state(self, config, model, train_inputs, info: dict) -> FitState:
        return FitState()

    def train_batches(self, config, model, train_inputs, rng: np.random.Generator) -> Iterable:
        raise NotImplementedError

    def batch_loss(self, config, model, batch, state: FitState) -> tuple[torch.Tensor, float] | None:
        """(loss, weight of this batch in the epoch's mean loss), or None to skip the batch."""
        raise NotImplementedError

    def validation(self, config, model, valid_inputs, state: FitState) -> float:
        raise NotImplementedError

    def stopping(self, config) -> tuple[str, bool]:
        """(history key, higher is better) of the value early stopping watches under
        ``train.early_stopping``; the protocol's validation value by default."""
        return self.validation_key, self.higher_is_better

    def stopping_text(self, config) -> str:
        """The early-stopping value in words, for reports."""
        return self.validation_text or "validation loss"

    def stopping_value(self, config, model, valid_inputs, state: FitState, info: dict) -> float:
        """The value :meth:`stopping` names, on the early-stopping split."""
        return self.validation(config, model, valid_inputs, state)

    def fit_direct(self, config, model, train_inputs, info: dict) -> dict | None:
        """Heads without a gradient loop (closed-form fits) are fit here; return a summary, or
        None for the engine's loop."""
        return None

    # ------------------------------------------------------------------ outputs

    def predict(self, config, model, inputs, info: dict) -> Any:
        raise NotImplementedError

    def score(self, config, preds, dataset, info: dict, n_boot: int, seed: int = 0) -> dict:
        """``{target name: metrics}`` on one set."""
        raise NotImplementedError

    def headline(self, result: dict) -> dict | None:
        """``{"value": v, "ci95": [lo, hi]}`` of one target's metrics (the results table's cell)."""
        raise NotImplementedError

    def headline_text(self, result: dict) -> str:
        """The results table's cell for one target's metrics: ``value [lo, hi]`` of :meth:`headline`
        by default ("–" when there is none); a protocol whose headline is not one number with a CI
        overrides this, and the suite asks nothing else of its metrics."""
        m = self.headline(result)
        if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
            return "–"
        lo, hi = m.get("ci95") or (None, None)
        if lo is None:
            return f"{m['value']:.3f}"
        return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"

    def per_protein(self, config, preds, dataset, k: int) -> tuple[int, Any]:
        """(number of proteins, per-protein values) for the paired bootstrap of the headline."""
        raise NotImplementedError

    def statistic(self, values, idx: np.ndarray) -> float:
        """The headline computed from the per-protein values of the proteins ``idx``."""
        raise NotImplementedError

    def per_protein_table(self, config, preds, dataset, k: int) -> tuple[list[str], dict[str, list]]:
        """(ids, named columns): one row per scored protein of target ``k`` (``protlm compare --per-protein``)."""
        raise NotImplementedError

    def prediction_rows(self, head, ids: list[str], sequences: list[str], preds) -> list[dict]:
        raise NotImplementedError

    def write_predictions(self, head, rows: list[dict], output, options: dict) -> dict:
        raise NotImplementedError

    def check_output(self, output, overwrite: bool = False, inputs=()) -> None:
        """Refuse an output ``protlm predict`` cannot write, before any work."""
        raise NotImplementedError

    def predict_to(self, head, ids: list[str], sequences: list[str], output, options: dict, source) -> dict:
        """Predict unlabelled proteins and write the protocol's prediction file(s)."""
        inputs = self.query_inputs(head.config, source, ids, sequences)
        preds = self.predict(head.config, head.model, inputs, head.state)
        return self.write_predictions(head, self.prediction_rows(head, ids, sequences, preds), output, options)

    def summary_lines(self, result: dict) -> list[str]:
        """Human lines of ``{set: {target: metrics}}`` for the CLI."""
        lines = []
        for set_name, by_target in result.items():
            for target, res in by_target.items():
                h = self.headline(res)
                if h is None or h.get("value") is None:
                    text = "–"
                else:
                    lo, hi = h["ci95"]
                    text = f"{self.headline_label} {h['value']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
                    text += f" (n={res.get(self.count_key, '?')})"
                gone = res.get("not_scored")
                if gone:
                    text += f"; not scored: {gone['proteins']} protein(s), {gone['why']}"
                lines.append(f"  {set_name:12s} {target:12s} {text}")
        return lines


def register_protocol(cls):
    """Class decorator: register a protocol by its ``name`` (one instance per protocol)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a protocol needs a name")
    old = _PROTOCOLS.get(cls.name)
    if old is not None and (type(old).__module__, type(old).__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"protocol {cls.name!r} is registered already (by {type(old).__module__}."
                         f"{type(old).__qualname__}); choose another name")
    _PROTOCOLS[cls.name] = cls()
    return cls


def register_deprecated_name(old: str, resolve: Callable[[dict], str | None]) -> None:
    """An old protocol name: ``resolve(tree)`` gives the new name for a config tree that uses
    it (or None when the tree does not fit, so the name stays unknown)."""
    _DEPRECATED[old] = resolve


def protocol_names() -> list[str]:
    from protlm.plugins import load_plugins

    load_plugins()
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    from protlm.plugins import hint, load_plugins

    load_plugins()
    proto = _PROTOCOLS.get(name)
    if proto is None:
        raise ConfigError(f"config protocol: unknown protocol {name!r}; choose one of {protocol_names()}{hint()}")
    return proto


def resolve_name(name: Any, tree: dict) -> str:
    """The protocol a config means: deprecated names are translated with one warning."""
    if not isinstance(name, str):
        raise ConfigError(f"config protocol: must be a protocol name ({protocol_names()}), not {name!r}")
    if name in _DEPRECATED:
        new = _DEPRECATED[name](tree)
        if new is not None:
            key = (name, str(tree.get("name")))
            if key in _WARNED:  # one warning per config, however often a suite reads it
                return new
            _WARNED.add(key)
            log.warning("config protocol: %r for contact prediction is deprecated (in biotrainer's meaning "
                        "%s is per-residue embeddings → one class per protein); read as %r — write "
                        "protocol: %s", name, name, new, new)
            return new
    return name
