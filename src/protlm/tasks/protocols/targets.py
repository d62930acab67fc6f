"""What a label target is (the :class:`TargetKind` a label protocol delegates to): per-residue
classes, per-protein classes and per-protein values — how each is encoded from a record, batched,
lost, decoded, scored with bootstrap CIs and written. Per-residue values are a kind of their own in
:mod:`protlm.tasks.protocols.residue_to_value`; the protocol that uses them is
:class:`protlm.tasks.protocols.labels.LabelProtocol`."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from protlm.errors import InputError
from protlm.tasks import metrics as M
from protlm.tasks.config import TargetConfig, need
from protlm.tasks.data import MISSING_RESIDUE


class TargetKind:
    """What one target is: how it is encoded, batched, lost, decoded, scored and written."""

    level = "protein"  # residue | protein
    regression = False
    headline_key = "accuracy"
    headline_label = "accuracy"

    def class_list(self, target: TargetConfig, records) -> list[str] | None:
        return None

    def encode(self, r, tg: TargetConfig, cls, where: str, unknown_ok: bool):
        raise NotImplementedError

    def is_missing(self, e) -> bool:
        raise NotImplementedError

    def batch(self, t: list, idx: list[int], windows: list[slice], width: int, n: int) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, lg: torch.Tensor, tg: torch.Tensor, weight, norm: tuple[float, float]) -> torch.Tensor | None:
        raise NotImplementedError

    def decode(self, lg_row: torch.Tensor, n: int, norm: tuple[float, float]):
        raise NotImplementedError

    def score(self, truth: list, pred: list, classes: list | None, n_boot: int, seed: int) -> dict:
        raise NotImplementedError

    def per_protein(self, truth: list, pred: list):
        raise NotImplementedError

    def per_protein_table(self, truth: list, pred: list, ids: list[str]) -> tuple[list[str], dict[str, list]]:
        """(ids, named columns) of the scored proteins, one value each (``protlm compare --per-protein``)."""
        raise NotImplementedError

    def statistic(self, values, idx: np.ndarray) -> float:
        raise NotImplementedError

    def row(self, p, classes: list | None) -> dict:
        raise NotImplementedError

    def csv_fields(self, classes: list | None) -> list[str]:
        raise NotImplementedError

    def normalisation(self, t: list) -> tuple[float, float]:
        return (0.0, 1.0)

    def csv_row(self, row: dict) -> dict:
        """A prediction row as a CSV line (the fields of :meth:`csv_fields`)."""
        return row


def residue_mask(r, label: str, given: int, unit: str, where: str) -> list:
    """The mask of a per-residue label of ``given`` ``unit`` (characters, values), after checking
    that the label and its mask have one entry per residue."""
    if given != len(r.sequence):
        raise InputError(f"{where}: label {label!r} has {given} {unit} for {len(r.sequence)} residues")
    mask = r.mask(label)
    if len(mask) != len(r.sequence):
        raise InputError(f"{where}: mask of {label!r} has {len(mask)} values for {len(r.sequence)} residues")
    return mask


def check_classes(cls: list | None, where: str, single_chars: bool) -> None:
    if cls is None:
        return
    need(len(cls) >= 2, where, "need at least two classes")
    need(len(set(cls)) == len(cls), where, "classes must be distinct")
    if single_chars:
        need(all(len(x) == 1 for x in cls), where,
             "per-residue classes are single characters (one per residue in the label string)")


def _sorted_classes(seen: set[str], target: TargetConfig) -> list[str]:
    seen = seen - set(target.missing)
    if len(seen) < 2:
        raise InputError(f"target {target.name!r}: fewer than two classes of label {target.label!r} in the training data")
    return sorted(seen, key=lambda x: (len(x), int(x)) if x.lstrip("-").isdigit() else (0, x))


class ResidueClasses(TargetKind):
    """One class per residue (a label string, one character per residue; ``-`` = no label)."""

    level = "residue"

    def class_list(self, target, records):
        if target.classes is not None:
            return [str(c) for c in target.classes]
        seen: set[str] = set()
        for r in records:
            lab = r.residue_labels.get(target.label)
            if lab:
                m = r.mask(target.label)
                seen.update(ch for ch, keep in zip(lab, m) if keep and ch != MISSING_RESIDUE)
        return _sorted_classes(seen, target)

    def encode(self, r, tg, cls, where, unknown_ok):
        lab = r.residue_labels.get(tg.label)
        arr = np.full(len(r.sequence), -1, dtype=np.int64)
        if lab is None:
            return arr
        mask = residue_mask(r, tg.label, len(lab), "characters", where)
        index = {c: i for i, c in enumerate(cls)}
        for pos, (ch, keep) in enumerate(zip(lab, mask)):
            if not keep or ch == MISSING_RESIDUE or ch in tg.missing:
                continue
            k = index.get(ch)
            if k is None:
                raise InputError(f"{where}: residue {pos + 1} has label {ch!r}, not one of the classes {cls}")
            arr[pos] = k
        return arr

    def is_missing(self, e) -> bool:
        return not (e >= 0).any()

    def batch(self, t, idx, windows, width, n):
        arr = np.full((len(idx), width), -1, dtype=np.int64)
        for row, (i, w) in enumerate(zip(idx, windows)):
            part = t[i][w]
            arr[row, :len(part)] = part
        arr[arr >= n] = -1  # a class unseen in training cannot be learned
        return torch.from_numpy(arr)

    def loss(self, lg, tg, weight, norm):
        if not (tg >= 0).any():
            return None
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), weight=weight, ignore_index=-1)

    def decode(self, lg_row, n, norm):
        return torch.softmax(lg_row[:n], -1).numpy()

    def score(self, truth, pred, classes, n_boot, seed):
        yt, yp = [], []
        for t, p in zip(truth, pred):
            keep = t >= 0
            yt.append(t[keep])
            yp.append(p.argmax(-1)[keep])
        return M.residue_scores(yt, yp, n_boot=n_boot, seed=seed)

    def per_protein(self, truth, pred):
        correct = np.array([int((p.argmax(-1)[t >= 0] == t[t >= 0]).sum()) for t, p in zip(truth, pred)])
        total = np.array([int((t >= 0).sum()) for t in truth])
        return (len(truth) if total.sum() else 0), (correct, total)

    def per_protein_table(self, truth, pred, ids):
        correct, total = self.per_protein(truth, pred)[1]
        keep = [i for i in range(len(ids)) if total[i] > 0]
        return [ids[i] for i in keep], {"residues": [int(total[i]) for i in keep],
                                        "accuracy": [float(correct[i] / total[i]) for i in keep]}

    def statistic(self, values, idx):
        correct, total = values
        return correct[idx].sum() / max(total[idx].sum(), 1)

    def row(self, p, classes):
        return {"prediction": "".join(classes[j] for j in p.argmax(-1)),
                "confidence": [round(float(v), 4) for v in p.max(-1)]}

    def csv_fields(self, classes):
        return ["prediction", "mean_confidence"]

    def csv_row(self, row):
        return {**row, "mean_confidence": round(sum(row["confidence"]) / max(len(row["confidence"]), 1), 4)}


class ProteinClasses(TargetKind):
    """One class per protein (``-1``: no label; a test class unseen in training: index ``len(classes)``)."""

    def class_list(self, target, records):
        if target.classes is not None:
            return [str(c) for c in target.classes]
        return _sorted_classes({str(r.labels[target.label]) for r in records if target.label in r.labels}, target)

    def encode(self, r, tg, cls, where, unknown_ok):
        value = r.labels.get(tg.label)
        if value is None or str(value) in tg.missing:
            return -1
        k = {c: i for i, c in enumerate(cls)}.get(str(value))
        if k is None:
            if unknown_ok:
                return len(cls)
            raise InputError(f"{where}: label {tg.label!r} = {value!r} is not one of the classes "
                             f"({len(cls)}: {cls[:12]}{' …' if len(cls) > 12 else ''}); list it under missing: to "
                             f"ignore it")
        return k

    def is_missing(self, e) -> bool:
        return e < 0

    def batch(self, t, idx, windows, width, n):
        arr = np.array([t[i] for i in idx], dtype=np.int64)
        arr[arr >= n] = -1
        return torch.from_numpy(arr)

    loss = ResidueClasses.loss

    def decode(self, lg_row, n, norm):
        return torch.softmax(lg_row, -1).numpy()

    def score(self, truth, pred, classes, n_boot, seed):
        keep = [i for i, v in enumerate(truth) if v >= 0]
        yt = np.array([truth[i] for i in keep], dtype=np.int64)
        yp = np.array([int(pred[i].argmax()) for i in keep], dtype=np.int64)
        res = M.sequence_class_scores(yt, yp, len(classes) + 1, n_boot=n_boot, seed=seed)
        res["unseen_class_items"] = int((yt >= len(classes)).sum())
        return res

    def per_protein(self, truth, pred):
        keep = [i for i, v in enumerate(truth) if v >= 0]
        return len(keep), (np.array([float(int(pred[i].argmax()) == truth[i]) for i in keep]), keep)

    def per_protein_table(self, truth, pred, ids):
        hits, keep = self.per_protein(truth, pred)[1]
        return [ids[i] for i in keep], {"correct": [int(h) for h in hits]}

    def statistic(self, values, idx):
        return values[0][idx].mean()

    def row(self, p, classes):
        j = int(p.argmax())
        return {"prediction": classes[j], "probability": float(p[j]),
                "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p)}}

    def csv_fields(self, classes):
        return ["prediction", "probability"] + [f"p_{c}" for c in classes]

    def csv_row(self, row):
        return {**row, **{f"p_{c}": p for c, p in row.get("probabilities", {}).items()}}


class ProteinValues(TargetKind):
    """One number per protein (``NaN``: no value); trained on targets standardised with the
    training set's mean and spread, predictions de-normalised."""

    regression = True
    headline_key = "spearman"
    headline_label = "Spearman ρ"

    def encode(self, r, tg, cls, where, unknown_ok):
        value = r.labels.get(tg.label)
        if value is None:
            return float("nan")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label {tg.label!r} = {value!r} is not a number") from None

    def is_missing(self, e) -> bool:
        return math.isnan(e)

    def normalisation(self, t):
        v = np.array([x for x in t if not math.isnan(x)], dtype=np.float64)
        return (float(v.mean()), float(v.std()) or 1.0)

    def batch(self, t, idx, windows, width, n):
        return torch.tensor([t[i] for i in idx], dtype=torch.float32)

    def loss(self, lg, tg, weight, norm):
        keep = ~torch.isnan(tg)
        if not keep.any():
            return None
        mean, std = norm
        return F.mse_loss(lg[:, 0][keep], (tg[keep] - mean) / std)

    def decode(self, lg_row, n, norm):
        mean, std = norm
        return float(lg_row[0]) * std + mean

    def score(self, truth, pred, classes, n_boot, seed):
        keep = [i for i, v in enumerate(truth) if not math.isnan(v)]
        return M.value_scores(np.array([truth[i] for i in keep]), np.array([pred[i] for i in keep]),
                              n_boot=n_boot, seed=seed)

    def per_protein(self, truth, pred):
        keep = [i for i, v in enumerate(truth) if not math.isnan(v)]
        return len(keep), (np.array([truth[i] for i in keep]), np.array([pred[i] for i in keep]), keep)

    def per_protein_table(self, truth, pred, ids):
        t, p, keep = self.per_protein(truth, pred)[1]
        return [ids[i] for i in keep], {"truth": [float(x) for x in t], "prediction": [float(x) for x in p]}

    def statistic(self, values, idx):
        return M.spearman(values[0][idx], values[1][idx])

    def row(self, p, classes):
        return {"value": p}

    def csv_fields(self, classes):
        return ["value"]
