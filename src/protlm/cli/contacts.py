"""``protlm contacts``: contact prediction (the residues_to_class protocol).

Subcommands:

- ``train --config FILE``: a supervised pair head (pair_mlp, resnet2d) or the attention
  regression from a config (docs/contacts.md, configs/benchmarks/contacts_*.yaml);
- ``attention --model M``: ESM's unsupervised recipe in one line (attention maps → APC →
  logistic regression fit on a few dozen training chains), evaluated on validation chains;
- ``evaluate --head DIR``: precision by range and top-L/k with bootstrap CIs;
- ``predict --head DIR --input FASTA``: per-protein npz of contact probabilities and a PNG
  comparing predicted and true contacts (with ``--truth``);
- ``benchmark``: every ``contacts_*.yaml`` of a folder → one results table with paired
  comparisons against the floors.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_DATA = os.path.join(os.environ.get("PROTLM_DATA", "../shared/data"), "contacts")


def _summary(metrics: dict, out: str | None) -> str:
    from protlm.contacts.metrics import format_table

    h = metrics["headline"]
    ci = f" [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}]" if h.get("ci") else ""
    value = "—" if h["value"] is None else f"{h['value']:.3f}"
    lines = [f"{metrics.get('name', '')}: {metrics.get('head', '')} on {metrics.get('embedder', '')}, "
             f"{metrics['chains']} {metrics['split']} chains; mean over proteins, "
             f"{int(metrics['ci_level'] * 100)}% bootstrap CI ({metrics['n_boot']} resamples)",
             format_table(metrics),
             f"headline: {h['name']} = {value}{ci}"]
    if out:
        lines.append(f"→ {out}")
    return "\n".join(lines)


def _data_arg(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_train(args) -> int:
    from protlm.cli.main import _emit
    from protlm.contacts.api import train
    from protlm.contacts.config import load_config

    from protlm.outputs import check_output_dir

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    check_output_dir(out, overwrite=getattr(args, "overwrite", False), marker="head.json")
    metrics = train(cfg, out, _data_arg(args.data))
    _emit(args, metrics, _summary(metrics, str(out)))
    return 0


def cmd_attention(args) -> int:
    from protlm.cli.main import _emit
    from protlm.contacts.api import train
    from protlm.contacts.config import parse_config

    model = args.model
    tree = {
        "name": args.name or f"contacts_attention_{Path(model.split(':', 1)[-1]).name}",
        "protocol": "residues_to_class",
        "embedder": model,
        "data": {"path": args.data, "train_chains": args.train_chains, "eval_chains": args.eval_chains,
                 "early_stop_chains": args.early_stop_chains, "max_length": args.max_length},
        "head": {"type": "attention_lr", "C": args.C, "penalty": args.penalty},
        "train": {"seed": args.seed},
        "evaluate": {"n_boot": args.n_boot},
    }
    from protlm.outputs import check_output_dir

    cfg = parse_config(tree)
    out = Path(args.out)
    check_output_dir(out, overwrite=args.overwrite, marker="head.json")
    metrics = train(cfg, out, None)
    _emit(args, metrics, _summary(metrics, str(out)))
    return 0


def cmd_evaluate(args) -> int:
    from protlm.cli.main import _emit
    from protlm.contacts.api import evaluate, write_json

    extra = {k: v for k, v in {"max_chains": args.max_chains, "n_boot": args.n_boot,
                               "include_early_stop": args.include_early_stop or None}.items() if v is not None}
    if args.out:
        from protlm.outputs import check_output_file

        check_output_file(args.out, overwrite=args.overwrite, option="--out", create_parent=True,
                          inputs=[Path(args.head) / "head.json", args.data])
    if args.n_boot is not None and args.n_boot < 0:
        from protlm.errors import ConfigError

        raise ConfigError(f"--n-boot must be >= 0 (0: no confidence intervals), not {args.n_boot}")
    metrics = evaluate(Path(args.head), _data_arg(args.data), args.split, extra)
    if args.out:
        write_json(Path(args.out), metrics)
    _emit(args, metrics, _summary(metrics, args.out))
    return 0


def cmd_predict(args) -> int:
    from protlm.cli.main import _emit
    from protlm.contacts.api import predict
    from protlm.errors import ConfigError, InputError

    if not Path(args.input).is_file():
        raise InputError(f"--input {args.input}: no such file (a FASTA file is expected)")
    if args.truth and not Path(args.truth).exists():
        raise InputError(f"--truth {args.truth}: no such file (coordinates in the contacts npz layout)")
    if args.max_residues < 1:
        raise ConfigError("--max-residues must be >= 1")
    from protlm.outputs import check_output_dir

    check_output_dir(args.out, overwrite=args.overwrite, inputs=[args.input, args.head])
    result = predict(Path(args.head), Path(args.input), Path(args.out),
                     truth=Path(args.truth) if args.truth else None, pictures=not args.no_pictures,
                     max_residues=args.max_residues)
    lines = [f"predicted contacts for {result['proteins']} proteins → {args.out} (npz"
             f"{' + png' if not args.no_pictures else ''}); scored against structures: {result['scored']}; "
             f"skipped: {len(result['skipped'])}"]
    for p in result["predictions"]:
        if "precision" in p:
            v = p["precision"]["long"]["L/5"]
            lines.append(f"  {p['id']}: {p['length']} residues, structure stretch {p['stretch_length']} from offset "
                         f"{p['offset']}, P@L/5 long (≥24) = "
                         f"{'—' if v is None else f'{v:.3f}'}")
    for s in result["skipped"]:
        lines.append(f"  skipped {s['id']} ({s['length']} residues): {s['reason']}")
    _emit(args, result, "\n".join(lines))
    return 1 if result["skipped"] else 0


def cmd_benchmark(args) -> int:
    from protlm.cli.main import _emit
    from protlm.contacts.api import run_benchmarks

    result = run_benchmarks(Path(args.suite), Path(args.out), _data_arg(args.data), names=args.only,
                            overrides=args.overrides)
    table = result.pop("table")
    _emit(args, result, f"{table}\n→ {Path(args.out) / 'results.md'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "contacts", help="contact prediction: train, attention, evaluate, predict",
        description="Residue-pair contact prediction (contact = CB-CB < 8 Å). Supervised pair heads on "
                    "embeddings, or ESM's logistic regression on attention maps. Metrics: precision of the "
                    "top L/5, L/2, L pairs for short (6-11), medium (12-23) and long (>=24) separations, "
                    "mean over proteins, bootstrap CIs. See docs/contacts.md.")
    sub = p.add_subparsers(dest="contacts_command", metavar="SUBCOMMAND", required=True)

    t = sub.add_parser("train", help="train a contact head from a config",
                       description="Train pair_mlp / resnet2d / attention_lr from a YAML config; writes "
                                   "OUT/head.json, head.safetensors, metrics.json.",
                       epilog="overrides: dotted keys, e.g. train.epochs=5 data.train_chains=100")
    t.add_argument("--config", required=True, help="YAML config (see configs/benchmarks/contacts_*.yaml)")
    t.add_argument("--out", help="head folder (default: runs/<config name>)")
    t.add_argument("--data", help="contacts data folder or coords npz (overrides data.path)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.add_argument("--overwrite", action="store_true", help="replace a head already in --out")
    t.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("attention", help="ESM-style contacts from attention maps (fit + evaluate)",
                       description="Symmetrised, APC-corrected attention maps of every layer and head → "
                                   "logistic regression fit on a few training chains, evaluated on held-out "
                                   "validation chains. Works with any protein LM folder protlm can load; "
                                   "random-init:FOLDER gives the random-weight floor of the same shape.")
    a.add_argument("--model", required=True, help="protein LM folder (or random-init:FOLDER)")
    a.add_argument("--data", default=DEFAULT_DATA, help=f"contacts data folder (default {DEFAULT_DATA})")
    a.add_argument("--out", required=True, help="head folder to write")
    a.add_argument("--name", help="run name (default: contacts_attention_<model>)")
    a.add_argument("--train-chains", type=int, default=30, help="training chains for the regression (default 30)")
    a.add_argument("--eval-chains", type=int, default=200, help="validation chains to report (default 200)")
    a.add_argument("--early-stop-chains", type=int, default=100,
                   help="validation chains set aside (not reported), as for the supervised heads (default 100)")
    a.add_argument("--max-length", type=int, default=300, help="skip chains longer than this (default 300)")
    a.add_argument("--C", type=float, default=0.15, help="inverse regularisation strength (default 0.15)")
    a.add_argument("--penalty", choices=["l1", "l2"], default="l1", help="l1 (ESM, default) or l2")
    a.add_argument("--seed", type=int, default=0, help="seed for the pair subsample / random-init weights")
    a.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    a.add_argument("--overwrite", action="store_true", help="replace a head already in --out")
    a.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    a.set_defaults(func=cmd_attention)

    e = sub.add_parser("evaluate", help="score a saved head on the contacts data",
                       description="Precision of the top L/5, L/2, L predicted contacts per separation range, "
                                   "mean over proteins, with bootstrap CIs.")
    e.add_argument("--head", required=True, help="head folder written by contacts train/attention")
    e.add_argument("--data", help="contacts data folder or npz (default: the one the head was trained on)")
    e.add_argument("--split", choices=["validation", "train"], default="validation")
    e.add_argument("--max-chains", type=int, help="chains to score (default: the config's eval_chains)")
    e.add_argument("--include-early-stop", action="store_true",
                   help="also score the validation chains used for early stopping")
    e.add_argument("--n-boot", type=int, help="bootstrap resamples (default: the config's, 1000)")
    e.add_argument("--out", help="write the metrics JSON here too")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("benchmark", help="run every contacts_*.yaml config and write one results table",
                       description="Train and evaluate each contact config of a folder (default configs/benchmarks) "
                                   "into OUT/<name>/, then write OUT/results.md and results.json: precision by "
                                   "range with CIs, the chance level, and paired differences against the floors "
                                   "(one-hot/BLOSUM62 for the heads, the random-init LM for attention). Finished "
                                   "runs made from the same config are reused.",
                       epilog="overrides apply to every config, e.g. data.train_chains=50 train.epochs=2")
    b.add_argument("--suite", default="configs/benchmarks", help="folder of contacts_*.yaml (or one file)")
    b.add_argument("--out", default="runs/contacts_benchmark", help="output folder (default runs/contacts_benchmark)")
    b.add_argument("--data", help="contacts data folder or npz (overrides each config's data.path)")
    b.add_argument("--only", nargs="+", metavar="NAME", help="config file stems to run (default: all)")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every config")
    b.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    b.set_defaults(func=cmd_benchmark)

    r = sub.add_parser("predict", help="contact probabilities per protein (npz) and pictures (png)",
                       description="For every protein of a FASTA file write OUT/<id>.npz (probs: L×L) and "
                                   "OUT/<id>.png. With --truth (coordinates in the contacts npz layout, ids "
                                   "matching), the structure stretch is located in the sequence, scored, and "
                                   "drawn below the diagonal.")
    r.add_argument("--head", required=True, help="head folder")
    r.add_argument("--input", required=True, help="FASTA file")
    r.add_argument("--out", required=True, help="output folder (new or empty; ids become safe, unique file names, "
                                                "listed in OUT/predictions.json)")
    r.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    r.add_argument("--truth", help="coords npz (the contacts data layout) with true structures for some ids")
    r.add_argument("--no-pictures", action="store_true", help="write only the npz files")
    r.add_argument("--max-residues", type=int, default=3000,
                   help="skip (and list) longer proteins: an L×L map grows as L² (default 3000)")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    r.set_defaults(func=cmd_predict)
