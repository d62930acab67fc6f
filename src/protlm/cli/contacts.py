"""``protlm contacts``: thin aliases of the one engine for the ``residue_pairs_to_class`` protocol.

Every subcommand calls what ``protlm train / evaluate / predict / benchmark`` call
(:mod:`protlm.tasks.train`, :mod:`protlm.tasks.suite`); they only keep the contact-specific
flags and the contact summary table:

- ``train --config FILE``: ``protlm train`` (a config without ``protocol:`` is a contact config);
- ``attention --model M``: a one-line ``attention_lr`` config (ESM's recipe), trained and scored;
- ``evaluate --head DIR``: ``protlm evaluate`` with ``--split``, ``--max-chains``, ``--include-early-stop``;
- ``predict --head DIR --input FASTA``: ``protlm predict`` with ``--truth``, ``--no-pictures``, ``--max-residues``;
- ``benchmark``: ``protlm benchmark`` over the contact configs of a folder (chosen by ``protocol:``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from protlm.cli.common import apply_threads, threads_parent

PROTOCOL = "residue_pairs_to_class"
DEFAULT_DATA = os.path.join(os.environ.get("PROTLM_DATA", "../shared/data"), "contacts")


def _summary(metrics: dict, out: str | None) -> str:
    from protlm.tasks.contacts.metrics import format_table

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


def _contact_metrics(doc: dict, sets: dict, split: str) -> dict:
    """The one set's contact metrics, as ``protlm contacts`` prints them."""
    (name, by_target), = sets.items()
    return {**by_target["contacts"], "split": split, "set": name, "name": doc["task"], "embedder": doc["embedder"],
            "head": doc["head"]}


def _config(tree: dict):
    from protlm.tasks.config import build_task_config

    tree.setdefault("protocol", PROTOCOL)
    config = build_task_config(tree)
    if config.protocol != PROTOCOL:
        from protlm.errors import ConfigError

        raise ConfigError(f"config protocol: {config.protocol} is not contact prediction ({PROTOCOL}); "
                          f"use protlm train")
    return config


def _train(args, config, out: Path, data) -> int:
    from protlm.cli.common import emit as _emit
    from protlm.io.outputs import check_output_dir
    from protlm.tasks.train import train

    check_output_dir(out, overwrite=getattr(args, "overwrite", False), marker="head.json")
    res = train(config, out, data, None if getattr(args, "no_cache", False) else getattr(args, "cache", None))
    metrics = _contact_metrics(res, res["test"], "validation (held out from early stopping)")
    _emit(args, metrics, _summary(metrics, str(out)))
    return 0


def cmd_train(args) -> int:
    apply_threads(args)
    from protlm.configfile import load_tree
    from protlm.errors import ConfigError

    if not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    config = _config(load_tree(args.config, args.overrides))
    out = Path(args.out) if args.out else Path("runs") / config.name
    return _train(args, config, out, Path(args.data) if args.data else None)


def cmd_attention(args) -> int:
    apply_threads(args)
    tree = {
        "name": args.name or f"contacts_attention_{Path(args.model.split(':', 1)[-1]).name}",
        "protocol": PROTOCOL,
        "embedder": args.model,
        "data": {"train_chains": args.train_chains, "eval_chains": args.eval_chains,
                 "early_stop_chains": args.early_stop_chains, "max_length": args.max_length},
        "head": {"type": "attention_lr", "C": args.C, "penalty": args.penalty},
        "train": {"seed": args.seed},
        "evaluate": {"n_boot": args.n_boot},
    }
    return _train(args, _config(tree), Path(args.out), Path(args.data))


def cmd_evaluate(args) -> int:
    apply_threads(args)
    from protlm.cli.common import emit as _emit
    from protlm.errors import ConfigError
    from protlm.io.atomic import write_json
    from protlm.tasks.train import evaluate, load_head

    if args.out:
        from protlm.io.outputs import check_output_file

        check_output_file(args.out, overwrite=args.overwrite, option="--out", create_parent=True,
                          inputs=[Path(args.head) / "head.json", args.data])
    if args.n_boot is not None and args.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0 (0: no confidence intervals), not {args.n_boot}")
    if not (Path(args.head) / "head.json").is_file():
        from protlm.errors import InputError

        raise InputError(f"{args.head}: no head.json (expected a folder written by protlm train)")
    head = load_head(args.head)
    if head.config.protocol != PROTOCOL:
        raise ConfigError(f"--head {args.head}: a {head.config.protocol} head, not a contact ({PROTOCOL}) head; "
                          f"use protlm evaluate")
    request = {"split": args.split, "max_chains": args.max_chains, "include_early_stop": args.include_early_stop}
    sets = head.protocol.evaluation_sets(head, request, Path(args.data) if args.data else None)
    res = evaluate(head, sets, None, None, args.n_boot)
    label = ("train (the chains the head was trained on)" if args.split == "train" else
             "validation" + (" (early-stopping chains included)" if args.include_early_stop
                             else " (held out from early stopping)"))
    metrics = _contact_metrics({"task": head.config.name, "embedder": head.config.embedder_name,
                                "head": head.config.head.type}, res, label)
    if args.out:
        write_json(Path(args.out), metrics)
    _emit(args, metrics, _summary(metrics, args.out))
    return 0


