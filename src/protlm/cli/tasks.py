"""``protlm train``, ``evaluate``, ``predict`` and ``benchmark``: heads on embeddings, every protocol.

Each command reads its arguments and makes one call into :mod:`protlm.tasks`; what a protocol
needs (its sets, its prediction files) is decided there, never here."""

from __future__ import annotations

import sys
from pathlib import Path

from protlm.cli.common import (_duration, add_bootstrap, add_chain_selection, add_out, add_tasks, apply_threads, cache_dir,
                               cache_parent, data_dir, data_parent, emit, json_parent, overwrite_parent, progress_bar, threads_parent, safe_folder_name)
from protlm.io.resources import suite_path


FINETUNE_METHODS = ("none", "full", "lora", "top")
  # protlm.tasks.finetune.METHODS, without importing torch here


def _progress():
    """Embedding progress (a bar on a terminal, log lines with rate and time left otherwise), epochs."""
    bars: dict[str, object] = {}

    def cb(kind: str, info: dict) -> None:
        if kind == "embed":
            bar = bars.get(info["set"])
            if bar is not None and bar.total != info["total"]:  # another set under the same name: a new bar
                bar.close()
                bar = None
            if bar is None:
                bar = bars[info["set"]] = progress_bar(info["total"], f"embed {info['set']}", unit="res",
                                                       summary=True)
            bar.n = info["done"]
            bar.refresh()
            if info["done"] >= info["total"]:  # the set is embedded: its rate and time end here
                bar.close()
                bars.pop(info["set"], None)
        elif kind == "train":  # inside a fine-tuning epoch: proteins done, with rate and time left
            key = f"epoch {info['epoch']}"
            bar = bars.get(key)
            if bar is None:
                bar = bars[key] = progress_bar(info["total"], f"fine-tune epoch {info['epoch']}", unit="prot")
            bar.n = info["done"]
            bar.refresh()
            if info["done"] >= info["total"]:
                bar.close()
                bars.pop(key, None)
        elif kind == "epoch":
            what = info.get("key", "valid_loss").replace("_", " ")  # the protocol's early-stopping value
            line = f"  epoch {info['epoch']:3d}  train loss {info['train_loss']:.4f}  {what} {info['valid_loss']:.4f}"
            if info.get("seconds") is not None:  # time per epoch; at least / at most what is left
                per_epoch = info["elapsed"] / max(info["epoch"], 1)  # elapsed covers every epoch, resumed ones too
                left = (info["cap"] - info["epoch"]) * per_epoch
                line += f"  ({_duration(info['seconds'])}"
                if info.get("patience") is not None and info["epoch"] < info["cap"]:
                    # early stopping ends the run after `patience` epochs without a better value: the
                    # fewest epochs left; the cap: the most
                    fewest = min(info["patience"] - info["waited"], info["cap"] - info["epoch"])
                    line += (f"; best epoch {info['best_epoch']}, {info['waited']}/{info['patience']} without a "
                             f"better value; {_duration(fewest * per_epoch)} to {_duration(left)} left")
                elif left > 0:
                    line += f"; at most {_duration(left)} left, to epoch {info['cap']}"
                line += ")"
            print(line, file=sys.stderr)
        elif kind == "task":  # a new (task, embedder): its sets get bars of their own (counts and rates)
            close()
            print(f"{info['task']} with {info['embedder']}", file=sys.stderr)
        elif kind == "rescore":  # a finished head scored on a test set it has not seen yet
            close()
            print(f"{info['task']} with {info['embedder']}: test set {info['set']} ({info['proteins']:,} proteins) "
                  f"scored with the saved head, no retraining", file=sys.stderr)

    def close():
        for bar in bars.values():
            bar.close()
        bars.clear()

    return cb, close


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    apply_threads(args)
    from protlm.tasks.commands import train_command
    from protlm.tasks.build import load_task_config

    config = load_task_config(args.config, args.overrides, embedder=args.embedder or None)
    if args.finetune:
        from protlm.tasks.build import with_finetune

        config = with_finetune(config, args.finetune)
    out = Path(args.out or Path("runs/heads") / safe_folder_name(config.name))
    args.out = str(out)  # what an interruption's message points at
    cb, close = _progress()
    try:
        res = train_command(config, out, overwrite=args.overwrite, data_dir=data_dir(args), cache_dir=cache_dir(args),
                            progress=cb, resume=args.resume or args.finish, finish=args.finish)
    finally:
        close()
    if "rank" in res:  # a torchrun process other than 0: process 0 reports
        return 0
    lines = [f"trained {config.head.type} head for {config.name} ({config.protocol}) on {config.embedder_name}: "
             + ", ".join(f"{v:,} {k}" for k, v in res["proteins"].items())
             + f"; best epoch {res['best_epoch']} of {res['epochs_run']} (cap {res['epoch_cap']}), "
               f"{res['seconds']:.1f} s"]
    if res.get("finetune"):
        f = res["finetune"]
        lines.append(f"  fine-tuned  {f['method']}: {f['lm_trained_parameters']:,} of {f['lm_parameters']:,} LM "
                     f"parameters trained; the LM is in {out / f['lm']}")
    if res.get("cut_short"):
        lines.append("  warning: cut short by the epoch cap (best epoch = last epoch): probably under-trained; "
                     "raise train.epochs")
    lines += config.protocol_obj.summary_lines({"valid": res["valid"],
                                                **{f"test:{k}": v for k, v in res["test"].items()}})
    lines.append(f"  head        {out}")
    emit(args, res, "\n".join(lines))
    return 0


