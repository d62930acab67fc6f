"""Train a head on embeddings, score it, save it, and use it: ``protlm train/evaluate/predict``.

Training follows the papers' second stage: the LM is frozen (its embeddings are computed once,
see :mod:`protlm.tasks.features`), a small head is trained with AdamW on the training split,
the validation loss decides early stopping (the best epoch's weights are kept), and test sets
are only scored, never used for a decision. Targets of one config are trained jointly, with
the losses summed, as ProtTrans trained Q3+Q8 and Q10+Q2; missing labels add no loss.

A trained head is a folder: ``head.json`` (the config, classes, input dimension, target
normalisation, training history, protlm version), ``head.safetensors`` (the weights) and
``metrics.json`` (validation and test metrics with bootstrap CIs). Each file is written to a
temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from protlm import __version__
from protlm.errors import InputError
from protlm.tasks import metrics as M
from protlm.configfile import build
from protlm.data.prepare import atomic_write_bytes
from protlm.tasks.config import TaskConfig, validate
from protlm.tasks.data import LabelledSet, load_task_data
from protlm.tasks.features import FeatureSet, FeatureSource, check_identity, pooled
from protlm.tasks.heads import build_head

log = logging.getLogger("protlm.tasks")

HEAD_JSON, HEAD_WEIGHTS, METRICS_JSON = "head.json", "head.safetensors", "metrics.json"
METRIC_NAMES = {"residue_to_class": "accuracy", "sequence_to_class": "accuracy", "sequence_to_value": "spearman"}


# --------------------------------------------------------------------------- batches


@dataclass
class Encoded:
    """Features of a set, ready for batching: per residue (L × D, read from disk per batch) or
    pooled (1 × D, in memory)."""

    x: FeatureSet
    targets: list[list]


def _features(config: TaskConfig, x: FeatureSet, per_residue_input: bool) -> FeatureSet:
    return x if per_residue_input else pooled(x)


def _needs_residues(config: TaskConfig) -> bool:
    return config.per_residue or config.head.type == "light_attention"


def _batch(x: FeatureSet, idx: list[int], crop: int = 0, rng: np.random.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    """Pad the proteins ``idx`` into B × L × D float32 with a mask; ``crop`` > 0 takes a random
    window. Each protein is read here (in its stored dtype) and copied into the batch."""
    windows = []
    for i in idx:
        n = int(x.lengths[i])
        if crop and n > crop and rng is not None:
            s = int(rng.integers(0, n - crop + 1))
            windows.append(slice(s, s + crop))
        else:
            windows.append(slice(0, n))
    width = max(w.stop - w.start for w in windows)
    dim = x.dim
    xb = np.zeros((len(idx), width, dim), dtype=np.float32)
    mb = np.zeros((len(idx), width), dtype=np.float32)
    for row, (i, w) in enumerate(zip(idx, windows)):
        part = x[i][w]
        xb[row, :len(part)] = part
        mb[row, :len(part)] = 1.0
    return torch.from_numpy(xb), torch.from_numpy(mb), windows


def _targets(config: TaskConfig, targets: list[list], idx: list[int], windows: list[slice], width: int,
             n_classes: list[int]) -> list[torch.Tensor]:
    out = []
    for t, n in zip(targets, n_classes):
        if config.per_residue:
            arr = np.full((len(idx), width), -1, dtype=np.int64)
            for row, (i, w) in enumerate(zip(idx, windows)):
                part = t[i][w]
                arr[row, :len(part)] = part
            arr[arr >= n] = -1  # a class unseen in training cannot be learned
            out.append(torch.from_numpy(arr))
        elif config.regression:
            out.append(torch.tensor([t[i] for i in idx], dtype=torch.float32))
        else:
            arr = np.array([t[i] for i in idx], dtype=np.int64)
            arr[arr >= n] = -1
            out.append(torch.from_numpy(arr))
    return out


def _loss(config: TaskConfig, logits: list[torch.Tensor], targets: list[torch.Tensor],
          weights: list[torch.Tensor | None], norm: list[tuple[float, float]]) -> torch.Tensor:
    total = logits[0].new_zeros(())
    for k, (lg, tg) in enumerate(zip(logits, targets)):
        if config.regression:
            keep = ~torch.isnan(tg)
            if keep.any():
                mean, std = norm[k]
                total = total + F.mse_loss(lg[:, 0][keep], (tg[keep] - mean) / std)
        else:
            if (tg >= 0).any():
                total = total + F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), weight=weights[k],
                                                ignore_index=-1)
    return total


# --------------------------------------------------------------------------- training


def _class_weights(config: TaskConfig, targets: list[list], n_classes: list[int]) -> list[torch.Tensor | None]:
    if not config.train.class_weights:
        return [None] * len(n_classes)
    out = []
    for t, n in zip(targets, n_classes):
        labels = np.concatenate([np.atleast_1d(np.asarray(v)) for v in t])
        counts = np.bincount(labels[(labels >= 0) & (labels < n)], minlength=n).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n, 0.0)
        out.append(torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32))
    return out


def _epoch_batches(n: int, batch_size: int, rng: np.random.Generator, lengths: list[int]) -> list[list[int]]:
    """Shuffled batches of proteins of similar length (less padding), in shuffled order."""
    order = rng.permutation(n)
    pool = 50 * batch_size
    batches = []
    for start in range(0, n, pool):
        chunk = sorted(order[start:start + pool].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _val_loss(model, config, data: Encoded, n_classes, weights, norm) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for idx in _eval_batches(data.x.lengths.tolist(), 64):
            xb, mb, windows = _batch(data.x, idx)
            loss = _loss(config, model(xb, mb), _targets(config, data.targets, idx, windows, xb.shape[1], n_classes),
                         weights, norm)
            total += loss.item() * len(idx)
            count += len(idx)
    return total / max(count, 1)


def fit_head(config: TaskConfig, train: Encoded, valid: Encoded, dim: int, n_classes: list[int],
             norm: list[tuple[float, float]], progress: Callable[[int, float, float], None] | None = None):
    """Train with early stopping on the validation loss; returns (model, history, best_epoch,
    stopped_by): ``"early_stopping"`` (patience ran out) or ``"epoch_cap"`` (train.epochs did)."""
    t = config.train
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    outputs = [1] * len(n_classes) if config.regression else n_classes
    model = build_head(config.head.type, dim, outputs, per_residue=config.per_residue, hidden=config.head.hidden,
                       kernel=config.head.kernel, dropout=config.head.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    weights = _class_weights(config, train.targets, n_classes)
    lengths = train.x.lengths.tolist()
    best, best_state, best_epoch, history, waited = math.inf, None, 0, [], 0
    stopped_by = "epoch_cap"
    for epoch in range(1, t.epochs + 1):
        model.train()
        run_loss, seen = 0.0, 0
        for idx in _epoch_batches(len(train.x), t.batch_size, rng, lengths):
            if len(idx) < 2 and config.head.type == "light_attention":
                continue  # batch norm needs two proteins
            xb, mb, windows = _batch(train.x, idx, t.max_residues, rng)
            loss = _loss(config, model(xb, mb), _targets(config, train.targets, idx, windows, xb.shape[1], n_classes),
                         weights, norm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item() * len(idx)
            seen += len(idx)
        vl = _val_loss(model, config, valid, n_classes, weights, norm)
        history.append({"epoch": epoch, "train_loss": run_loss / max(seen, 1), "valid_loss": vl})
        if progress is not None:
            progress(epoch, history[-1]["train_loss"], vl)
        if vl < best - 1e-6:
            best, best_epoch, waited = vl, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= t.patience:
                stopped_by = "early_stopping"
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch, stopped_by


# --------------------------------------------------------------------------- predictions and scores


def predict_encoded(model, config: TaskConfig, x: FeatureSet, norm: list[tuple[float, float]]) -> list[list]:
    """Per target, per protein: class probabilities (L × C or C) or a value (de-normalised)."""
    outs: list[list] = [[None] * len(x) for _ in config.targets]
    model.eval()
    with torch.inference_mode():
        for idx in _eval_batches(x.lengths.tolist(), 64):
            xb, mb, windows = _batch(x, idx)
            logits = model(xb, mb)
            for k, lg in enumerate(logits):
                for row, i in enumerate(idx):
                    if config.regression:
                        mean, std = norm[k]
                        outs[k][i] = float(lg[row, 0]) * std + mean
                    elif config.per_residue:
                        n = windows[row].stop - windows[row].start
                        outs[k][i] = torch.softmax(lg[row, :n], -1).numpy()
                    else:
                        outs[k][i] = torch.softmax(lg[row], -1).numpy()
    return outs


def score(config: TaskConfig, preds: list[list], data: LabelledSet, classes: list, n_boot: int, seed: int = 0) -> dict:
    """Metrics of every target on one labelled set (see :mod:`protlm.tasks.metrics`)."""
    out = {}
    for k, tg in enumerate(config.targets):
        truth, pred = data.targets[k], preds[k]
        if config.per_residue:
            yt, yp = [], []
            for t, p in zip(truth, pred):
                keep = t >= 0
                yt.append(t[keep])
                yp.append(p.argmax(-1)[keep])
            res = M.residue_scores(yt, yp, n_boot=n_boot, seed=seed)
        elif config.regression:
            keep = [i for i, v in enumerate(truth) if not math.isnan(v)]
            res = M.value_scores(np.array([truth[i] for i in keep]), np.array([pred[i] for i in keep]),
                                 n_boot=n_boot, seed=seed)
        else:
            keep = [i for i, v in enumerate(truth) if v >= 0]
            yt = np.array([truth[i] for i in keep], dtype=np.int64)
            yp = np.array([int(pred[i].argmax()) for i in keep], dtype=np.int64)
            res = M.sequence_class_scores(yt, yp, len(classes[k]) + 1, n_boot=n_boot, seed=seed)
            res["unseen_class_items"] = int((yt >= len(classes[k])).sum())
        if res["proteins"]:  # a set without this target's labels (NEW364 has no 8-state) is not scored
            out[tg.name] = res
    return out


# --------------------------------------------------------------------------- files


def json_bytes(obj) -> bytes:
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, np.integer)):
            return clean(o.item())
        return o

    return (json.dumps(clean(obj), indent=2) + "\n").encode()


def save_head(out: Path, model, info: dict, metrics: dict) -> None:
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / HEAD_WEIGHTS, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    atomic_write_bytes(out / HEAD_JSON, json_bytes(info))
    atomic_write_bytes(out / METRICS_JSON, json_bytes(metrics))


@dataclass
class TrainedHead:
    config: TaskConfig
    model: torch.nn.Module
    classes: list
    norm: list[tuple[float, float]]
    dim: int
    info: dict


def load_head(folder: str | Path) -> TrainedHead:
    """A head folder written by :func:`train` (weights read with safetensors, never pickle)."""
    folder = Path(folder)
    if not (folder / HEAD_JSON).is_file() or not (folder / HEAD_WEIGHTS).is_file():
        raise InputError(f"--head {folder}: not a trained head folder (needs {HEAD_JSON} and {HEAD_WEIGHTS})")
    from protlm.tasks import headfile

    info = headfile.read_head_json(folder, HEAD_JSON)  # a mapping with sane sizes, or one clear line
    config = build(TaskConfig, info["config"], "")
    validate(config)
    classes, norm, dim = info["classes"], [tuple(x) for x in info["normalisation"]], int(info["dim"])
    outputs = [1] * len(config.targets) if config.regression else [len(c) for c in classes]
    if len(outputs) != len(config.targets) or (config.regression and len(norm) != len(config.targets)):
        raise InputError(f"--head {folder}: {HEAD_JSON} lists {len(classes)} class lists / {len(norm)} "
                         f"normalisations for {len(config.targets)} targets")
    headfile.check_head_shape(folder, config.head.hidden, config.head.kernel)

    def make():
        return build_head(config.head.type, dim, outputs, per_residue=config.per_residue, hidden=config.head.hidden,
                          kernel=config.head.kernel, dropout=config.head.dropout)

    with torch.device("meta"):  # shapes only: nothing is allocated before the weights file agrees
        shapes = make()
    state = headfile.load_checked_state(folder / HEAD_WEIGHTS, shapes)
    model = make()
    model.load_state_dict(state)
    model.eval()
    return TrainedHead(config, model, classes, norm, dim, info)


# --------------------------------------------------------------------------- the jobs


def _encode_set(config: TaskConfig, source: FeatureSource, data: LabelledSet, progress=None) -> Encoded:
    x = source.features(data.ids, data.sequences, data.hash_sequences, progress, where=data.name)
    return Encoded(_features(config, x, _needs_residues(config)), data.targets)


def _check_source(head: "TrainedHead", source: FeatureSource) -> None:
    """The features must come from the model the head was trained on (not only the same width)."""
    if source.dim != head.dim:
        raise InputError(f"embedder {source.name}: gives {source.dim}-dimensional embeddings, the head expects {head.dim}")
    warning = check_identity(head.info.get("embedder_identity"), source.identity(checksum=False),
                             f"embedder {source.name}")
    if warning:
        log.warning("%s", warning)


def cut_short_message(config: TaskConfig, best_epoch: int) -> str:
    return (f"{config.name}: training stopped at the epoch cap (train.epochs={config.train.epochs}) with the best "
            f"validation loss in the last epoch ({best_epoch}): the head is probably under-trained; raise "
            f"train.epochs so that early stopping (train.patience={config.train.patience}) ends it")


def train(config: TaskConfig, out: str | Path, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
          progress: Callable[[str, dict], None] | None = None, source: FeatureSource | None = None) -> dict:
    """Train the head a config describes, score it on validation and test sets, save the folder.

    ``source``: the features to use (default: one made from ``config.embedder``); left open."""
    out = Path(out)
    t0 = time.perf_counter()
    train_set, valid_set, tests, classes = load_task_data(config, data_dir)
    own = source is None
    if own:
        source = FeatureSource(config.embedder, config.layer, cache_dir)
    try:
        return _train(config, out, source, train_set, valid_set, tests, classes, progress, t0)
    finally:
        if own:
            source.close()


def _train(config, out, source, train_set, valid_set, tests, classes, progress, t0) -> dict:
    def feats(data: LabelledSet) -> Encoded:
        def bar(done, total):
            if progress is not None:
                progress("embed", {"set": data.name, "done": done, "total": total})

        return _encode_set(config, source, data, bar)

    tr, va = feats(train_set), feats(valid_set)
    te = {name: feats(s) for name, s in tests.items()}
    t_embed = time.perf_counter() - t0
    dim = tr.x.dim
    identity = source.identity()
    if config.regression:
        norm = []
        for t in train_set.targets:
            v = np.array([x for x in t if not math.isnan(x)], dtype=np.float64)
            norm.append((float(v.mean()), float(v.std()) or 1.0))
    else:
        norm = [(0.0, 1.0)] * len(config.targets)
    n_classes = [len(c) for c in classes] if not config.regression else [1] * len(config.targets)

    def epoch_cb(epoch, tl, vl):
        if progress is not None:
            progress("epoch", {"epoch": epoch, "train_loss": tl, "valid_loss": vl})

    model, history, best_epoch, stopped_by = fit_head(config, tr, va, dim, n_classes, norm, epoch_cb)
    # the cap, not early stopping, ended training while the validation loss was still falling
    cut_short = stopped_by == "epoch_cap" and best_epoch == len(history)
    if cut_short:
        log.warning("%s", cut_short_message(config, best_epoch))
    t_train = time.perf_counter() - t0 - t_embed
    n_boot = config.train.bootstrap
    metrics = {"valid": score(config, predict_encoded(model, config, va.x, norm), valid_set, classes, n_boot),
               "test": {name: score(config, predict_encoded(model, config, te[name].x, norm), s, classes, n_boot)
                        for name, s in tests.items()}}
    counts = {"train": len(train_set), "valid": len(valid_set), **{f"test:{k}": len(v) for k, v in tests.items()}}
    stop = {"best_epoch": best_epoch, "epochs_run": len(history), "epoch_cap": config.train.epochs,
            "stopped_by": stopped_by, "cut_short": cut_short}
    info = {
        "protlm_version": __version__,
        "protocol": config.protocol,
        "config": config.as_dict(),
        "classes": classes,
        "dim": dim,
        "normalisation": norm,
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        **stop,
        "embedder_identity": identity,
        "proteins": counts,
        "seconds": {"embed": t_embed, "train": t_train},
    }
    metrics_doc = {"task": config.name, "protocol": config.protocol, "embedder": str(config.embedder),
                   "embedder_identity": identity, "head": config.head.type, "proteins": counts, **stop, **metrics}
    save_head(out, model, info, metrics_doc)
    return {**metrics_doc, "out": str(out), "seconds": time.perf_counter() - t0}


def evaluate(head: TrainedHead, sets: dict[str, LabelledSet], embedder: str | None = None,
             cache_dir: str | Path | None = None, n_boot: int | None = None) -> dict:
    """Score a trained head on labelled sets (already encoded with the head's classes)."""
    config = head.config
    with FeatureSource(embedder or config.embedder, config.layer, cache_dir) as source:
        _check_source(head, source)
        out = {}
        for name, data in sets.items():
            enc = _encode_set(config, source, data)
            preds = predict_encoded(head.model, config, enc.x, head.norm)
            out[name] = score(config, preds, data, head.classes, config.train.bootstrap if n_boot is None else n_boot)
    return out


def predict(head: TrainedHead, ids: list[str], sequences: list[str], embedder: str | None = None,
            cache_dir: str | Path | None = None) -> list[dict]:
    """Predictions for unlabelled proteins: one dict per protein and target.

    ``sequences`` as written (an HDF5 embedder is looked up by their hash); B/O/U/Z are given to
    an embedder as X, like the training sets."""
    from protlm.tasks.data import RARE_TO_X

    config = head.config
    with FeatureSource(embedder or config.embedder, config.layer, cache_dir) as source:
        _check_source(head, source)
        x = _features(config, source.features(ids, [s.translate(RARE_TO_X) for s in sequences], sequences),
                      _needs_residues(config))
        preds = predict_encoded(head.model, config, x, head.norm)
    rows = []
    for i, pid in enumerate(ids):
        for k, tg in enumerate(config.targets):
            p = preds[k][i]
            row = {"id": pid, "target": tg.name}
            if config.regression:
                row["value"] = p
            elif config.per_residue:
                cls = head.classes[k]
                row["prediction"] = "".join(cls[j] for j in p.argmax(-1))
                row["confidence"] = [round(float(v), 4) for v in p.max(-1)]
            else:
                cls = head.classes[k]
                j = int(p.argmax())
                row["prediction"] = cls[j]
                row["probability"] = float(p[j])
                row["probabilities"] = {c: round(float(v), 4) for c, v in zip(cls, p)}
            rows.append(row)
    return rows