def cmd_predict(args) -> int:
    apply_threads(args)
    from protlm.cli.common import emit as _emit
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.fasta import read_fasta
    from protlm.errors import ConfigError, InputError
    from protlm.tasks.train import load_head, predict_file

    if not Path(args.input).is_file():
        raise InputError(f"--input {args.input}: no such file (a FASTA file is expected)")
    if args.truth and not Path(args.truth).exists():
        raise InputError(f"--truth {args.truth}: no such file (coordinates in the contacts npz layout)")
    if args.max_residues < 1:
        raise ConfigError("--max-residues must be >= 1")
    if not (Path(args.head) / "head.json").is_file():
        raise InputError(f"{args.head}: no head.json (expected a folder written by protlm train)")
    head = load_head(args.head)
    if head.config.protocol != PROTOCOL:
        raise ConfigError(f"--head {args.head}: a {head.config.protocol} head, not a contact head; use protlm predict")
    head.protocol.check_output(args.out, overwrite=args.overwrite, inputs=[args.input, args.head])
    records = list(read_fasta(args.input, CleaningPolicy(rare="keep")))
    options = {"truth": args.truth, "no_pictures": args.no_pictures, "max_residues": args.max_residues,
               "head": str(args.head)}
    result = predict_file(head, [r.id for r in records], [r.sequence for r in records], args.out, options)
    _emit(args, result, result.pop("summary"))
    return 1 if result["skipped"] else 0


def cmd_benchmark(args) -> int:
    apply_threads(args)
    from protlm.cli.common import emit as _emit
    from protlm.tasks.suite import run_suite

    res = run_suite(args.suite, [], args.out, args.data, tasks=args.only, overrides=args.overrides,
                    protocols=[PROTOCOL], cache_dir=None)
    _emit(args, {"out": res["out"], "results": res["results"]},
          res["table"] + f"\n→ {Path(args.out) / 'results.md'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "contacts", help="contact prediction: train, attention, evaluate, predict (aliases of the one engine)",
        description="Residue-pair contact prediction, protocol residue_pairs_to_class (contact = CB-CB < 8 Å). "
                    "Supervised pair heads on embeddings, or ESM's logistic regression on attention maps. "
                    "Metrics: precision of the top L/5, L/2, L pairs for short (6-11), medium (12-23) and long "
                    "(>=24) separations, mean over proteins, bootstrap CIs. These subcommands are aliases of "
                    "protlm train / evaluate / predict / benchmark with contact-specific flags; see docs/contacts.md.")
    sub = p.add_subparsers(dest="contacts_command", metavar="SUBCOMMAND", required=True)
    T = [threads_parent()]  # --threads: torch's CPU threads, as for every command

    t = sub.add_parser("train", parents=T, help="train a contact head from a config (= protlm train)",
                       description="Train pair_mlp / resnet2d / attention_lr from a YAML config; writes "
                                   "OUT/head.json, head.safetensors, metrics.json.",
                       epilog="overrides: dotted keys, e.g. train.epochs=5 data.train_chains=100")
    t.add_argument("--config", required=True, help="YAML config (see configs/benchmarks/contacts_*.yaml)")
    t.add_argument("--out", help="head folder (default: runs/<config name>)")
    t.add_argument("--data", help="contacts data folder or coords npz (overrides data.path)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.add_argument("--overwrite", action="store_true", help="replace a head already in --out")
    t.add_argument("--cache", default=os.environ.get("PROTLM_CACHE", "runs/cache"),
                   help="embedding cache folder (default: $PROTLM_CACHE or runs/cache)")
    t.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    t.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("attention", parents=T, help="ESM-style contacts from attention maps (fit + evaluate)",
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

    e = sub.add_parser("evaluate", parents=T, help="score a saved head on the contacts data (= protlm evaluate)",
                       description="Precision of the top L/5, L/2, L predicted contacts per separation range, "
                                   "mean over proteins, with bootstrap CIs.")
    e.add_argument("--head", required=True, help="head folder written by protlm train / contacts train")
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

    b = sub.add_parser("benchmark", parents=T, help="run the contact configs of a folder (= protlm benchmark)",
                       description="Train and score each contact config (protocol residue_pairs_to_class) of a "
                                   "folder with its own embedder through the one benchmark suite; write "
                                   "OUT/results.md and results.json. Paired differences between embedders: "
                                   "protlm benchmark --embedder A --embedder B --compare A:B. Finished runs made "
                                   "from the same config are reused.",
                       epilog="overrides apply to every config, e.g. data.train_chains=50 train.epochs=2")
    b.add_argument("--suite", default="configs/benchmarks", help="folder of configs (or one file)")
    b.add_argument("--out", default="runs/contacts_benchmark", help="output folder (default runs/contacts_benchmark)")
    b.add_argument("--data", help="contacts data folder or npz (overrides each config's data.path)")
    b.add_argument("--only", nargs="+", metavar="NAME", help="config file stems to run (default: all)")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every config")
    b.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    b.set_defaults(func=cmd_benchmark)

    r = sub.add_parser("predict", parents=T, help="contact probabilities per protein (npz) and pictures (= protlm predict)",
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
