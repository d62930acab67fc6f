"""Analysis jobs: from what a user names (files, a benchmark set, an embedder) to a finished analysis.

:func:`project_protein_map` is ``protlm project``'s per-protein job: it finds the proteins (an
HDF5 of per-protein embeddings, or an embedder plus a FASTA or a benchmark set to embed on the
fly), the labels (a CSV/TSV, or a benchmark set), subsamples with a seed (stratified by the first
label column), embeds if needed and hands over to
:func:`protlm.analysis.projection.project_proteins`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from protlm.analysis.projection import (ProjectionParams, check_size, h5_index, project_proteins, read_h5_vectors,
                                        read_labels, stratified_subsample)
from protlm.data.benchmarks import load_benchmark
from protlm.data.fasta import read_fasta
from protlm.embed.runner import Embedder
from protlm.embed.store import file_attr, open_embeddings
from protlm.errors import ConfigError, InputError
from protlm.io.resources import data_root

log = logging.getLogger("protlm")


@dataclass
class ProteinMapRequest:
    """What to project (``protlm project``'s per-protein options)."""

    out: str | Path
    methods: list[str]
    embeddings: str | None = None  # per-protein HDF5 (protlm embed --level protein)
    model: object = None  # an embedder spec (name or {name: …, options}) to embed on the fly
    input: str | None = None  # FASTA to embed with ``model``
    labels: str | None = None  # CSV/TSV with an id column
    id_column: str = "id"
    benchmark: str | None = None  # labels (and sequences) from a benchmark set
    data: str | None = None  # benchmark data folder (default: $PROTLM_DATA or ../shared/data)
    color_by: list[str] | None = None
    max_proteins: int | None = None
    silhouette_sample: int = 5000


def _benchmark(name: str, data: str) -> tuple[dict[str, str], dict[str, dict[str, object]]]:
    """Sequences and label columns of a benchmark set (ids as its loader makes them)."""
    if not Path(data).is_dir():
        raise InputError(f"{data}: no such folder (--data should point at the protlm benchmark data)")
    records = load_benchmark(name, data)
    labels: dict[str, dict[str, object]] = {}
    for r in records:
        for column, value in r.labels.items():
            labels.setdefault(column, {})[r.id] = value
    if not labels:
        raise InputError(f"benchmark {name!r} has no per-protein labels to colour by")
    return {r.id: r.sequence for r in records}, labels


def _select_columns(labels: dict, wanted: list[str] | None, where: str) -> dict:
    if not wanted:
        return labels
    for column in wanted:
        if column not in labels:
            raise ConfigError(f"--color-by {column!r}: no such label column in {where} "
                              f"(columns: {', '.join(labels)})")
    return {c: labels[c] for c in dict.fromkeys(wanted)}


def project_protein_map(req: ProteinMapRequest, params: ProjectionParams) -> dict:
    """Find proteins and labels, sample, embed if needed, project; returns the summary dict."""
    t0 = time.perf_counter()
    sequences: dict[str, str] | None = None
    if req.benchmark:
        data = data_root(req.data)
        sequences, labels = _benchmark(req.benchmark, data)
        label_source = f"benchmark {req.benchmark} ({data})"
    else:
        labels = read_labels(req.labels, req.id_column)
        label_source = str(req.labels)
    labels = _select_columns(labels, req.color_by, label_source)

    if req.embeddings:
        index = h5_index(req.embeddings)
        candidates, source = list(index), str(req.embeddings)
    elif req.input:
        sequences = {rec.id: rec.sequence for rec in read_fasta(req.input)}
        candidates, source = list(sequences), str(req.input)
    else:
        candidates, source = list(sequences), label_source
    labelled = set().union(*(m.keys() for m in labels.values()))
    in_source = set(candidates)
    if not labelled & in_source:
        example = next(iter(sorted(labelled)), "-")
        raise InputError(f"none of the {len(labelled):,} ids in {label_source} is among the {len(candidates):,} "
                         f"proteins of {source} (e.g. label id {example!r}, protein id {candidates[0]!r})")
    available = len(candidates)
    first = next(iter(labels))
    if req.max_proteins is not None and req.max_proteins < available:
        keep = stratified_subsample([labels[first].get(i) for i in candidates], req.max_proteins, params.seed)
        candidates = [candidates[i] for i in keep]
    for method in req.methods:  # before a long embedding run, not after
        check_size(len(candidates), method, params)
    load_s = time.perf_counter() - t0

    t = time.perf_counter()
    if req.embeddings:
        x = read_h5_vectors(req.embeddings, [index[i] for i in candidates])
        model_name = _h5_model(req.embeddings)
    else:
        embedder = Embedder(req.model)
        log.info("embedding %d proteins with %s", len(candidates), req.model)
        x = embedder.embed_proteins([sequences[i] for i in candidates])
        model_name = str(req.model)
    embed_s = time.perf_counter() - t

    extra = {
        "source": {"embeddings": source if req.embeddings else None, "model": model_name,
                   "sequences": None if req.embeddings else source, "labels": label_source},
        "counts": {"available": available, "label_ids": len(labelled),
                   "label_ids_without_embedding": len(labelled - in_source),
                   "proteins_without_label": {c: sum(1 for i in in_source if i not in m) for c, m in labels.items()}},
        "timings": {"read_s": round(load_s, 2),
                    ("load_embeddings_s" if req.embeddings else "embed_s"): round(embed_s, 2)},
    }
    if req.max_proteins is not None:
        extra["sampling"] = {"max_proteins": req.max_proteins, "seed": params.seed,
                             "stratified_by": first, "method": "proportional stratified (missing label = own stratum)"}
    title = f"{model_name} embeddings"
    return project_proteins(candidates, x, labels, req.out, req.methods, params,
                            silhouette_sample=req.silhouette_sample, title=title, extra=extra)


def _h5_model(path: str) -> str:
    with open_embeddings(path, "--embeddings") as f:
        return str(file_attr(f, "model", Path(path).stem))


