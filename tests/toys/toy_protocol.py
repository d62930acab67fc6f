"""A toy protocol in one file: ``sequence_to_charge_sign`` — is a protein's net charge
(K + R − D − E) positive? The target comes from the sequence itself, so any FASTA-like labelled
file works as data; it has its own target encoding, metric (agreement with the sign, and the
balance of the predictions), headline and prediction rows.

Importing this file registers the protocol; nothing else in protlm is changed.
"""

from __future__ import annotations

import numpy as np

from protlm.tasks.protocols import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import ProteinClasses

CLASSES = ["negative", "positive"]


class ChargeSign(ProteinClasses):
    headline_key = "agreement"
    headline_label = "sign agreement"

    def class_list(self, target, records):
        return list(CLASSES)

    def encode(self, r, tg, cls, where, unknown_ok):
        s = r.sequence
        charge = sum(s.count(c) for c in "KR") - sum(s.count(c) for c in "DE")
        return -1 if charge == 0 else int(charge > 0)  # neutral proteins carry no label

    def score(self, truth, pred, classes, n_boot, seed):
        from protlm.tasks.metrics import bootstrap_ci

        yt = np.array([t for t in truth if t >= 0])
        yp = np.array([int(p.argmax()) for t, p in zip(truth, pred) if t >= 0])
        hit = (yt == yp).astype(float)
        lo, hi = bootstrap_ci(lambda i: hit[i].mean(), len(hit), n_boot=n_boot, seed=seed)
        return {"agreement": {"value": float(hit.mean()), "ci95": [lo, hi]},
                "predicted_positive": float(yp.mean()), "proteins": int(len(yt))}

    def row(self, p, classes):
        return {"sign": "+" if p.argmax() == 1 else "-", "confidence": round(float(p.max()), 4)}

    def csv_fields(self, classes):
        return ["sign", "confidence"]


@register_protocol
class SequenceToChargeSign(LabelProtocol):
    name = "sequence_to_charge_sign"
    help = "toy: the sign of a protein's net charge, from its mean embedding"
    kind = ChargeSign()
    input_level = "pooled"
    default_head = "ffn"