def evaluation_request(args) -> dict:
    """What `protlm evaluate` asks the head's protocol for (it picks what applies)."""
    return {k: getattr(args, k, None) for k in ("benchmark", "file", "format", "label", "kind", "seq_column",
                                                 "label_column", "id_column", "split",
                                                 "max_chains", "include_early_stop", "max_length",
                                                 "full_sequences")}


def cmd_evaluate(args) -> int:
    apply_threads(args)
    from protlm.tasks.commands import evaluate_command

    head, doc = evaluate_command(args.head, evaluation_request(args), data_dir=data_dir(args), embedder=args.embedder,
                                 cache_dir=cache_dir(args), n_boot=args.bootstrap, out=args.out,
                                 overwrite=args.overwrite)
    lines = [f"{head.config.name}: {head.config.head.type} head on {doc['embedder']}"]
    lines += head.protocol.summary_lines(doc["sets"])
    if args.out:
        lines.append(f"  metrics     {args.out}")
    emit(args, doc, "\n".join(lines))
    return 0


def cmd_compare(args) -> int:
    apply_threads(args)
    from protlm.errors import ConfigError
    from protlm.tasks.compare import compare_command, compare_table

    if len(args.head) != 2:
        raise ConfigError(f"--head: give exactly two heads (A and B), not {len(args.head)}")
    result = compare_command(args.head[0], args.head[1], evaluation_request(args), data_dir=data_dir(args),
                             cache_dir=cache_dir(args), n_boot=args.bootstrap, out=args.out,
                             per_protein=args.per_protein, overwrite=args.overwrite)
    summary = compare_table(result)
    if args.per_protein:
        summary += f"per protein: {args.per_protein} ({len(result['proteins']):,} rows)\n"
    emit(args, {k: v for k, v in result.items() if k != "proteins"}, summary.rstrip("\n"))
    return 0


def cmd_predict(args) -> int:
    apply_threads(args)
    if args.head is None:  # the shipped predictors into a folder (protlm.predictors.job)
        return _predict_shipped(args)
    if args.tasks or args.resume:
        from protlm.errors import ConfigError

        raise ConfigError(f"{'--tasks' if args.tasks else '--resume'} is for the shipped predictors (no --head); "
                          f"--head DIR predicts with that one head")
    from protlm.tasks.commands import predict_command

    result = predict_command(args.head, args.input, args.out, overwrite=args.overwrite, embedder=args.embedder,
                             cache_dir=cache_dir(args))
    emit(args, result, result.pop("summary"))
    return 1 if result.get("skipped") else 0


