"""``protlm`` — one entry point, one subcommand per job.

Every subcommand prints a readable summary to stderr and, with ``--json``, the full result as
JSON on stdout. Errors a user can cause end with one ``protlm: error: ...`` line and exit
code 2; Ctrl-C exits with 130 and keeps everything already written (atomic writes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from protlm import __version__
from protlm.cli.common import (add_out, apply_threads, data_parent, emit, json_parent, overwrite_parent,
                               progress_bar, threads_parent)
from protlm.errors import ProtlmError, Terminated

log = logging.getLogger("protlm")


# --------------------------------------------------------------------------- helpers


def _add_cleaning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cleaning (see docs/data.md)")
    g.add_argument("--rare", choices=["X", "keep"], default="X",
                   help="B/O/U/Z: map to X (default, as ProtTrans/ESM) or keep")
    g.add_argument("--skip-invalid", action="store_true",
                   help="skip (log and count) records with invalid characters or no residues "
                        "instead of stopping")
    g.add_argument("--rename-duplicates", action="store_true",
                   help="rename repeated ids to ID_2, ID_3, ... instead of stopping")


# --------------------------------------------------------------------------- commands


def cmd_inspect(args) -> int:
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.stats import fasta_statistics

    res = fasta_statistics(args.fasta, CleaningPolicy(args.rare), skip_invalid=args.skip_invalid,
                           rename_duplicates=args.rename_duplicates)
    ln = res["length"]
    summary = (
        f"{res['file']}: {res['records']:,} records, {res['residues']:,} residues; "
        f"length min {ln['min']}, median {ln['median']:g}, mean {ln['mean']}, max {ln['max']} "
        f"({ln['longest_id']}); skipped {res['skipped_invalid']}, renamed {res['renamed_duplicates']}"
    )
    emit(args, res, summary)
    return 0


def cmd_prepare(args) -> int:
    from protlm.data.prepare import PrepareOptions, prepare, verify
    from protlm.errors import ConfigError

    if args.verify:
        if args.input:
            raise ConfigError("--verify checks the folder given by --out; give no input file")
        res = verify(args.out)
        emit(args, res, f"{args.out}: {res['shards']} shard files, {res['records']:,} records: "
                         "sizes and content hashes match the manifest")
        return 0
    if not args.input:
        raise ConfigError("give the FASTA input file (or --verify to check a prepared --out folder)")

    options = PrepareOptions(
        valid_fraction=args.valid_fraction,
        split_salt=args.split_salt,
        min_length=args.min_length,
        max_length=args.max_length,
        rare=args.rare,
        skip_invalid=args.skip_invalid,
        chunk_mb=args.chunk_mb,
    )
    size = Path(args.input).stat().st_size if Path(args.input).is_file() else None
    bar = progress_bar(size, "prepare")
    try:
        result = prepare(
            args.input, args.out, options, exclude=args.exclude or (), workers=args.workers,
            shard=args.shard, dedup=args.dedup, rename_duplicates=args.rename_duplicates,
            progress=bar.update,
        )
    finally:
        bar.close()
    if "splits" in result:
        c = result["counts"]
        summary = (
            f"prepared {c['kept']:,} of {c['records_read']:,} records "
            f"(train {result['splits']['train']['records']:,} / valid "
            f"{result['splits']['valid']['records']:,}; excluded {c['excluded']}, too short "
            f"{c['too_short']}, too long {c['too_long']}, skipped {c['skipped_invalid']}, "
            f"duplicate sequences {c['duplicate_sequences']:,}, removed {c['duplicates_removed']:,}) "
            f"→ {Path(args.out) / 'manifest.json'}"
        )
    else:
        i, n = result["shard"]
        summary = (
            f"part {i}/{n} done: {len(result['chunks'])} of {result['total_chunks']} chunks "
            f"({result['chunks_reused']} reused); run `protlm prepare-merge {args.out}` "
            "when all parts are done"
        )
    emit(args, result, summary)
    return 0


def cmd_prepare_merge(args) -> int:
    from protlm.data.prepare import merge

    result = merge(args.out, dedup=args.dedup, rename_duplicates=args.rename_duplicates)
    c = result["counts"]
    summary = (
        f"merged {result['chunks']} chunks: {c['kept']:,} records "
        f"→ {Path(args.out) / 'manifest.json'}"
    )
    emit(args, result, summary)
    return 0


def cmd_datasets(args) -> int:
    from protlm.data.benchmarks import BENCHMARKS, load_benchmark, summarize
    from protlm.errors import ConfigError

    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown data set {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    from protlm.io.resources import data_root

    data = data_root(args.data)
    if not data.is_dir():
        raise ProtlmError(f"{data}: no such folder (--data should point at the protlm benchmark data)")
    result = {name: summarize(load_benchmark(name, data)) for name in names}
    lines = [f"{name:24s} {res.get('records', 0):>7,} records  {res.get('splits', {})}"
             for name, res in result.items()]
    emit(args, result, "\n".join(lines))
    return 0


def _silhouette_text(scores: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items()
                     if k.endswith(("_cosine", "_euclidean")) and isinstance(v, float))


def cmd_demo(args) -> int:
    from protlm.demo import run_demo

    apply_threads(args)
    bar = progress_bar(None, "demo: prepare")

    def stage(name: str) -> None:
        print(f"protlm demo: {name} …", file=sys.stderr, flush=True)

    try:
        report = run_demo(args.out, data=args.data, workers=args.workers, progress=bar.update,
                          pretrain_steps=args.pretrain_steps, max_proteins=args.max_proteins,
                          max_train=args.max_train, stage=stage)
    finally:
        bar.close()
    st = report["statistics"]
    ln = st["length"]
    lines = [
        "protlm demo",
        f"  source      {report['source']}",
        f"  input       {report['input']}",
        f"  records     {st['records']:,}   residues {st['residues']:,}",
        f"  length      min {ln['min']}  median {ln['median']:g}  mean {ln['mean']}  max {ln['max']} ({ln['longest_id']})",
        "  composition " + " ".join(f"{aa}:{100 * f:.1f}%" for aa, f in
                                    sorted(st["composition"].items(), key=lambda kv: -kv[1])[:8]),
        f"  shards      train {report['shards']['train']['records']:,} seqs / "
        f"{report['shards']['train']['residues']:,} res; valid {report['shards']['valid']['records']:,} seqs",
        f"  manifest    {report['shards']['manifest']}",
    ]
    for name, s in report.get("benchmarks", {}).items():
        lines.append(f"  benchmark   {name:22s} {s.get('records', 0):>7,} records  splits {s.get('splits', {})}")
    pt = report["pretrain"]
    ppl = f", validation perplexity {pt['val_ppl']:.2f}" if pt.get("val_ppl") else ""
    lines.append(f"  pretrain    tiny ESM-style LM ({pt['parameters']:,} parameters), {pt['steps']} steps: "
                 f"loss {pt['first_loss']:.3f} → {pt['last_loss']:.3f}{ppl}")
    lines.append(f"              checkpoint {pt['model']}")
    for model, what in report["language_models"].items():
        lines.append(f"  LM          {model}: {what}")
    for model, why in report.get("language_models_missing", {}).items():
        lines.append(f"  LM missing  {model}: {why}")
    pr = report["projection"]
    lines.append(f"  embed       {pr['source']}")
    for key in ("projection", "projection_unirep"):
        if key not in report:
            continue
        run = report[key]
        lines.append(f"  embed       {Path(run['model']).name} → {run['embeddings']}")
        for column, scores in run["proteins"]["silhouette"].items():
            lines.append(f"  silhouette  {Path(run['model']).name} {column}: " + _silhouette_text(scores))
        for path in run["proteins"]["outputs"]["png"]:
            lines.append(f"  picture     {path}")
    tok = pr["tokens"]["silhouette"]["group"]
    lines.append("  tokens      amino-acid groups: " + _silhouette_text(tok))
    lines.append(f"  picture     {pr['tokens']['outputs']['png']}")
    if "heads" in report:
        lines.append("")
        lines.append(report["heads"]["table"].rstrip())
        lines.append(f"  results     {report['heads']['results_md']}")
    report_path = Path(args.out) / "demo_report.json"
    from protlm.io.atomic import write_json

    write_json(report_path, report)
    lines.append(f"  report      {report_path}")
    emit(args, report, "\n".join(lines))
    return 0


def cmd_pretrain(args) -> int:
    from protlm.pretrain.config import load_config
    from protlm.pretrain.trainer import pretrain

    apply_threads(args)
    config = load_config(args.config, args.overrides)
    if args.shards is not None:
        config.data.shards = args.shards
    out = args.out or str(Path("runs") / Path(args.config).stem)
    result = pretrain(config, out, resume=args.resume)
    ev = result.get("last_eval") or {}
    lines = [
        f"pretrained {config.model.arch} ({result['params']['total']:,} parameters): "
        f"{result['steps']} steps, {result['tokens_seen']:,} tokens",
    ]
    if ev:
        lines.append(f"  validation perplexity {ev['val_ppl']:.3f} on {ev['val_targets']:,} targets")
    lines.append(f"  model       {result['model']}  (transformers.AutoModel*.from_pretrained)")
    lines.append(f"  metrics     {Path(out) / 'metrics.jsonl'}")
    if int(os.environ.get("RANK", "0")) == 0:
        emit(args, result, "\n".join(lines))
    return 0


def cmd_embed(args) -> int:
    apply_threads(args)
    from protlm.embed.pipeline import embed_distributed, parse_shard
    from protlm.embed.spec import EmbedOptions

    options = EmbedOptions(layer=args.layer, device=args.device, dtype=args.dtype, int8=args.int8,
                           tokens_per_batch=args.tokens_per_batch, max_sequences=args.max_sequences,
                           alone_above=args.alone_above, long_policy=args.long_policy,
                           window_overlap=args.window_overlap, cpu_fallback=not args.no_cpu_fallback,
                           pooling=args.pooling)
    bar = progress_bar(None, "embed", unit="res")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = embed_distributed(args.model, args.input, args.out, options=options, level=args.level,
                                   key=args.key, resume=args.resume, shard=parse_shard(args.shard),
                                   half=args.float16, compress=args.compress, progress=progress)
    finally:
        bar.close()
    if result is None:  # a torchrun rank other than 0
        return 0
    lines = [
        f"embedded {result['proteins']:,} proteins ({result['residues']:,} residues) with {result['model']} "
        f"[{result['family']}, D={result['dim']}] in {result['seconds']:.1f} s "
        f"({result['residues_per_s']:,.0f} residues/s)",
    ]
    if result["already_done"]:
        lines.append(f"  resumed: {result['already_done']:,} already in the output")
    if result.get("duplicate_sequences_shared"):
        lines.append(f"  identical sequences sharing one hash key: {result['duplicate_sequences_shared']:,}")
    lines.append(f"  windowed (over the model's position limit): {result['windowed']}   "
                 f"OOM splits: {result['oom_splits']}   CPU fallbacks: {result['cpu_fallbacks']}   "
                 f"skipped: {result['skipped']}")
    for s in result["skipped_detail"][:20]:
        lines.append(f"  skipped {s['id']} ({s['length']} residues): {s['reason']}")
    for level, path in result["outputs"].items():
        lines.append(f"  {level:8s} {path}  ({result['datasets'][level]:,} datasets)")
    emit(args, result, "\n".join(lines))
    return 1 if result["skipped"] else 0


def cmd_merge(args) -> int:
    from protlm.embed.store import merge_files
    from protlm.errors import InputError
    from protlm.io.outputs import check_output_file, output_lock

    for p in args.inputs:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file (an HDF5 file written by protlm embed)")
    check_output_file(args.output, overwrite=args.overwrite, inputs=args.inputs)
    with output_lock(args.output, "the merge output"):
        n = merge_files(Path(args.output), [Path(p) for p in args.inputs])
    emit(args, {"output": args.output, "datasets": n}, f"merged {len(args.inputs)} files → {args.output} ({n:,} datasets)")
    return 0


# --------------------------------------------------------------------------- parser

#: Modules that add their own subcommands (``register(subparsers)``); they import heavy
#: libraries only inside their command functions, so ``protlm --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = ("protlm.cli.kmer", "protlm.cli.project", "protlm.cli.tasks", "protlm.cli.contacts",
                                    "protlm.cli.importer", "protlm.cli.export", "protlm.cli.serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protlm",
        description="Protein language models: prepare data, pretrain, embed, train heads on embeddings, benchmark, project, predict contacts.",
    )
    parser.add_argument("--version", action="version", version=f"protlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    J, T, D, O = json_parent(), threads_parent(), data_parent(), overwrite_parent()
    p = sub.add_parser("demo", help="the main job on real sequences (offline)", parents=[J, T],
                       description="The papers' story at small scale, offline on a CPU: statistics and "
                                   "pretraining shards of a real proteome (shipped with pyhmmer; with --data the "
                                   "Swiss-Prot sample), a tiny LM pretrained for a few steps, embeddings with the "
                                   "committed checkpoint, t-SNE/UMAP maps with silhouettes, and with --data "
                                   "secondary-structure and localization heads vs one-hot with a results table.")
    p.add_argument("--data", metavar="DIR", help="protlm benchmark data folder (e.g. ../shared/data): adds the "
                                                  "benchmark sets, SCOP colours and the supervised heads")
    add_out(p, default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--workers", type=int, default=1, help="processes for prepare")
    p.add_argument("--pretrain-steps", type=int, default=40, help="steps of the tiny LM (default 40)")
    p.add_argument("--max-proteins", type=int, default=1000,
                   help="proteins embedded and projected (seeded sample; default 1000)")
    p.add_argument("--max-train", type=int, default=2000,
                   help="with --data: training proteins per head (seeded sample; default 2000)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("inspect", help="validate a FASTA file and print its statistics", parents=[J],
                       description="Read a FASTA(.gz) file with protlm's cleaning policy and "
                                   "report counts, lengths and composition.")
    p.add_argument("fasta", help="FASTA or gzipped FASTA file")
    _add_cleaning(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("prepare", help="FASTA(.gz) → tokenised pretraining shards", parents=[J],
                       description="Clean, split (by id hash), filter and tokenise a FASTA file "
                                   "into uint8 token shards with a manifest.json. Resumable: "
                                   "finished chunks are skipped when rerun.")
    p.add_argument("input", nargs="?", help="FASTA or gzipped FASTA file")
    add_out(p, required=True, help="output folder")
    p.add_argument("--verify", action="store_true",
                   help="check the prepared --out folder (file sizes and content hashes against manifest.json) "
                        "instead of preparing")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--shard", metavar="i/N",
                   help="process only chunks with index %% N == i (then run prepare-merge)")
    p.add_argument("--valid-fraction", type=float, default=0.01,
                   help="fraction of ids (by hash) in the validation split (default 0.01)")
    p.add_argument("--split-salt", default="protlm", help="salt of the id hash (default protlm)")
    p.add_argument("--min-length", type=int, default=1, help="drop shorter sequences")
    p.add_argument("--max-length", type=int, default=None,
                   help="drop longer sequences (default: keep all; trainers crop)")
    p.add_argument("--exclude", action="append", metavar="FILE",
                   help="ids or sequences to remove before the split (FASTA, or one per line); "
                        "repeatable")
    p.add_argument("--dedup", action="store_true",
                   help="remove exact duplicate sequences (the first occurrence is kept)")
    p.add_argument("--chunk-mb", type=float, default=32.0,
                   help="MB of FASTA text per output chunk (default 32)")
    _add_cleaning(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("prepare-merge", help="join the parts of a sharded prepare run", parents=[J],
                       description="After `protlm prepare ... --shard i/N` for every i, check "
                                   "that all chunks are done and write manifest.json.")
    p.add_argument("out", help="the --out folder the parts wrote into")
    p.add_argument("--dedup", action="store_true", help="remove exact duplicate sequences")
    p.add_argument("--rename-duplicates", action="store_true", help="rename repeated ids")
    p.set_defaults(func=cmd_prepare_merge)

    p = sub.add_parser("pretrain", help="pretrain a protein LM from prepared shards", parents=[J, T],
                       description="Train a BERT/ALBERT/ESM-style/causal/T5/XLNet/Transformer-XL protein LM from "
                                   "`protlm prepare` shards. Single process, or several under "
                                   "torchrun (DDP/FSDP). Writes Hugging Face checkpoints, "
                                   "metrics.jsonl, and OUT/model at the end. Ctrl-C saves a "
                                   "checkpoint; --resume continues it exactly.",
                       epilog="overrides: dotted keys of the config, e.g. model.preset=small "
                              "train.phases.0.steps=200 optimizer.name=lamb")
    p.add_argument("--config", required=True, help="YAML recipe (see configs/pretrain/)")
    add_out(p, help="output folder (default: runs/<config name>)")
    p.add_argument("--shards", help="prepared shards folder from protlm prepare (overrides data.shards)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("embed", help="embed proteins with a protein LM into HDF5", parents=[J, T],
                       description="Per-residue and/or per-protein embeddings of every protein in a "
                                   "FASTA file, with any protein LM in Hugging Face format (ESM-2, "
                                   "ProtBert, ProtT5 encoder, ALBERT, XLNet, protlm's own). Output: "
                                   "HDF5, one dataset per protein keyed by id (or sequence hash). "
                                   "Resumable (--resume); under torchrun each process takes a shard.")
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder or hub id, a baseline (onehot, blosum62, kmer: the committed "
                        "3-mer model) or a folder written by protlm kmer-train, or any registered family "
                        "(docs/embedding.md lists them)")
    p.add_argument("--input", required=True, help="FASTA or gzipped FASTA")
    add_out(p, required=True, help="HDF5 file to write")
    p.add_argument("--level", choices=["residue", "protein", "both"], default="residue",
                   help="per-residue (L×D), per-protein (mean over residues, D), or both "
                        "(per-protein then goes to OUT.per_protein.h5); default residue")
    p.add_argument("--layer", type=int, default=-1, help="hidden state to export: -1 last (default), 0 embeddings")
    p.add_argument("--key", choices=["id", "hash"], default="id",
                   help="dataset names: FASTA id ('/'→'_'), or biotrainer's SHA-256 sequence hash")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="model precision: bf16 (GPUs; CPUs with avx512_bf16/amx_bf16), fp16 (GPUs), auto (the fastest "
                        "accurate one here)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of linear layers (CPU)")
    p.add_argument("--float16", action="store_true", help="store embeddings as float16 (half the disk)")
    p.add_argument("--compress", action="store_true",
                   help="gzip-compressed HDF5 datasets, as biotrainer writes them (smaller, slower to write)")
    p.add_argument("--tokens-per-batch", type=int, default=None,
                   help="padded tokens per batch (default: the model family's, 4000 for transformers)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="proteins per batch (default: the model family's, 100 for transformers)")
    p.add_argument("--pooling", default="mean",
                   help="per-protein vector (--level protein): mean over residues (default), or a family's own "
                        "(unirep: h_avg, h_final, c_final, fusion)")
    p.add_argument("--alone-above", type=int, default=None,
                   help="proteins longer than this many residues are embedded one at a time (default: the "
                        "family's; 1000 for transformers, none for profiles and baselines)")
    p.add_argument("--long-policy", choices=["window", "error"], default="window",
                   help="proteins over a model's hard position limit: overlapping windows (default) or an error")
    p.add_argument("--window-overlap", type=int, default=128, help="residues shared by neighbouring windows")
    p.add_argument("--no-cpu-fallback", action="store_true",
                   help="skip (and count) a protein that does not fit the GPU instead of using the CPU")
    p.add_argument("--resume", action="store_true", help="keep what the output already holds; embed the rest")
    p.add_argument("--shard", metavar="i/N", help="embed only proteins i, i+N, i+2N, … (then `protlm merge`)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("merge", help="join HDF5 embedding files (e.g. the parts of --shard runs)", parents=[J, O],
                       description="Copy every dataset of the inputs into one HDF5 file; a key present "
                                   "in two inputs must hold identical arrays.")
    p.add_argument("output", help="the merged HDF5 file")
    p.add_argument("inputs", nargs="+", help="HDF5 files written by protlm embed")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("datasets", help="load and summarise the benchmark data sets", parents=[J, D],
                       description="Load benchmark sets from the protlm data folder and print "
                                   "their counts, splits and label distributions.")
    p.add_argument("names", nargs="*", help="data sets (default: all)")
    p.set_defaults(func=cmd_datasets)

    # Commands that live in their own modules: each has register(subparsers).
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


#: How each command continues after Ctrl-C (what the interrupted message tells the user).
RESUME_WITH_FLAG = ("embed", "pretrain")  # they refuse an existing output without --resume
RESUME_BY_RERUN = ("prepare", "prepare-merge", "benchmark", "demo")  # finished parts are reused


def _resume_hint(args) -> str:
    command = getattr(args, "command", None)
    if command in RESUME_WITH_FLAG or (command == "predict" and getattr(args, "head", None) is None):
        return "finished work is kept; rerun the same command with --resume to continue"
    if command in RESUME_BY_RERUN or (command == "contacts" and getattr(args, "contacts_command", "") == "benchmark"):
        return "finished work is kept; rerun the same command to continue (finished parts are reused)"
    return "every output is written atomically, so no partial file was left; rerun the command"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="protlm: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    previous = _handle_sigterm()
    try:
        return args.func(args)
    except ProtlmError as exc:
        from protlm.data.fasta import DuplicateIdError

        hint = ""
        if isinstance(exc, DuplicateIdError):  # only commands that take the flag suggest it
            hint = ("; use --rename-duplicates to keep both (as ID_2, ID_3, …)" if hasattr(args, "rename_duplicates")
                    else " (rename them in the file)")
        print(f"protlm: error: {exc}{hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"protlm: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; {_resume_hint(args)}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # disk full, permissions on output, ...: the user's environment, exit 2
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"protlm: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum, frame):
    raise Terminated()


def _handle_sigterm():
    """Install the SIGTERM handler for the command's duration (the previous one is returned and put
    back after it; None off the main thread, where Python cannot install one)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
