"""``protlm train``, ``evaluate``, ``predict`` and ``benchmark``: heads on embeddings, every protocol.

Each command reads its arguments and makes one call into :mod:`protlm.tasks`; what a protocol
needs (its sets, its prediction files) is decided there, never here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from protlm.errors import ConfigError, InputError

DEFAULT_DATA = os.environ.get("PROTLM_DATA", "../shared/data")
DEFAULT_CACHE = os.environ.get("PROTLM_CACHE", "runs/cache")


def _emit(args, result: dict, summary: str) -> None:
    from protlm.cli.common import emit

    emit(args, result, summary)


def _threads(args) -> None:
    from protlm.cli.common import apply_threads

    apply_threads(args)


def _data_dir(args) -> str | None:
    return args.data if args.data and Path(args.data).is_dir() else None


def _progress():
    from tqdm import tqdm

    bars: dict[str, object] = {}

    def cb(kind: str, info: dict) -> None:
        if kind == "embed":
            bar = bars.get(info["set"])
            if bar is None:
                bar = bars[info["set"]] = tqdm(total=info["total"], desc=f"embed {info['set']}", unit="res",
                                               unit_scale=True, disable=None, file=sys.stderr, leave=False)
            bar.n = info["done"]
            bar.refresh()
        elif kind == "epoch":
            what = info.get("key", "valid_loss").replace("_", " ")  # the protocol's early-stopping value
            print(f"  epoch {info['epoch']:3d}  train loss {info['train_loss']:.4f}  {what} {info['valid_loss']:.4f}",
                  file=sys.stderr)
        elif kind == "task":
            print(f"{info['task']} with {info['embedder']}", file=sys.stderr)

    def close():
        for bar in bars.values():
            bar.close()

    return cb, close


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    _threads(args)
    from protlm.io.outputs import check_output_dir
    from protlm.tasks.config import load_task_config
    from protlm.tasks.train import train

    config = load_task_config(args.config, args.overrides)
    if args.embedder:
        config.embedder = args.embedder
    out = Path(args.out or Path("runs/heads") / config.name)
    # before any embedding or training: an existing head needs --overwrite, the folder must be writable
    check_output_dir(out, overwrite=args.overwrite, marker="head.json")
    cb, close = _progress()
    try:
        res = train(config, out, _data_dir(args), None if args.no_cache else args.cache, cb)
    finally:
        close()
    lines = [f"trained {config.head.type} head for {config.name} ({config.protocol}) on {config.embedder_name}: "
             + ", ".join(f"{v:,} {k}" for k, v in res["proteins"].items())
             + f"; best epoch {res['best_epoch']} of {res['epochs_run']} (cap {res['epoch_cap']}), "
               f"{res['seconds']:.1f} s"]
    if res.get("cut_short"):
        lines.append("  warning: cut short by the epoch cap (best epoch = last epoch): probably under-trained; "
                     "raise train.epochs")
    lines += config.protocol_obj.summary_lines({"valid": res["valid"],
                                                **{f"test:{k}": v for k, v in res["test"].items()}})
    lines.append(f"  head        {out}")
    _emit(args, res, "\n".join(lines))
    return 0


def _check_bootstrap(args) -> None:
    if args.bootstrap is not None and args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0 (0: no confidence intervals), not {args.bootstrap}")


def _check_metrics_output(args) -> None:
    if args.output:
        from protlm.io.outputs import check_output_file

        check_output_file(args.output, overwrite=args.overwrite, create_parent=True,
                          inputs=[args.file, Path(args.head) / "head.json", Path(args.head) / "head.safetensors"])


def evaluation_request(args) -> dict:
    """What `protlm evaluate` asks the head's protocol for (it picks what applies)."""
    return {k: getattr(args, k, None) for k in ("benchmark", "file", "format", "label", "kind", "split",
                                                 "max_chains", "include_early_stop", "max_length")}


