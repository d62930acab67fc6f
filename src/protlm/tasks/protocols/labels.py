"""Protocols whose targets are labels of proteins or residues (biotrainer's six protocols).

:class:`LabelProtocol` implements the whole protocol interface once — data sources, the
``data:`` section, batching, the multi-target loss (one output per target, losses summed,
missing labels add nothing), early stopping on the validation loss, metrics with bootstrap CIs
over proteins, paired differences and prediction files — and delegates everything that depends
on what a target *is* to a :class:`~protlm.tasks.protocols.targets.TargetKind`: per-residue
classes, per-protein classes and per-protein values are defined in
:mod:`protlm.tasks.protocols.targets`, per-residue values in
:mod:`protlm.tasks.protocols.residue_to_value`. A protocol file picks a kind and an input level::

    @register_protocol
    class SequenceToClass(LabelProtocol):
        name = "sequence_to_class"
        kind = ProteinClasses()
        input_level = "pooled"      # mean-pooled features unless the head reads residues
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protlm.errors import ConfigError, InputError
from protlm.io.atomic import json_bytes, write_bytes
from protlm.io.outputs import check_output_file
from protlm.tasks.config import DataConfig, SourceConfig, TargetConfig, check_source, file_source, need
from protlm.tasks.data import (RARE_TO_X, LabelledSet, encode, load_source, load_task_data,
                               task_proteins)
from protlm.tasks.features import FeatureSet, pooled
from protlm.tasks.finetune import SequenceSet, sequence_batch
from protlm.tasks.headfile import check_label_info
from protlm.tasks.heads import get_head, make_head
from protlm.tasks.protocols.base import FitState, Protocol, TaskData
from protlm.tasks.protocols.targets import ProteinClasses, TargetKind, check_classes


# --------------------------------------------------------------------------- the batches


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, lengths: list[int]) -> list[list[int]]:
    """Shuffled batches of proteins of similar length (less padding), in shuffled order."""
    order = rng.permutation(n)
    pool = 50 * batch_size
    batches = []
    for start in range(0, n, pool):
        chunk = sorted(order[start:start + pool].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def feature_batch(x: FeatureSet, idx: list[int], crop: int = 0, rng: np.random.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    """Pad the proteins ``idx`` into B × L × D float32 with a mask; ``crop`` > 0 takes a random
    window. Each protein is read here (in its stored dtype) and copied into the batch. A
    :class:`~protlm.tasks.finetune.SequenceSet` (fine-tuning) gives a batch of sequences instead."""
    if isinstance(x, SequenceSet):
        return sequence_batch(x, idx, crop, rng)
    windows = []
    for i in idx:
        n = int(x.lengths[i])
        if crop and n > crop and rng is not None:
            s = int(rng.integers(0, n - crop + 1))
            windows.append(slice(s, s + crop))
        else:
            windows.append(slice(0, n))
    width = max(w.stop - w.start for w in windows)
    xb = np.zeros((len(idx), width, x.dim), dtype=np.float32)
    mb = np.zeros((len(idx), width), dtype=np.float32)
    for row, (i, w) in enumerate(zip(idx, windows)):
        part = x[i][w]
        xb[row, :len(part)] = part
        mb[row, :len(part)] = 1.0
    return torch.from_numpy(xb), torch.from_numpy(mb), windows


def class_weights(kinds: list[TargetKind], enabled: bool, targets: list[list], n_classes: list[int]
                  ) -> list[torch.Tensor | None]:
    """Inverse-frequency class weights (mean 1 over the classes present; absent classes 0)."""
    if not enabled:
        return [None] * len(n_classes)
    out = []
    for t, n in zip(targets, n_classes):
        labels = np.concatenate([np.atleast_1d(np.asarray(v)) for v in t])
        counts = np.bincount(labels[(labels >= 0) & (labels < n)], minlength=n).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n, 0.0)
        out.append(torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32))
    return out


def check_head_files(head, sources: dict) -> None:
    """A head's own test sets are the files it recorded when it was trained, unchanged: a head.json
    that names another file (tampered, or edited by hand) or a file changed since is refused before
    the file is read (nothing of it is parsed or echoed). Heads from before protlm 0.5 record no
    files and are not checked."""
    recorded = head.info.get("data_files")
    if recorded is None:
        return
    from protlm.io.checksums import xxh3_file

    for name, src in sources.items():
        if src.file is None:
            continue
        path = Path(src.file)
        key = str(path.resolve())
        if key not in recorded:
            raise InputError(f"--head {head.folder}: test set {name!r} names a file the head was not trained with "
                             f"({path}); a head's own test sets are the files it recorded — evaluate another file "
                             f"with --file PATH --format F")
        if path.is_file() and xxh3_file(path) != recorded[key]:
            raise InputError(f"--head {head.folder}: test set {name!r} ({path}) changed since the head was trained "
                             f"(its content digest differs); evaluate it as a new set with --file PATH --format F")


@dataclass
class Inputs:
    """A labelled set ready for batching: features (per residue, lazy; or pooled) and targets."""

    x: FeatureSet
    targets: list[list]

    def __len__(self) -> int:
        return len(self.x)


# --------------------------------------------------------------------------- the protocol


class LabelProtocol(Protocol):
    """The protocol interface for label targets; subclasses set ``name``, ``kind``, ``input_level``."""

    kind: TargetKind = ProteinClasses()
    input_level = "pooled"  # residue: heads always read per-residue embeddings; pooled: unless the head needs them
    data_config = DataConfig
    legacy_state_keys = ("classes", "normalisation")

    def resolve_paths(self, data: dict, fix) -> None:
        """A source's ``file:`` (``benchmark:`` names a set, not a path), in train / valid / test."""
        def source(src, key: str):
            if isinstance(src, dict) and "file" in src:
                src["file"] = fix(src["file"], f"{key}.file")

        train = data.get("train")
        for i, src in enumerate(train if isinstance(train, list) else [train]):
            source(src, f"data.train[{i}]" if isinstance(train, list) else "data.train")
        source(data.get("valid"), "data.valid")
        if isinstance(data.get("test"), dict):
            for name, src in data["test"].items():
                source(src, f"data.test.{name}")

    def data_files(self, config) -> list[str]:
        data = config.data
        sources = [*(data.train or []), data.valid, *(data.test or {}).values()]
        return [src.file for src in sources if src is not None and src.file is not None]

    def test_sets(self, head, names, data_dir):
        return {k: v for k, v in self.evaluation_sets(head, {}, data_dir).items() if k in names}

    def extra_test(self, config, name, file, format, options, where):
        return file_source(config, file, format, where, **options)

    def training_files(self, config, data_dir=None) -> list[str]:  # sets named by protlm datasets read no file
        sources = [*(config.data.train or []), config.data.valid]
        return [src.file for src in sources if src is not None and src.file is not None]

    def source_files(self, source) -> list[str]:
        return [source.file] if source.file is not None else []

    @property
    def output_level(self) -> str:  # type: ignore[override]
        return self.kind.level

    @property
    def regression(self) -> bool:
        return self.kind.regression

    @property
    def headline_label(self) -> str:  # type: ignore[override]
        return self.kind.headline_label

    # ------------------------------------------------------------------ config

    def prepare_tree(self, tree: dict) -> None:
        data_tree = tree.get("data")
        if isinstance(data_tree, dict) and isinstance(data_tree.get("train"), dict):
            data_tree["train"] = [data_tree["train"]]  # one source may be written without a list
        super().prepare_tree(tree)

    def validate(self, c) -> None:
        need(not (c.train.class_weights and self.regression), "train.class_weights",
             "only for classification protocols")
        need(len(c.targets) >= 1, "targets", "give at least one target")
        names = [tg.name for tg in c.targets]
        need(len(set(names)) == len(names), "targets", f"target names must be distinct: {names}")
        for i, tg in enumerate(c.targets):
            need(not (self.regression and tg.classes), f"targets[{i}].classes", "a regression target has no classes")
            check_classes(tg.classes, f"targets[{i}].classes", self.output_level == "residue")
        need(len(c.data.train) >= 1, "data.train", "give a training source")
        for i, src in enumerate(c.data.train):
            check_source(src, f"data.train[{i}]")
        if c.data.valid is not None:
            check_source(c.data.valid, "data.valid")
        else:
            need(0 < c.data.valid_fraction < 1, "data.valid_fraction", "must be in (0, 1)")
        for name, src in c.data.test.items():
            check_source(src, f"data.test.{name}")

    # ------------------------------------------------------------------ targets

    def class_list(self, target: TargetConfig, records) -> list[str] | None:
        return self.kind.class_list(target, records)

    def encode_target(self, r, tg: TargetConfig, cls, set_name: str, unknown_ok: bool):
        return self.kind.encode(r, tg, cls, f"{set_name}: record {r.id!r}", unknown_ok)

    def is_missing(self, e) -> bool:
        return self.kind.is_missing(e)

    # ------------------------------------------------------------------ data

    def load_data(self, config, data_dir) -> TaskData:
        train, valid, tests, classes = load_task_data(config, data_dir)
        norm = [self.kind.normalisation(t) for t in train.targets]
        return TaskData(train, valid, tests, {"classes": classes, "normalisation": norm})

    def evaluation_sets(self, head, request: dict, data_dir) -> dict[str, LabelledSet]:
        config = head.config
        per_residue = self.output_level == "residue"
        sources: dict[str, SourceConfig] = {}
        split = request.get("split")
        if request.get("benchmark"):
            sources[request["benchmark"] + (f":{split}" if split else "")] = SourceConfig(
                benchmark=request["benchmark"], split=split)
        if request.get("file"):
            sources[Path(request["file"]).stem] = file_source(
                config, request["file"], request.get("format"), "--file", split=split,
                **{k: request.get(k) for k in ("label", "kind", "seq_column", "label_column", "id_column")})
        if not sources:
            sources = dict(config.data.test)
            if not sources:
                raise ConfigError("give a labelled set: --benchmark NAME or --file PATH --format F "
                                  "(the head's config names no test sets)")
            check_head_files(head, sources)
        sets = {}
        for name, src in sources.items():
            check_source(src, name)
            sets[name] = encode(load_source(src, data_dir, name, per_residue), config, head.state["classes"], name,
                                unknown_class_ok=True)
        return sets

    def proteins(self, config, data_dir, split: str):
        return task_proteins(config, data_dir, split)

    # ------------------------------------------------------------------ inputs

    def needs_residues(self, config) -> bool:
        return (self.output_level == "residue" or self.input_level == "residue" or config.finetuning
                or get_head(config.head.type).input == "residues")

    def _pool(self, config) -> dict:
        """A per-protein head gets (and caches) pooled vectors from the source, not L × D arrays."""
        return {} if self.needs_residues(config) else {"pool": "mean"}

    def _features(self, config, x: FeatureSet) -> FeatureSet:
        return x if self.needs_residues(config) else pooled(x)

    def inputs(self, config, source, dataset: LabelledSet, progress=None) -> Inputs:
        x = source.features(dataset.ids, dataset.sequences, dataset.hash_sequences, progress, where=dataset.name,
                            **self._pool(config))
        return Inputs(self._features(config, x), dataset.targets)

    def query_inputs(self, config, source, ids, sequences) -> Inputs:
        x = source.features(ids, [s.translate(RARE_TO_X) for s in sequences], sequences, **self._pool(config))
        return Inputs(self._features(config, x), [])

    # ------------------------------------------------------------------ the head

    def outputs(self, config, info: dict) -> list[int]:
        if self.regression:
            return [1] * len(config.targets)
        return [len(c) for c in info["classes"]]

    def check_info(self, config, info: dict, where: str) -> None:
        check_label_info(info, where)
        classes, norm = info["classes"], info["normalisation"]
        if len(classes) != len(config.targets) or len(norm) != len(config.targets):
            raise InputError(f"{where}: head.json lists {len(classes)} class lists / {len(norm)} normalisations "
                             f"for {len(config.targets)} targets")
        if not self.regression and not all(isinstance(c, list) and c for c in classes):
            raise InputError(f"{where}: head.json classes must be a non-empty list per target")

    def new_head(self, config, dim: int, info: dict) -> torch.nn.Module:
        return make_head(config.head, dim, self.outputs(config, info), self.output_level)

    def fit_state(self, config, model, train_inputs: Inputs, info: dict) -> FitState:
        n_classes = self.outputs(config, info)
        weights = class_weights([self.kind] * len(n_classes), config.train.class_weights, train_inputs.targets,
                                n_classes)
        return FitState({"weights": weights, "norm": [tuple(x) for x in info["normalisation"]],
                         "n_classes": n_classes, "train": train_inputs})

    def train_batches(self, config, model, train_inputs: Inputs, rng):
        min_batch = get_head(config.head.type).min_batch
        lengths = train_inputs.x.lengths.tolist()
        for idx in epoch_batches(len(train_inputs.x), config.train.batch_size, rng, lengths):
            if len(idx) < min_batch:
                continue  # batch norm needs two proteins
            xb, mb, windows = feature_batch(train_inputs.x, idx, config.train.max_residues, rng)
            yield idx, xb, mb, windows

    def _loss(self, model, inputs: Inputs, batch, state: FitState) -> torch.Tensor:
        idx, xb, mb, windows = batch
        logits = model(xb, mb)
        total = logits[0].new_zeros(())
        for k, (lg, t, n) in enumerate(zip(logits, inputs.targets, state["n_classes"])):
            term = self.kind.loss(lg, self.kind.batch(t, idx, windows, xb.shape[1], n), state["weights"][k],
                                  state["norm"][k])
            if term is not None:
                total = total + term
        return total

    def batch_loss(self, config, model, batch, state):
        return self._loss(model, state["train"], batch, state), len(batch[0])

    def validation(self, config, model, valid: Inputs, state: FitState) -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for idx in eval_batches(valid.x.lengths.tolist(), 64):
                xb, mb, windows = feature_batch(valid.x, idx)
                total += self._loss(model, valid, (idx, xb, mb, windows), state).item() * len(idx)
                count += len(idx)
        return total / max(count, 1)

    def stopping(self, config) -> tuple[str, bool]:
        if config.train.early_stopping == "metric":
            return f"valid_{self.kind.headline_key}", True
        return super().stopping(config)

    def stopping_text(self, config) -> str:
        if config.train.early_stopping == "metric":
            return f"validation {self.kind.headline_label} ({config.targets[0].name})"
        return super().stopping_text(config)

    def stopping_value(self, config, model, valid: Inputs, state: FitState, info: dict) -> float:
        """``train.early_stopping: metric``: the headline metric (accuracy/Q3, Spearman ρ) of the
        first target on the early-stopping split, without bootstrap; else the validation loss."""
        if config.train.early_stopping != "metric":
            return self.validation(config, model, valid, state)
        preds = self.predict(config, model, valid, info)
        res = self.kind.score(valid.targets[0], preds[0], info["classes"][0], 0, 0)
        h = res.get(self.kind.headline_key) or {}
        value = h.get("value") if isinstance(h, dict) else h
        if value is None or not res.get("proteins"):
            raise InputError(f"{config.name}: train.early_stopping=metric, but the early-stopping split has no "
                             f"scored {config.targets[0].name!r} label; use train.early_stopping=loss")
        return float(value)

    # ------------------------------------------------------------------ outputs

    def predict(self, config, model, inputs: Inputs, info: dict) -> list[list]:
        """Per target, per protein: class probabilities (L × C or C) or a value (de-normalised)."""
        x = inputs.x
        norm = [tuple(v) for v in info["normalisation"]]
        outs: list[list] = [[None] * len(x) for _ in config.targets]
        model.eval()
        with torch.inference_mode():
            for idx in eval_batches(x.lengths.tolist(), 64):
                xb, mb, windows = feature_batch(x, idx)
                for k, lg in enumerate(model(xb, mb)):
                    for row, i in enumerate(idx):
                        outs[k][i] = self.kind.decode(lg[row], windows[row].stop - windows[row].start, norm[k])
        return outs

    def score(self, config, preds, dataset: LabelledSet, info: dict, n_boot: int, seed: int = 0) -> dict:
        out = {}
        for k, tg in enumerate(config.targets):
            classes = info["classes"][k]
            res = self.kind.score(dataset.targets[k], preds[k], classes, n_boot, seed)
            # what was not scored is said, with why: proteins without a scored label of this target
            # (CB513 has two whose mask is all zeros), or a set with none at all (setHARD has no Q2)
            left = len(dataset.targets[k]) + dataset.dropped - int(res["proteins"])  # dropped: none of the labels
            why = (f"no scored residue (every residue masked or without a {tg.label!r} label)"
                   if self.kind.level == "residue" else f"no {tg.label!r} label")
            if not res["proteins"]:
                out[tg.name] = {"proteins": 0, "not_scored": {"proteins": left, "why": f"no protein of the set has a "
                                                                                         f"{tg.label!r} label"}}
                continue
            if left:
                res["not_scored"] = {"proteins": left, "why": why}
            out[tg.name] = res
        return out

    def headline(self, result: dict) -> dict | None:
        return result.get(self.kind.headline_key)

    def per_protein(self, config, preds, dataset, k: int):
        return self.kind.per_protein(dataset.targets[k], preds[k])

    def per_protein_table(self, config, preds, dataset, k: int):
        return self.kind.per_protein_table(dataset.targets[k], preds[k], list(dataset.ids))

    def statistic(self, values, idx) -> float:
        return self.kind.statistic(values, idx)

    def prediction_rows(self, head, ids, sequences, preds) -> list[dict]:
        rows = []
        for i, pid in enumerate(ids):
            for k, tg in enumerate(head.config.targets):
                rows.append({"id": pid, "target": tg.name, **self.kind.row(preds[k][i], head.state["classes"][k])})
        return rows

    def write_predictions(self, head, rows: list[dict], output, options: dict) -> dict:
        output = Path(output)
        if output.suffix == ".json":
            data = json_bytes({"head": str(options.get("head", "")), "task": head.config.name, "predictions": rows})
        else:
            buf = io.StringIO()
            fields = ["id", "target"]  # every target's columns (two class targets have two sets of classes)
            for classes in head.state["classes"]:
                fields += [f for f in self.kind.csv_fields(classes) if f not in fields]
            writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(self.kind.csv_row(row))
            data = buf.getvalue().encode()
        write_bytes(output, data)
        return {"output": str(output), "proteins": len({r["id"] for r in rows}), "rows": len(rows)}

    def check_output(self, output, overwrite: bool = False, inputs=()) -> None:

        if Path(output).suffix not in (".csv", ".json"):
            raise ConfigError(f"--output {output}: give a .csv or .json file name")
        check_output_file(output, overwrite=overwrite, inputs=list(inputs)[:1])
