"""``residue_to_value``: one number per residue (per-residue regression: disorder scores,
B-factors, solvent accessibility as a number). Targets come from
:attr:`protlm.data.records.ProteinRecord.residue_values` — in biotrainer's FASTA format
``TARGET=0.1;0.5;…`` (one value per residue, ``nan`` = none; ``MASK=`` honoured). Trained with
MSE on targets standardised by the training residues' mean and spread; headline: Spearman ρ over
all scored residues of a set, bootstrap CI over proteins (with Pearson r and MSE)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protlm.tasks import metrics as M
from protlm.tasks.protocols.base import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import TargetKind, residue_mask


class ResidueValues(TargetKind):
    level = "residue"
    regression = True
    headline_key = "spearman"
    headline_label = "Spearman ρ"

    def encode(self, r, tg, cls, where, unknown_ok):
        values = r.residue_values.get(tg.label)
        arr = np.full(len(r.sequence), np.nan, dtype=np.float64)
        if values is None:
            return arr
        mask = residue_mask(r, tg.label, len(values), "values", where)
        keep = np.asarray(mask, dtype=bool)
        arr[keep] = np.asarray(values, dtype=np.float64)[keep]
        return arr

    def is_missing(self, e) -> bool:
        return bool(np.isnan(e).all())

    def normalisation(self, t):
        v = np.concatenate([a[~np.isnan(a)] for a in t])
        return (float(v.mean()), float(v.std()) or 1.0)

    def batch(self, t, idx, windows, width, n):
        arr = np.full((len(idx), width), np.nan, dtype=np.float32)
        for row, (i, w) in enumerate(zip(idx, windows)):
            part = t[i][w]
            arr[row, :len(part)] = part
        return torch.from_numpy(arr)

    def loss(self, lg, tg, weight, norm):
        keep = ~torch.isnan(tg)
        if not keep.any():
            return None
        mean, std = norm
        return F.mse_loss(lg[..., 0][keep], (tg[keep] - mean) / std)

    def decode(self, lg_row, n, norm):
        mean, std = norm
        return lg_row[:n, 0].numpy().astype(np.float64) * std + mean

    def score(self, truth, pred, classes, n_boot, seed):
        keep = [~np.isnan(t) for t in truth]
        return M.residue_value_scores([t[k] for t, k in zip(truth, keep)], [p[k] for p, k in zip(pred, keep)],
                                      n_boot=n_boot, seed=seed)

    def per_protein(self, truth, pred):
        pairs = [(t[~np.isnan(t)], p[~np.isnan(t)]) for t, p in zip(truth, pred)]
        pairs = [x for x in pairs if len(x[0])]
        return len(pairs), pairs

    def statistic(self, values, idx):
        return M.spearman(np.concatenate([values[i][0] for i in idx]), np.concatenate([values[i][1] for i in idx]))

    def per_protein_table(self, truth, pred, ids):
        keep = [i for i, t in enumerate(truth) if (~np.isnan(t)).any()]
        rho = []
        for i in keep:
            ok = ~np.isnan(truth[i])
            rho.append(float(M.spearman(truth[i][ok], pred[i][ok])) if ok.sum() > 1 else float("nan"))
        return [ids[i] for i in keep], {"residues": [int((~np.isnan(truth[i])).sum()) for i in keep], "spearman": rho}

    def row(self, p, classes):
        return {"values": [round(float(v), 4) for v in p]}

    def csv_fields(self, classes):
        return ["values"]

    def csv_row(self, row):
        return {**row, "values": ";".join(str(v) for v in row["values"])}  # biotrainer's delimiter


@register_protocol
class ResidueToValue(LabelProtocol):
    name = "residue_to_value"
    help = "per-residue embeddings → one value per residue (per-residue regression)"
    kind = ResidueValues()
    input_level = "residue"
    default_head = "cnn"