def cmd_evaluate(args) -> int:
    _threads(args)
    _check_bootstrap(args)
    _check_metrics_output(args)
    from protlm.io.atomic import json_bytes, write_bytes
    from protlm.tasks.train import evaluate, load_head

    head = load_head(args.head)
    sets = head.protocol.evaluation_sets(head, evaluation_request(args), _data_dir(args))
    res = evaluate(head, sets, args.embedder, None if args.no_cache else args.cache, args.bootstrap)
    doc = {"head": str(args.head), "task": head.config.name, "protocol": head.config.protocol,
           "embedder": args.embedder or head.config.embedder_name, "sets": res}
    if args.output:
        write_bytes(Path(args.output), json_bytes(doc))
    lines = [f"{head.config.name}: {head.config.head.type} head on {doc['embedder']}"]
    lines += head.protocol.summary_lines(res)
    if args.output:
        lines.append(f"  metrics     {args.output}")
    _emit(args, doc, "\n".join(lines))
    return 0


def cmd_predict(args) -> int:
    _threads(args)
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.fasta import read_fasta
    from protlm.tasks.train import load_head, predict_file

    head = load_head(args.head)
    head.protocol.check_output(args.output, overwrite=args.overwrite, inputs=[args.input, args.head])
    if not Path(args.input).is_file():
        raise InputError(f"--input {args.input}: no such file (a FASTA file is expected)")
    records = list(read_fasta(args.input, CleaningPolicy(rare="keep")))  # as written: the HDF5 hash key
    if not records:
        raise InputError(f"{args.input}: no records")
    options = {k: getattr(args, k) for k in ("truth", "no_pictures", "max_residues") if hasattr(args, k)}
    options["head"] = str(args.head)
    result = predict_file(head, [r.id for r in records], [r.sequence for r in records], args.output, options,
                          args.embedder, None if args.no_cache else args.cache)
    _emit(args, result, result.pop("summary", f"predicted {len(records):,} proteins with {args.head} → {args.output}"))
    return 1 if result.get("skipped") else 0


