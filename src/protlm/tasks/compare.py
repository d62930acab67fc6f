"""``protlm compare``: two trained heads on the same proteins — the paired difference of the headline
metric with a paired bootstrap 95% CI (the same resampled proteins for both heads), and, on request,
one row per protein with both heads' values.

This is what ``protlm benchmark --compare A:B`` computes for the suite's own cells, for any two heads
of one protocol (two contact heads, a frozen and a fine-tuned head, two embedders) on any set their
protocol can read: the heads' own test sets, ``--benchmark NAME`` or ``--file PATH`` (a labelled file,
or a structure set of one's own for contact heads).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from protlm.errors import ConfigError, InputError
from protlm.io.atomic import json_bytes, write_bytes
from protlm.io.outputs import check_output_file
from protlm.tasks import metrics as M
from protlm.tasks.config import MAX_BOOTSTRAP
from protlm.tasks.train import TrainedHead, check_source


def _predictions(head: TrainedHead, sets: dict, cache_dir) -> dict:
    protocol = head.protocol
    with protocol.open_source(head.config, cache_dir) as source:
        check_source(head, source)
        return {name: protocol.predict(head.config, head.model, protocol.inputs(head.config, source, data), head.state)
                for name, data in sets.items()}


def compare_heads(head_a: TrainedHead, head_b: TrainedHead, request: dict, *, data_dir=None, cache_dir=None,
                  n_boot: int = 1000, seed: int = 0) -> dict:
    """Headline A − B per (set, target) with its paired bootstrap CI, and the per-protein rows."""
    if head_a.config.protocol != head_b.config.protocol:
        raise ConfigError(f"--head {head_a.folder} is a {head_a.config.protocol} head, --head {head_b.folder} a "
                          f"{head_b.config.protocol} head: compare heads of one protocol")
    targets_a = [t.name for t in head_a.config.targets]
    targets_b = [t.name for t in head_b.config.targets]
    if targets_a != targets_b:
        raise ConfigError(f"the heads predict different targets ({', '.join(targets_a)} vs {', '.join(targets_b)})")
    protocol = head_a.protocol
    sets_a = protocol.evaluation_sets(head_a, request, data_dir)
    sets_b = protocol.evaluation_sets(head_b, request, data_dir)
    if sorted(sets_a) != sorted(sets_b):
        raise InputError(f"the heads' own test sets differ ({', '.join(sorted(sets_a))} vs "
                         f"{', '.join(sorted(sets_b))}); give the set to compare on (--file or --benchmark)")
    for name in sets_a:
        ids_a, ids_b = _ids(sets_a[name]), _ids(sets_b[name])
        if ids_a != ids_b:
            raise InputError(f"set {name!r}: the heads would be scored on different proteins ({len(ids_a)} vs "
                             f"{len(ids_b)}; trained on other splits?); give the set to compare on (--file)")
    preds_a = _predictions(head_a, sets_a, cache_dir)
    preds_b = _predictions(head_b, sets_b, cache_dir)
    rows, proteins = [], []
    for name, data in sets_a.items():
        for k, target in enumerate(targets_a):
            n, va = protocol.per_protein(head_a.config, preds_a[name], data, k)
            _, vb = protocol.per_protein(head_b.config, preds_b[name], sets_b[name], k)
            ids, cols_a = protocol.per_protein_table(head_a.config, preds_a[name], data, k)
            _, cols_b = protocol.per_protein_table(head_b.config, preds_b[name], sets_b[name], k)
            for i, pid in enumerate(ids):
                proteins.append({"set": name, "target": target, "id": pid,
                                 **{f"{c}_A": cols_a[c][i] for c in cols_a}, **{f"{c}_B": cols_b[c][i] for c in cols_b}})
            if n == 0:
                rows.append({"set": name, "target": target, "proteins": 0, "not_scored": "no protein of the set has "
                             "this target's label"})
                continue
            everything = np.arange(n)
            a, b = protocol.statistic(va, everything), protocol.statistic(vb, everything)
            lo, hi = M.bootstrap_ci(lambda i: protocol.statistic(va, i) - protocol.statistic(vb, i), n,
                                    n_boot=n_boot, seed=seed)
            decided = ("A better" if lo > 0 else "B better" if hi < 0 else "not decided") if not math.isnan(lo) \
                else "no CI"
            rows.append({"set": name, "target": target, "metric": protocol.headline_label, "proteins": n,
                         "a": float(a), "b": float(b), "difference": float(a - b), "ci95": [lo, hi],
                         "decided": decided})
    return {"a": str(head_a.folder), "b": str(head_b.folder), "protocol": protocol.name,
            "n_boot": n_boot, "differences": rows, "proteins": proteins}


def _ids(dataset) -> list[str]:
    return [c.id for c in dataset] if not hasattr(dataset, "ids") else list(dataset.ids)


def compare_table(result: dict) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"headline A − B on the same proteins; paired bootstrap 95% CI over proteins ({result['n_boot']:,} "
             f"resamples)", "",
             "| set | target | metric | n | A | B | A − B | 95% CI | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["differences"]:
        if not r["proteins"]:
            lines.append(f"| {r['set']} | {r['target']} | – | 0 | – | – | – | – | {r['not_scored']} |")
            continue
        lo, hi = r["ci95"]
        ci = "–" if math.isnan(lo) else f"[{lo:+.3f}, {hi:+.3f}]"
        lines.append(f"| {r['set']} | {r['target']} | {r['metric']} | {r['proteins']} | {r['a']:.3f} | {r['b']:.3f} | "
                     f"{r['difference']:+.3f} | {ci} | {r['decided']} |")
    return "\n".join(lines) + "\n"


def write_per_protein(path: Path, proteins: list[dict]) -> None:
    """One row per (set, target, protein): both heads' values (columns ``NAME_A``, ``NAME_B``)."""
    fields: list[str] = []
    for row in proteins:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(proteins)
    write_bytes(path, buf.getvalue().encode())


def compare_command(head_a, head_b, request: dict, *, data_dir=None, cache_dir=None, n_boot: int = 1000,
                    out=None, per_protein=None, overwrite: bool = False) -> dict:
    """``protlm compare --head A --head B``: the result document, written to ``out`` (JSON) and the
    per-protein rows to ``per_protein`` (CSV) when given."""
    from protlm.io.outputs import check_apart
    from protlm.tasks.commands import open_head

    if n_boot < 1 or n_boot > MAX_BOOTSTRAP:
        raise ConfigError(f"--bootstrap must be in [1, {MAX_BOOTSTRAP:,}] for a paired CI, not {n_boot}")
    inputs = [request.get("file"), data_dir, head_a, head_b]
    for path, suffix in ((out, ".json"), (per_protein, ".csv")):
        if path is not None:
            if Path(path).suffix != suffix:
                raise ConfigError(f"{path}: give a {suffix} file name")
            check_output_file(path, overwrite=overwrite, create_parent=True, inputs=inputs)
            check_apart(path, [head_a, head_b])
    a, b = open_head(head_a, None, "protlm compare"), open_head(head_b, None, "protlm compare")
    result = compare_heads(a, b, request, data_dir=data_dir, cache_dir=cache_dir, n_boot=n_boot)
    if per_protein is not None:
        write_per_protein(Path(per_protein), result["proteins"])
    doc = {k: v for k, v in result.items() if k != "proteins"}
    if out is not None:
        write_bytes(Path(out), json_bytes(doc))
    return result