def _predict_shipped(args) -> int:
    from protlm.errors import ConfigError

    if args.embedder:
        raise ConfigError("--embedder goes with --head: the shipped predictors embed with the model they were "
                          "trained on (their model cards name it)")
    from protlm.predictors.job import predict_folder

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "predict", unit="res", summary=True)
        bar.n = done
        bar.refresh()

    try:
        result = predict_folder(args.input, args.out, args.tasks, overwrite=args.overwrite, resume=args.resume,
                                cache_dir=cache_dir(args), progress=progress)
    finally:
        if bar is not None:
            bar.close()
    emit(args, result, result.pop("summary"))
    return 0


def cmd_export_fasta(args) -> int:
    from protlm.tasks.commands import export_fasta
    from protlm.tasks.build import load_task_config

    config = load_task_config(args.config, args.overrides)
    res = export_fasta(config, args.out, overwrite=args.overwrite, data_dir=data_dir(args), split=args.split,
                       inputs=[args.config])
    emit(args, res, f"wrote {res['proteins']:,} proteins of {config.name} "
                    f"({', '.join(f'{k} {v:,}' for k, v in res['sets'].items())}) → {args.out}")
    return 0


def cmd_finetune_merge(args) -> int:
    from protlm.io.outputs import check_output_dir
    from protlm.tasks.finetune import merge_adapter

    check_output_dir(args.out, overwrite=args.overwrite, inputs=[args.adapter])
    res = merge_adapter(args.adapter, args.out)  # refuses an --out that is, lies in or holds what it reads
    emit(args, res, f"merged the LoRA adapter {res['adapter']} into {res['base']} → {res['out']} (a standalone model "
                    f"folder: --model {res['out']}, or transformers' from_pretrained)")
    return 0


def cmd_benchmark(args) -> int:
    apply_threads(args)
    from protlm.tasks.suite import run_suite

    cb, close = _progress()
    try:
        res = run_suite(args.suite, args.embedder or [], args.out, data_dir(args), tasks=args.tasks,
                        extra_tests=args.extra_test or [], overrides=args.overrides,
                        cache_dir=cache_dir(args), progress=cb, compare=args.compare, finetune=args.finetune,
                        finish=args.finish)
    finally:
        close()
    summary = res["table"] + f"\nresults: {Path(res['out']) / 'results.md'} and results.json"
    emit(args, {"out": res["out"], "results": res["results"]}, summary)
    return 0


# --------------------------------------------------------------------------- parser


def _add_labelled_set(p) -> None:
    """The set a head is scored on (``protlm evaluate`` and ``protlm compare``: evaluation_request)."""
    p.add_argument("--benchmark", help="a set of `protlm datasets` (with --data)")
    p.add_argument("--file", help="a labelled file of your own (contact heads: a structure set, npz)")
    p.add_argument("--format", metavar="FMT", help="format of --file: biotrainer, deeploc, prottrans_csv, csv, or a "
                                                   "plug-in's (protlm.tasks.formats)")
    p.add_argument("--label-column", metavar="COL", help="csv: the label column (default: label or target)")
    p.add_argument("--seq-column", metavar="COL", help="csv: the sequence column (default: seq or sequence)")
    p.add_argument("--id-column", metavar="COL", help="csv: a column of protein ids (default: FILE_row<i>)")
    p.add_argument("--kind", choices=["float", "int", "str"],
                   help="csv: label type (default: float for a *_to_value head, else str)")
    p.add_argument("--label", help="csv: the label name the head was trained on (default: the head's, when it has "
                                   "one target)")
    p.add_argument("--split", help="keep only records of this split (train, valid, test)")
    add_chain_selection(p.add_argument_group("contact heads (residue_pairs_to_class; docs/contacts.md)"))


