"""``protlm project`` — t-SNE / UMAP maps of embeddings with silhouette scores (ProtTrans §3.1).

Argument parsing only: the job (finding proteins and labels, sampling, embedding, projecting) is
:func:`protlm.analysis.jobs.project_protein_map`; token maps are
:func:`protlm.analysis.projection.project_tokens`. Heavy libraries are imported inside
:func:`cmd_project` so ``protlm --help`` stays fast.
"""

from __future__ import annotations

import argparse

from protlm.cli.common import add_out, json_parent, overwrite_parent
from protlm.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "project", parents=[json_parent(), overwrite_parent()], help="t-SNE/UMAP maps of embeddings coloured by labels, with silhouettes",
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
    prm.add_argument("--iterations", type=int, default=3000, help="t-SNE iterations (default 3000, minimum 300)")
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
    add_out(p, required=True, help="output folder (new or empty; a folder with files in it only with --overwrite)")
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
    if args.token_embeddings and not args.token_perplexity > 0:  # before a protein job, not after it
        raise ConfigError(f"--token-perplexity must be positive, not {args.token_perplexity}")
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


def check_out(args) -> None:
    """The output folder before any work: not holding an input (its files would be replaced), not
    inside a model folder read, and new or empty unless --overwrite (a finished map is not
    silently replaced)."""
    from protlm.io.outputs import check_apart, check_output_dir

    inputs = [p for p in (args.embeddings, args.labels, args.input) if p]
    check_apart(args.out, inputs, "--out", holds=True, what="the input ")
    check_apart(args.out, [args.model, args.token_embeddings], "--out", what="the model folder ")
    check_output_dir(args.out, overwrite=args.overwrite, inputs=inputs)


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
    from protlm.analysis.jobs import ProteinMapRequest, project_protein_map
    from protlm.analysis.projection import ProjectionParams, project_tokens
    from protlm.cli.common import emit as _emit

    check_args(args)
    params = ProjectionParams(seed=args.seed, perplexity=args.perplexity, max_iter=args.iterations,
                              n_neighbors=args.n_neighbors, min_dist=args.min_dist, threads=args.threads)
    params.validate()
    check_out(args)
    result: dict = {}
    lines: list[str] = []
    if _wants_proteins(args):
        request = ProteinMapRequest(out=args.out, methods=_methods(args.method), embeddings=args.embeddings,
                                    model=args.model, input=args.input, labels=args.labels,
                                    id_column=args.id_column, benchmark=args.benchmark, data=args.data,
                                    color_by=args.color_by, max_proteins=args.max_proteins,
                                    silhouette_sample=args.silhouette_sample)
        result["proteins"] = project_protein_map(request, params)
        lines += _protein_lines(result["proteins"])
    if args.token_embeddings:
        result["tokens"] = project_tokens(args.token_embeddings, args.out, perplexity=args.token_perplexity,
                                          max_iter=args.iterations, seed=args.seed)
        lines += _token_lines(result["tokens"])
    _emit(args, result, "\n".join(lines))
    return 0
