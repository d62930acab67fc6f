"""``protlm project`` — t-SNE / UMAP maps of embeddings with silhouette scores (ProtTrans §3.1).

A thin layer over :mod:`protlm.analysis.projection`: it finds the proteins (an HDF5 of
per-protein embeddings, or a model plus a FASTA or a benchmark set to embed on the fly), the
labels (a CSV/TSV, or a benchmark set), subsamples with a seed, and hands over to
:func:`~protlm.analysis.projection.project_proteins` / :func:`~protlm.analysis.projection.project_tokens`.
Heavy libraries are imported inside :func:`cmd_project` so ``protlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from protlm.errors import ConfigError, InputError

log = logging.getLogger("protlm")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "project", help="t-SNE/UMAP maps of embeddings coloured by labels, with silhouettes",
        description="Project per-protein embeddings to 2-D with t-SNE and/or UMAP (the ProtTrans "
                    "paper's parameters), colour them by label columns, and score how well the labels "
                    "separate (silhouette in the embedding space and on the 2-D map). Or project a "
                    "model's amino-acid token embeddings (--token-embeddings). Writes PNG, HTML "
                    "(offline), CSV coordinates and projection.json into --out.",
        epilog="examples:\n"
               "  protlm project --embeddings emb.per_protein.h5 --labels labels.csv --out runs/proj\n"
               "  protlm project --benchmark scop --data ../shared/data --model onehot "
               "--max-proteins 2000 --out runs/scop\n"
               "  protlm project --token-embeddings checkpoints/protlm-swissprot-masked-xs --out runs/tok",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("proteins (per-protein maps)")
    src.add_argument("--embeddings", metavar="H5", help="per-protein HDF5 from `protlm embed --level protein`")
    src.add_argument("--model", help="embed on the fly: an LM folder / hub id or a baseline embedder name")
    src.add_argument("--input", metavar="FASTA", help="sequences to embed with --model")
    src.add_argument("--labels", metavar="FILE", help="CSV/TSV with an id column and label columns")
    src.add_argument("--id-column", default="id", help="id column of --labels (default: id)")
    src.add_argument("--benchmark", metavar="NAME",
                     help="labels (and, with --model, sequences) from a benchmark set, e.g. scop, deeploc_val")
    src.add_argument("--data", default=None, help="benchmark data folder (default: $PROTLM_DATA or ../shared/data)")
    src.add_argument("--color-by", action="append", metavar="COLUMN",
                     help="label column to colour by; repeatable (default: every label column)")
    src.add_argument("--max-proteins", type=int, metavar="N",
                     help="project a seeded sample of N proteins, stratified by the first --color-by "
                          "column (default: all)")
    src.add_argument("--silhouette-sample", type=int, default=5000, metavar="N",
                     help="silhouettes on at most N labelled points, drawn with --seed (default 5000)")
    prm = p.add_argument_group("projection (defaults: the paper's)")
    prm.add_argument("--method", choices=["tsne", "umap", "both"], default="both", help="default: both")
    prm.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default 30; < proteins)")
    prm.add_argument("--iterations", type=int, default=3000, help="t-SNE iterations (default 3000, minimum 250)")
    prm.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors (default 15)")
    prm.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist (default 0.1)")
    prm.add_argument("--threads", type=int, default=1,
                     help="CPU threads for t-SNE (default 1: fastest on a shared machine; more for big sets "
                          "on your own cores)")
    prm.add_argument("--seed", type=int, default=0, help="seed of projections, sample and silhouettes (default 0)")
    tok = p.add_argument_group("token embeddings")
    tok.add_argument("--token-embeddings", metavar="MODEL",
                     help="t-SNE of the model's 20 amino-acid input-embedding rows, coloured by biochemical group")
    tok.add_argument("--token-perplexity", type=float, default=5.0,
                     help="t-SNE perplexity for the 20 tokens (default 5)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_project)


def _wants_proteins(args) -> bool:
    return any(getattr(args, k) for k in ("embeddings", "model", "input", "labels", "benchmark", "color_by",
                                          "max_proteins"))


def check_args(args) -> None:
    """Reject contradictory or incomplete option sets with one line saying what to give."""
    if not _wants_proteins(args) and not args.token_embeddings:
        raise ConfigError("nothing to project: give --embeddings H5 or --model M (with --input FASTA or "
                          "--benchmark NAME) plus labels, and/or --token-embeddings MODEL")
    if args.max_proteins is not None and args.max_proteins < 2:
        raise ConfigError(f"--max-proteins must be at least 2, not {args.max_proteins}")
    if args.silhouette_sample < 2:
        raise ConfigError(f"--silhouette-sample must be at least 2, not {args.silhouette_sample}")
    if not _wants_proteins(args):
        return
    if args.embeddings and args.model:
        raise ConfigError("--embeddings and --model exclude each other (the HDF5 already holds the vectors)")
    if not (args.embeddings or args.model):
        raise ConfigError("per-protein maps need --embeddings H5, or --model M to embed on the fly")
    if args.input and not args.model:
        raise ConfigError("--input FASTA needs --model to embed it")
    if args.model and not (args.input or args.benchmark):
        raise ConfigError("--model needs sequences: --input FASTA or --benchmark NAME")
    if args.labels and args.benchmark:
        raise ConfigError("--labels and --benchmark both give labels; choose one")
    if not (args.labels or args.benchmark):
        raise ConfigError("per-protein maps need labels to colour by: --labels FILE or --benchmark NAME")


def _benchmark(name: str, data: str) -> tuple[dict[str, str], dict[str, dict[str, object]]]:
    """Sequences and label columns of a benchmark set (ids as its loader makes them)."""
    from protlm.data.benchmarks import load_benchmark

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


def run_proteins(args, params) -> dict:
    """The per-protein job from command-line arguments; returns the summary dict."""
    from protlm.analysis.projection import (check_size, h5_index, project_proteins, read_h5_vectors,
                                            read_labels, stratified_subsample)

    t0 = time.perf_counter()
    sequences: dict[str, str] | None = None
    if args.benchmark:
        from protlm.io.resources import data_root

        data = data_root(args.data)
        sequences, labels = _benchmark(args.benchmark, data)
        label_source = f"benchmark {args.benchmark} ({data})"
    else:
        labels = read_labels(args.labels, args.id_column)
        label_source = str(args.labels)
    labels = _select_columns(labels, args.color_by, label_source)

    if args.embeddings:
        index = h5_index(args.embeddings)
        candidates, source = list(index), str(args.embeddings)
    elif args.input:
        from protlm.data.fasta import read_fasta

        sequences = {rec.id: rec.sequence for rec in read_fasta(args.input)}
        candidates, source = list(sequences), str(args.input)
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
    if args.max_proteins is not None and args.max_proteins < available:
        keep = stratified_subsample([labels[first].get(i) for i in candidates], args.max_proteins, params.seed)
        candidates = [candidates[i] for i in keep]
    for method in _methods(args.method):  # before a long embedding run, not after
        check_size(len(candidates), method, params)
    load_s = time.perf_counter() - t0

    t = time.perf_counter()
    if args.embeddings:
        x = read_h5_vectors(args.embeddings, [index[i] for i in candidates])
        model_name = _h5_model(args.embeddings)
    else:
        from protlm.embed.runner import load_embedder

        embedder = load_embedder(args.model)
        log.info("embedding %d proteins with %s", len(candidates), args.model)
        x = embedder.embed_proteins([sequences[i] for i in candidates])
        model_name = str(args.model)
    embed_s = time.perf_counter() - t

    extra = {
        "source": {"embeddings": source if args.embeddings else None, "model": model_name,
                   "sequences": None if args.embeddings else source, "labels": label_source},
        "counts": {"available": available, "label_ids": len(labelled),
                   "label_ids_without_embedding": len(labelled - in_source),
                   "proteins_without_label": {c: sum(1 for i in in_source if i not in m) for c, m in labels.items()}},
        "timings": {"read_s": round(load_s, 2),
                    ("load_embeddings_s" if args.embeddings else "embed_s"): round(embed_s, 2)},
    }
    if args.max_proteins is not None:
        extra["sampling"] = {"max_proteins": args.max_proteins, "seed": params.seed,
                             "stratified_by": first, "method": "proportional stratified (missing label = own stratum)"}
    title = f"{model_name} embeddings"
    return project_proteins(candidates, x, labels, args.out, _methods(args.method), params,
                            silhouette_sample=args.silhouette_sample, title=title, extra=extra)


def _h5_model(path: str) -> str:
    import h5py

    with h5py.File(path, "r") as f:
        model = f.attrs.get("model", Path(path).stem)
    return model.decode() if isinstance(model, bytes) else str(model)


def _methods(choice: str) -> list[str]:
    return ["tsne", "umap"] if choice == "both" else [choice]


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:6.3f}"


def _protein_lines(res: dict) -> list[str]:
    c, t = res["counts"], res["timings"]
    names = {"tsne": "t-SNE", "umap": "UMAP"}
    steps = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items() if k != "total_s")
    lines = [f"projected {c['projected']:,} proteins (of {c.get('available', c['given']):,}) from "
             f"{res['source']['model'] if 'source' in res else 'embeddings'} [D={c['dim']}] with "
             f"{' + '.join(names[m] for m in res['methods'])} ({steps})",
             "  silhouette per label: cosine on the embeddings | Euclidean on the 2-D "
             + " | ".join(names[m] for m in res["methods"])]
    for column, s in res["silhouette"].items():
        if s["kind"] == "continuous":
            lines.append(f"    {column:20s} continuous label: no silhouette")
            continue
        scores = [s["embedding_cosine"]] + [s[f"{m}_2d_euclidean"] for m in res["methods"]]
        lines.append(f"    {column:20s} {' | '.join(_fmt(v) for v in scores)}   ({s['classes']} classes, "
                     f"{s['labelled']:,} labelled, {s['unlabelled']:,} unlabelled/grey)")
    if "tsne" in res.get("runs", {}):
        run = res["runs"]["tsne"]
        lines.append(f"  t-SNE ran {run['iterations_run']:,} of {res['parameters']['tsne']['max_iter']:,} iterations "
                     f"(scikit-learn stops when the error stalls), KL divergence {run['kl_divergence']}")
    if "label_ids_without_embedding" in c:
        lines.append(f"  label ids without an embedding: {c['label_ids_without_embedding']:,}")
    out = res["outputs"]
    for kind in ("png", "html", "csv"):
        for path in out[kind]:
            lines.append(f"  {kind:5s} {path}")
    lines.append(f"  json  {out['json']}")
    return lines


def _token_lines(res: dict) -> list[str]:
    s = res["silhouette"]["group"]
    lines = [f"token embeddings of {res['model']} ({res['tokens']} amino acids, D={res['dim']}): silhouette of "
             f"the {s['classes']} biochemical groups: cosine on the embeddings {_fmt(s['embedding_cosine']).strip()} | "
             f"Euclidean on t-SNE 2-D {_fmt(s['tsne_2d_euclidean']).strip()}"]
    lines += [f"  {k:5s} {v}" for k, v in res["outputs"].items()]
    return lines


def cmd_project(args) -> int:
    from protlm.analysis.projection import ProjectionParams, project_tokens
    from protlm.cli.main import _emit

    check_args(args)
    params = ProjectionParams(seed=args.seed, perplexity=args.perplexity, max_iter=args.iterations,
                              n_neighbors=args.n_neighbors, min_dist=args.min_dist, threads=args.threads)
    params.validate()
    result: dict = {}
    lines: list[str] = []
    if _wants_proteins(args):
        result["proteins"] = run_proteins(args, params)
        lines += _protein_lines(result["proteins"])
    if args.token_embeddings:
        result["tokens"] = project_tokens(args.token_embeddings, args.out, perplexity=args.token_perplexity,
                                          max_iter=args.iterations, seed=args.seed)
        lines += _token_lines(result["tokens"])
    _emit(args, result, "\n".join(lines))
    return 0