def cmd_export_fasta(args) -> int:
    from protlm.io.atomic import write_bytes
    from protlm.io.outputs import check_output_file
    from protlm.tasks.config import load_task_config

    config = load_task_config(args.config, args.overrides)
    check_output_file(args.out, overwrite=args.overwrite, inputs=[args.config], option="--out", create_parent=True)
    proteins = config.protocol_obj.proteins(config, _data_dir(args), args.split)
    text = "".join(f">{pid} set={name}\n{seq}\n" for pid, seq, name in proteins)
    write_bytes(Path(args.out), text.encode())
    counts: dict[str, int] = {}
    for _, _, name in proteins:
        counts[name] = counts.get(name, 0) + 1
    _emit(args, {"out": str(args.out), "proteins": len(proteins), "sets": counts},
          f"wrote {len(proteins):,} proteins of {config.name} ({', '.join(f'{k} {v:,}' for k, v in counts.items())}) "
          f"→ {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    _threads(args)
    from protlm.tasks.suite import run_suite

    cb, close = _progress()
    try:
        res = run_suite(args.suite, args.embedder or [], args.out, _data_dir(args), tasks=args.tasks,
                        extra_tests=args.extra_test or [], overrides=args.overrides,
                        cache_dir=None if args.no_cache else args.cache, progress=cb, compare=args.compare)
    finally:
        close()
    summary = res["table"] + f"\nresults: {Path(res['out']) / 'results.md'} and results.json"
    _emit(args, {"out": res["out"], "results": res["results"]}, summary)
    return 0


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument("--data", default=DEFAULT_DATA,
                       help="benchmark data folder for benchmark: sources (default: $PROTLM_DATA or ../shared/data)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="embedding cache folder (default: $PROTLM_CACHE or runs/cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often "
                                                "fastest for these small heads on a busy machine)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a head on embeddings (task config)",
                       description="Train the head a task config describes (protocol, data, targets, embedder, "
                                   "head, training) with early stopping on the validation split; score it on the "
                                   "test sets; write OUT/head.json, head.safetensors and metrics.json.",
                       epilog="overrides: dotted keys of the config, e.g. train.epochs=10 head.type=logreg")
    p.add_argument("--config", required=True, help="task config YAML (see configs/benchmarks/)")
    p.add_argument("--out", help="head folder (default: runs/heads/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace a head already in --out")
    p.add_argument("--embedder", help="override the config's embedder (LM folder, onehot, blosum62, kmer, or .h5)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained head on a labelled set",
                       description="Metrics with bootstrap 95%% CIs of a trained head on a labelled set: a "
                                   "benchmark name, a file, or (default) the test sets of the head's config.")
    p.add_argument("--head", required=True, help="folder written by protlm train")
    p.add_argument("--benchmark", help="a set of `protlm datasets` (with --data)")
    p.add_argument("--file", help="a labelled file of your own")
    p.add_argument("--format", choices=["biotrainer", "deeploc", "prottrans_csv", "csv"], help="format of --file")
    p.add_argument("--label", default="target", help="csv: the label name the head was trained on (default target)")
    p.add_argument("--kind", choices=["float", "int", "str"], default="str", help="csv: label type")
    p.add_argument("--split", help="keep only records of this split (train, valid, test)")
    p.add_argument("--embedder", help="embed with this instead of the head's embedder (same dimension)")
    p.add_argument("--bootstrap", type=int,
                   help="bootstrap resamples (default: the head's config; 0: no confidence intervals)")
    p.add_argument("--output", help="write the metrics JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict with a trained head on a FASTA file",
                       description="Per-residue state strings (with confidences) or per-protein labels with "
                                   "probabilities, or values, for every protein of a FASTA file; CSV or JSON.")
    p.add_argument("--head", required=True, help="folder written by protlm train")
    p.add_argument("--input", required=True, help="FASTA or gzipped FASTA")
    p.add_argument("--output", required=True,
                   help="predictions: .csv or .json (a contact head: a folder for one npz + png per protein)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--embedder", help="embed with this instead of the head's embedder (same dimension)")
    _common(p, data=False)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export-fasta", help="write the proteins a task config uses as FASTA",
                       description="Write the proteins of a task config — after max_train, the splits and dropping "
                                   "records without labels — as FASTA (>id set=NAME, one line per sequence, as "
                                   "written: B/O/U/Z kept), to embed them with another tool. An HDF5 file made from "
                                   "it (keyed by id, or by the sequence hash) is then a valid embedder: for the task.")
    p.add_argument("--config", required=True, help="task config YAML")
    p.add_argument("--split", default="all", choices=["train", "valid", "test", "all"],
                   help="which proteins (default all; a protein in several sets is written once)")
    p.add_argument("--out", required=True, help="FASTA file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. train.max_train=2000)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="benchmark data folder for benchmark: sources (default: $PROTLM_DATA or ../shared/data)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=cmd_export_fasta)

    p = sub.add_parser("benchmark", help="run a suite of task configs with several embedders; results table",
                       description="Train and score one head per (task config, embedder); write OUT/results.md "
                                   "and results.json (headline metric with bootstrap 95%% CI per test set). "
                                   "Finished pairs are reused when rerun.")
    p.add_argument("--suite", default="configs/benchmarks", help="folder of task configs, or one config")
    p.add_argument("--tasks", nargs="+", help="only these configs (file stems)")
    p.add_argument("--embedder", action="append", help="embedder to compare (repeatable); default: each config's own")
    p.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    p.add_argument("--extra-test", action="append", metavar="TASK:NAME=PATH:FORMAT",
                   help="score an extra labelled test file (repeatable)")
    p.add_argument("--compare", action="append", metavar="A:B",
                   help="paired difference A − B of the headline metric on the same test proteins, with a paired "
                        "bootstrap CI (A, B: two --embedder values; repeatable)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every config")
    _common(p)
    p.set_defaults(func=cmd_benchmark)