def register(sub) -> None:
    J, T, D, O, C = json_parent(), threads_parent(), data_parent(), overwrite_parent(), cache_parent()

    p = sub.add_parser("train", parents=[J, T, D, O, C], help="train a head on embeddings (task config)",
                       description="Train the head a task config describes (protocol, data, targets, embedder, "
                                   "head, training) with early stopping on the validation split; score it on the "
                                   "test sets; write OUT/head.json, head.safetensors and metrics.json.",
                       epilog="overrides: dotted keys of the config, e.g. train.epochs=10 head.type=logreg")
    p.add_argument("--config", required=True, help="task config YAML (see configs/benchmarks/)")
    add_out(p, help="head folder (default: runs/heads/<name>)")
    p.add_argument("--embedder", help="override the config's embedder (LM folder, onehot, blosum62, kmer, or .h5)")
    p.add_argument("--finetune", choices=FINETUNE_METHODS, metavar="METHOD",
                   help="train the LM with the head: none (frozen, the default), full, lora or top (the last "
                        "finetune.top_layers layers); the other settings are finetune.* keys (docs/finetuning.md)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out exactly where its last checkpoint left it (the same "
                        "weights as an uninterrupted run): fine-tuning, or a head on frozen features whose epochs are "
                        "long enough to checkpoint (train.checkpoint_seconds)")
    p.add_argument("--finish", action="store_true",
                   help="end an interrupted run in --out at its last checkpointed epoch: its best epoch is "
                        "kept, scored and saved, with no more training (implies --resume)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[J, T, D, O, C], help="score a trained head on a labelled set",
                       description="Metrics with bootstrap 95% CIs of a trained head on a labelled set: a "
                                   "benchmark name, a file, or (default) the test sets of the head's config.")
    p.add_argument("--head", required=True, help="folder written by protlm train")
    _add_labelled_set(p)
    p.add_argument("--embedder", help="embed with this instead of the head's embedder (same dimension)")
    add_bootstrap(p, help="bootstrap resamples (default: the head's config; 0: no confidence intervals)")
    add_out(p, help="write the metrics JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", parents=[J, T, D, O, C], help="two heads on the same proteins: paired difference",
                       description="The headline metric of head A minus head B on the same proteins, with a paired "
                                   "bootstrap 95% CI over proteins (the same resamples for both), per set and "
                                   "target; --per-protein writes each protein's values for both. Any two heads of "
                                   "one protocol (contact heads too) on the heads' own test sets, a benchmark set, "
                                   "or a file of your own.")
    p.add_argument("--head", action="append", required=True, metavar="DIR",
                   help="head folder; give it twice: A, then B")
    _add_labelled_set(p)
    add_bootstrap(p, default=1000, help="bootstrap resamples of the paired CI (default 1000)")
    add_out(p, help="write the differences as JSON here")
    p.add_argument("--per-protein", metavar="CSV", help="write one row per protein with both heads' values")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", parents=[J, T, O, C], help="predict with the shipped predictors, or a trained "
                                                              "head, on a FASTA file",
                       description="Without --head: the predictors shipped with protlm (secondary structure, "
                                   "localization, stability, SCOP class on UniRep-64, some also on UniRep-256 or -1900; "
                                   "docs/predictors.md), the UniRep-64 ones or those of --tasks, into "
                                   "the folder --out: predictions.csv, predictions.json, index.html and one HTML "
                                   "report per protein. With --head DIR: that head's per-residue state strings "
                                   "(with confidences) or per-protein labels with probabilities, or values, for "
                                   "every protein; --out is a CSV or JSON file.",
                       epilog="A shipped predictor is a task on an embedder: TASK@EMBEDDER, or TASK alone for the "
                              "default UniRep-64 one. Examples: --tasks ss loc (UniRep-64); --tasks ss@unirep1900 "
                              "(secondary structure on UniRep-1900: CB513 Q3 0.722 against 0.678, but about 50x "
                              "slower to embed); --tasks ss ss@unirep1900 (both, side by side). A name that is not "
                              "shipped is refused with the list of those that are.")
    p.add_argument("--head", help="folder written by protlm train (default: the shipped predictors)")
    p.add_argument("--input", required=True, help="FASTA or gzipped FASTA")
    add_out(p, required=True,
            help="without --head: a folder (new or empty); with --head: .csv or .json (a contact head: a folder "
                 "for one npz + png per protein)")
    add_tasks(p, help="shipped predictors to run, each TASK or TASK@EMBEDDER (TASK: a name or short name: ss, "
                      "loc, membrane, scop, stability; @unirep256 / @unirep1900: the predictor on that UniRep where "
                      "one is shipped; no @: UniRep-64); default: the four UniRep-64 predictors",
              metavar="TASK[@EMBEDDER]")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into --out (shipped predictors): finished proteins are kept")
    p.add_argument("--embedder", help="with --head: embed with this instead of the head's embedder (same model)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("finetune-merge", parents=[J, O], help="merge a LoRA adapter into its base model",
                       description="Write a LoRA fine-tuned LM (an adapter folder, or the head folder of a "
                                   "`protlm train --finetune lora` run) as one standalone Hugging Face model folder, "
                                   "the adapter merged into the base weights.")
    p.add_argument("adapter", help="adapter folder (adapter_config.json) or a head folder with lm/")
    add_out(p, required=True, help="model folder to write")
    p.set_defaults(func=cmd_finetune_merge)

    p = sub.add_parser("export-fasta", parents=[J, D, O], help="write the proteins a task config uses as FASTA",
                       description="Write the proteins of a task config — after max_train, the splits and dropping "
                                   "records without labels — as FASTA (>id set=NAME, one line per sequence, as "
                                   "written: B/O/U/Z kept), to embed them with another tool. An HDF5 file made from "
                                   "it (keyed by id, or by the sequence hash) is then a valid embedder: for the task.")
    p.add_argument("--config", required=True, help="task config YAML")
    p.add_argument("--split", default="all", choices=["train", "valid", "test", "all"],
                   help="which proteins (default all; a protein in several sets is written once)")
    add_out(p, required=True, help="FASTA file to write")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. train.max_train=2000)")
    p.set_defaults(func=cmd_export_fasta)

    p = sub.add_parser("benchmark", parents=[J, T, D, C], help="run a suite of task configs with several embedders; "
                                                                "results table",
                       description="Train and score one head per (task config, embedder); write OUT/results.md "
                                   "and results.json (headline metric with bootstrap 95% CI per test set). "
                                   "Finished pairs are reused when rerun.")
    p.add_argument("--suite", default="configs/benchmarks", type=suite_path,
                   help="folder of task configs, or one config (default: configs/benchmarks here, else the "
                        "recipes installed with protlm)")
    add_tasks(p)
    p.add_argument("--embedder", action="append", help="embedder to compare (repeatable); default: each config's own")
    add_out(p, default="runs/benchmark", help="output folder (default runs/benchmark)")
    p.add_argument("--extra-test", action="append", metavar="TASK:NAME=PATH:FORMAT[:KEY=VALUE,...]",
                   help="score an extra labelled test file with the task's heads (repeatable; no retraining); "
                        "csv options: label_column=, seq_column=, id_column=, kind=float|int|str "
                        "(e.g. stability:mine=my.csv:csv:seq_column=sequence,label_column=y); docs/tasks.md")
    p.add_argument("--compare", action="append", metavar="A:B",
                   help="paired difference A − B of the headline metric on the same test proteins, with a paired "
                        "bootstrap CI (A, B: two --embedder values; repeatable; a fine-tuned column is "
                        "EMBEDDER@METHOD)")
    p.add_argument("--finetune", action="append", choices=FINETUNE_METHODS, metavar="METHOD",
                   help="run every (task, embedder) with this fine-tuning method (repeatable: one column per "
                        "embedder and method, named EMBEDDER@METHOD for methods other than none; none = frozen)")
    p.add_argument("--finish", action="store_true",
                   help="end every interrupted cell at its last checkpointed epoch (its best epoch is kept "
                        "and scored; no more training) instead of continuing it; the other cells run as usual")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every config")
    p.set_defaults(func=cmd_benchmark)
