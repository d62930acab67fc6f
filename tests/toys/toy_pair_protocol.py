"""A toy protocol of a new shape, in one file: ``protein_pairs_to_value`` — one number for a
*pair* of proteins (here: how alike their residue compositions are, 1 − half the L1 distance of
the two composition vectors), from the two proteins' mean embeddings.

Nothing here is label-shaped: the data are a FASTA of proteins plus tables of pairs
(``id_a<TAB>id_b<TAB>value``); the head's input is built from two proteins (|a − b| and a ⊙ b,
twice the embedder's width); the metric is Spearman ρ over pairs with a bootstrap CI over pairs;
``protlm predict`` scores every pair of the proteins of a FASTA and writes a CSV of pairs. The
protocol's state (the training values' mean and spread, to de-normalise predictions) is one
opaque object that the engine stores in head.json and hands back.

Importing this file registers the protocol; nothing else in protlm is changed.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from protlm.data.fasta import CleaningPolicy, read_fasta
from protlm.errors import ConfigError, InputError
from protlm.io.atomic import write_text
from protlm.io.outputs import check_output_file
from protlm.tasks.heads import make_head
from protlm.tasks.metrics import bootstrap_ci, spearman
from protlm.tasks.protocols import FitState, Protocol, TaskData, register_protocol

TARGET = "similarity"
MAX_QUERY_PROTEINS = 200  # predict scores every pair: 200 proteins are 19,900 pairs


@dataclass
class PairData:
    sequences: str | None = None  # FASTA: the proteins the pair tables name
    train: str | None = None  # TSV: id_a, id_b, value
    valid: str | None = None
    test: dict[str, str] = field(default_factory=dict)


@dataclass
class PairSet:
    name: str
    a: list[str]
    b: list[str]
    values: np.ndarray  # float, NaN where unknown (query pairs)
    sequences: dict[str, str]

    def __len__(self) -> int:
        return len(self.a)

    def ids(self) -> list[str]:
        return [f"{x}|{y}" for x, y in zip(self.a, self.b)]


@dataclass
class PairInputs:
    x: np.ndarray  # pairs × 2D
    y: np.ndarray  # pairs

    def __len__(self) -> int:
        return len(self.y)


def read_pairs(path: str, sequences: dict[str, str], name: str) -> PairSet:
    a, b, v = [], [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"config data: cannot read the pair table {path} ({exc.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise InputError(f"{path}:{n}: expected id_a<TAB>id_b<TAB>value")
        for pid in parts[:2]:
            if pid not in sequences:
                raise InputError(f"{path}:{n}: protein {pid!r} is not in data.sequences")
        try:
            value = float(parts[2])
        except ValueError:
            raise InputError(f"{path}:{n}: the value {parts[2]!r} is not a number") from None
        a.append(parts[0])
        b.append(parts[1])
        v.append(value)
    if not a:
        raise InputError(f"{path}: no pairs")
    return PairSet(name, a, b, np.asarray(v, dtype=np.float64), sequences)


@register_protocol
class ProteinPairsToValue(Protocol):
    name = "protein_pairs_to_value"
    help = "toy: a number per pair of proteins, from their mean embeddings"
    output_level = "protein"  # the head sees one vector per pair and gives one number
    default_head = "ffn"
    data_config = PairData
    data_path_fields = ("sequences", "train", "valid", "test")
    headline_label = "Spearman ρ (pairs)"
    count_key = "pairs"

    def prepare_tree(self, tree: dict) -> None:
        tree.setdefault("targets", [{"name": TARGET, "label": TARGET}])
        super().prepare_tree(tree)

    def validate(self, config) -> None:
        for key in ("sequences", "train", "valid"):
            if not getattr(config.data, key):
                raise ConfigError(f"config data.{key}: required by {self.name}")
        if [t.name for t in config.targets] != [TARGET]:
            raise ConfigError(f"config targets: {self.name} has one target, {TARGET}")

    def data_files(self, config) -> list[str]:
        d = config.data
        return [d.sequences, d.train, d.valid, *d.test.values()]

    def training_files(self, config) -> list[str]:
        d = config.data
        return [d.sequences, d.train, d.valid]

    # ------------------------------------------------------------------ data and inputs

    def _sequences(self, config) -> dict[str, str]:
        return {r.id: r.sequence for r in read_fasta(config.data.sequences, CleaningPolicy(rare="keep"))}

    def load_data(self, config, data_dir) -> TaskData:
        seqs = self._sequences(config)
        d = config.data
        train = read_pairs(d.train, seqs, "train")
        state = {"mean": float(train.values.mean()), "std": float(train.values.std() or 1.0)}
        return TaskData(train, read_pairs(d.valid, seqs, "valid"),
                        {name: read_pairs(path, seqs, name) for name, path in d.test.items()}, state)

    def evaluation_sets(self, head, request: dict, data_dir) -> dict[str, PairSet]:
        if request.get("file"):
            return {Path(request["file"]).stem: read_pairs(request["file"], self._sequences(head.config), "file")}
        return self.load_data(head.config, data_dir).tests

    def input_dim(self, config, source_dim: int) -> int:
        return 2 * source_dim

    def _pair_inputs(self, source, a, b, values, sequences, progress=None) -> PairInputs:
        names = sorted(set(a) | set(b))
        feats = source.features(names, [sequences[n] for n in names], progress=progress, pool="mean")
        vec = {n: feats[i][0].astype(np.float32) for i, n in enumerate(names)}
        va, vb = np.stack([vec[n] for n in a]), np.stack([vec[n] for n in b])
        return PairInputs(np.concatenate([np.abs(va - vb), va * vb], axis=1), np.asarray(values, dtype=np.float64))

    def inputs(self, config, source, dataset: PairSet, progress=None) -> PairInputs:
        return self._pair_inputs(source, dataset.a, dataset.b, dataset.values, dataset.sequences, progress)

    def _query_pairs(self, ids: list[str]) -> list[tuple[int, int]]:
        if len(ids) > MAX_QUERY_PROTEINS:
            raise InputError(f"{self.name}: predict scores every pair; give at most {MAX_QUERY_PROTEINS} proteins, "
                             f"not {len(ids)}")
        return list(itertools.combinations(range(len(ids)), 2))

    def query_inputs(self, config, source, ids, sequences) -> PairInputs:
        pairs = self._query_pairs(ids)
        if not pairs:
            raise InputError(f"{self.name}: predict needs at least two proteins")
        seqs = dict(zip(ids, sequences))
        return self._pair_inputs(source, [ids[i] for i, _ in pairs], [ids[j] for _, j in pairs],
                                 np.full(len(pairs), np.nan), seqs)

    # ------------------------------------------------------------------ the head and its training

    def new_head(self, config, dim: int, info: dict) -> torch.nn.Module:
        return make_head(config.head, dim, [1], "protein")

    def check_info(self, config, info: dict, where: str) -> None:
        if not (isinstance(info, dict) and all(isinstance(info.get(k), float) for k in ("mean", "std"))
                and info["std"] > 0):
            raise InputError(f"{where}: head.json's protocol state must hold a float mean and a positive std")

    def fit_state(self, config, model, train_inputs, info) -> FitState:
        return FitState({"mean": info["mean"], "std": info["std"]})

    def _forward(self, model, x: np.ndarray) -> torch.Tensor:
        xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None, :]
        return model(xb, torch.ones(xb.shape[:2]))[0][:, 0]

    def train_batches(self, config, model, train_inputs: PairInputs, rng):
        order = rng.permutation(len(train_inputs))
        for start in range(0, len(order), config.train.batch_size):
            yield train_inputs, order[start:start + config.train.batch_size]

    def _loss(self, model, inputs: PairInputs, idx, state) -> torch.Tensor:
        target = torch.from_numpy((inputs.y[idx] - state["mean"]) / state["std"]).float()
        return torch.nn.functional.mse_loss(self._forward(model, inputs.x[idx]), target)

    def batch_loss(self, config, model, batch, state):
        inputs, idx = batch
        return self._loss(model, inputs, idx, state), len(idx)

    def validation(self, config, model, valid_inputs: PairInputs, state) -> float:
        model.eval()
        with torch.inference_mode():
            return float(self._loss(model, valid_inputs, np.arange(len(valid_inputs)), state))

    # ------------------------------------------------------------------ outputs

    def predict(self, config, model, inputs: PairInputs, info: dict) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            return self._forward(model, inputs.x).double().numpy() * info["std"] + info["mean"]

    def score(self, config, preds, dataset: PairSet, info: dict, n_boot: int, seed: int = 0) -> dict:
        t = dataset.values
        lo, hi = bootstrap_ci(lambda i: spearman(t[i], preds[i]), len(t), n_boot=n_boot, seed=seed)
        return {TARGET: {"spearman": {"value": float(spearman(t, preds)), "ci95": [lo, hi]},
                         "mean_abs_error": float(np.abs(t - preds).mean()), "pairs": len(t)}}

    def headline(self, result: dict) -> dict | None:
        return result.get("spearman")

    def per_protein(self, config, preds, dataset: PairSet, k: int):
        return len(dataset), (np.asarray(dataset.values), np.asarray(preds))

    def statistic(self, values, idx) -> float:
        return spearman(values[0][idx], values[1][idx])

    def per_protein_table(self, config, preds, dataset: PairSet, k: int):
        return dataset.ids(), {"truth": [float(v) for v in dataset.values], "prediction": [float(v) for v in preds]}

    def prediction_rows(self, head, ids, sequences, preds) -> list[dict]:
        return [{"id_a": ids[i], "id_b": ids[j], TARGET: round(float(p), 4)}
                for (i, j), p in zip(self._query_pairs(ids), preds)]

    def check_output(self, output, overwrite: bool = False, inputs=()) -> None:
        check_output_file(output, overwrite=overwrite, inputs=inputs, create_parent=True)

    def write_predictions(self, head, rows: list[dict], output, options: dict) -> dict:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["id_a", "id_b", TARGET], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(Path(output), buf.getvalue())
        return {"out": str(output), "pairs": len(rows)}
