"""``protlm contacts``: thin aliases of the one engine for the ``residue_pairs_to_class`` protocol.

Every subcommand calls what ``protlm train / evaluate / predict / benchmark`` call
(:mod:`protlm.tasks.commands`, :mod:`protlm.tasks.suite`), with the same shared flags
(:mod:`protlm.cli.common`: ``--out``/``--output``, ``--bootstrap``/``--n-boot``, ``--tasks``/``--only``,
``--threads``, ``--json``, ``--overwrite``); they only keep the contact-specific flags and the
contact summary table. ``--data`` is the benchmark data folder as everywhere (its ``contacts/``
subfolder is read); a contacts folder or its ``coords_ca_cb.npz`` is accepted too.

- ``train --config FILE``: ``protlm train`` (a config without ``protocol:`` is a contact config);
- ``attention --model M``: a one-line ``attention_lr`` config (ESM's recipe), trained and scored;
- ``evaluate --head DIR``: ``protlm evaluate`` with ``--split``, ``--max-chains``, ``--include-early-stop``;
- ``predict --head DIR --input FASTA``: ``protlm predict`` with ``--truth``, ``--no-pictures``, ``--max-residues``;
- ``benchmark``: ``protlm benchmark`` over the contact configs of a folder (chosen by ``protocol:``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protlm.cli.common import (add_bootstrap, add_chain_selection, add_out, add_tasks, apply_threads, cache_dir,
                               cache_parent, data_dir, emit, json_parent, overwrite_parent, threads_parent, safe_folder_name)
from protlm.io.resources import suite_path

PROTOCOL = "residue_pairs_to_class"


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


def _train(args, config, out: Path) -> int:
    from protlm.tasks.commands import contact_metrics, train_command

    res = train_command(config, out, overwrite=args.overwrite, data_dir=data_dir(args),
                        cache_dir=cache_dir(args))
    metrics = contact_metrics(res["test"], "validation (held out from early stopping)", res["task"], res["embedder"],
                              res["head"])
    emit(args, metrics, _summary(metrics, str(out)))
    return 0


def cmd_train(args) -> int:
    apply_threads(args)
    from protlm.configfile import load_tree
    from protlm.errors import ConfigError
    from protlm.tasks.commands import contact_config

    if not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    config = contact_config(load_tree(args.config, args.overrides))
    return _train(args, config, Path(args.out) if args.out else Path("runs") / safe_folder_name(config.name))


def cmd_attention(args) -> int:
    apply_threads(args)
    from protlm.tasks.commands import attention_config

    config = attention_config(args.model, name=args.name, train_chains=args.train_chains, eval_chains=args.eval_chains,
                              early_stop_chains=args.early_stop_chains, max_length=args.max_length, C=args.C,
                              penalty=args.penalty, seed=args.seed, n_boot=args.bootstrap)
    return _train(args, config, Path(args.out))


def cmd_evaluate(args) -> int:
    apply_threads(args)
    from protlm.tasks.commands import contact_metrics, contact_split_label, evaluate_command

    def view(head, doc):
        return contact_metrics(doc["sets"], contact_split_label(args.split, args.include_early_stop), doc["task"],
                               doc["embedder"], head.config.head.type)

    request = {"split": args.split, "max_chains": args.max_chains, "include_early_stop": args.include_early_stop,
               "max_length": args.max_length, "full_sequences": args.full_sequences}
    _, metrics = evaluate_command(args.head, request, data_dir=data_dir(args), n_boot=args.bootstrap,
                                  out=args.out, overwrite=args.overwrite, protocol=PROTOCOL, view=view)
    emit(args, metrics, _summary(metrics, args.out))
    return 0


def cmd_predict(args) -> int:
    apply_threads(args)
    from protlm.tasks.commands import predict_command

    options = {"truth": args.truth, "no_pictures": args.no_pictures, "max_residues": args.max_residues}
    result = predict_command(args.head, args.input, args.out, overwrite=args.overwrite, options=options,
                             protocol=PROTOCOL)
    emit(args, result, result.pop("summary"))
    return 1 if result["skipped"] else 0


def cmd_benchmark(args) -> int:
    apply_threads(args)
    from protlm.tasks.suite import run_suite

    res = run_suite(args.suite, [], args.out, data_dir(args), tasks=args.tasks,
                    overrides=args.overrides, protocols=[PROTOCOL], cache_dir=None)
    emit(args, {"out": res["out"], "results": res["results"]}, res["table"] + f"\n→ {Path(args.out) / 'results.md'}")
    return 0


DATA_HELP = ("benchmark data folder (its contacts/ subfolder is used); a contacts folder or its coords npz is "
             "accepted too. Default: {default}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "contacts", help="contact prediction: train, attention, evaluate, predict (aliases of the one engine)",
        description="Residue-pair contact prediction, protocol residue_pairs_to_class (contact = CB-CB < 8 Å). "
                    "Supervised pair heads on embeddings, or ESM's logistic regression on attention maps. "
                    "Metrics: precision of the top L/5, L/2, L pairs for short (6-11), medium (12-23) and long "
                    "(>=24) separations, mean over proteins, bootstrap CIs. These subcommands are aliases of "
                    "protlm train / evaluate / predict / benchmark with contact-specific flags; see docs/contacts.md.")
    sub = p.add_subparsers(dest="contacts_command", metavar="SUBCOMMAND", required=True)
    # the same flags as protlm train / evaluate / predict / benchmark (cli/common.py)
    J, T, O, C = json_parent(), threads_parent(), overwrite_parent(), cache_parent()

    def data(p, default: str) -> None:
        p.add_argument("--data", metavar="DIR", help=DATA_HELP.format(default=default))

    t = sub.add_parser("train", parents=[J, T, O, C], help="train a contact head from a config (= protlm train)",
                       description="Train pair_mlp / resnet2d / attention_lr from a YAML config; writes "
                                   "OUT/head.json, head.safetensors, metrics.json.",
                       epilog="overrides: dotted keys, e.g. train.epochs=5 data.train_chains=100")
    t.add_argument("--config", required=True, help="YAML config (see configs/benchmarks/contacts_*.yaml)")
    add_out(t, help="head folder (default: runs/<config name>)")
    data(t, "the config's data.path, else $PROTLM_DATA/contacts")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("attention", parents=[J, T, O],
                       help="ESM-style contacts from attention maps (fit + evaluate)",
                       description="Symmetrised, APC-corrected attention maps of every layer and head → "
                                   "logistic regression fit on a few training chains, evaluated on held-out "
                                   "validation chains. Works with any protein LM folder protlm can load; "
                                   "random-init:FOLDER gives the random-weight floor of the same shape.")
    a.add_argument("--model", required=True, help="protein LM folder (or random-init:FOLDER)")
    data(a, "$PROTLM_DATA/contacts, else ../shared/data/contacts")
    add_out(a, required=True, help="head folder to write")
    a.add_argument("--name", help="run name (default: contacts_attention_<model>)")
    a.add_argument("--train-chains", type=int, default=30, help="training chains for the regression (default 30)")
    a.add_argument("--eval-chains", type=int, default=200, help="validation chains to report (default 200)")
    a.add_argument("--early-stop-chains", type=int, default=100,
                   help="validation chains set aside (not reported), as for the supervised heads (default 100)")
    a.add_argument("--max-length", type=int, default=300, help="skip chains longer than this (default 300)")
    a.add_argument("--C", type=float, default=0.15, help="inverse regularisation strength (default 0.15)")
    a.add_argument("--penalty", choices=["l1", "l2"], default="l1", help="l1 (ESM, default) or l2")
    a.add_argument("--seed", type=int, default=0, help="seed for the pair subsample / random-init weights")
    add_bootstrap(a, default=1000, help="bootstrap resamples (default 1000)")
    a.set_defaults(func=cmd_attention)

    e = sub.add_parser("evaluate", parents=[J, T, O],
                       help="score a saved head on the contacts data (= protlm evaluate)",
                       description="Precision of the top L/5, L/2, L predicted contacts per separation range, "
                                   "mean over proteins, with bootstrap CIs.")
    e.add_argument("--head", required=True, help="head folder written by protlm train / contacts train")
    data(e, "the contacts file the head was trained on")
    e.add_argument("--split", choices=["validation", "train"], default="validation")
    add_chain_selection(e)
    add_bootstrap(e, help="bootstrap resamples (default: the config's, 1000)")
    add_out(e, help="write the metrics JSON here too")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("benchmark", parents=[J, T], help="run the contact configs of a folder (= protlm benchmark)",
                       description="Train and score each contact config (protocol residue_pairs_to_class) of a "
                                   "folder with its own embedder through the one benchmark suite; write "
                                   "OUT/results.md and results.json. Paired differences between embedders: "
                                   "protlm benchmark --embedder A --embedder B --compare A:B. Finished runs made "
                                   "from the same config are reused.",
                       epilog="overrides apply to every config, e.g. data.train_chains=50 train.epochs=2")
    b.add_argument("--suite", default="configs/benchmarks", type=suite_path,
                   help="folder of configs, or one file (default: configs/benchmarks here, else the recipes "
                        "installed with protlm)")
    add_out(b, default="runs/contacts_benchmark", help="output folder (default runs/contacts_benchmark)")
    data(b, "each config's data.path, else $PROTLM_DATA/contacts")
    add_tasks(b, help="config file stems to run (default: all)")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every config")
    b.set_defaults(func=cmd_benchmark)

    r = sub.add_parser("predict", parents=[J, T, O],
                       help="contact probabilities per protein (npz) and pictures (= protlm predict)",
                       description="For every protein of a FASTA file write OUT/<id>.npz (probs: L×L) and "
                                   "OUT/<id>.png. With --truth (coordinates in the contacts npz layout, ids "
                                   "matching), the structure stretch is located in the sequence, scored, and "
                                   "drawn below the diagonal.")
    r.add_argument("--head", required=True, help="head folder")
    r.add_argument("--input", required=True, help="FASTA file")
    add_out(r, required=True, help="output folder (new or empty; ids become safe, unique file names, listed in "
                                   "OUT/predictions.json)")
    r.add_argument("--truth", help="a structure set (npz; format in docs/contacts.md) with true structures for some ids")
    r.add_argument("--no-pictures", action="store_true", help="write only the npz files")
    r.add_argument("--max-residues", type=int, default=3000,
                   help="skip (and list) longer proteins: an L×L map grows as L² (default 3000)")
    r.set_defaults(func=cmd_predict)
