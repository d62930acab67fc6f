"""``protlm demo`` — the main job end to end, offline (:func:`protlm.demo.run_demo`).

Argument parsing and the printed summary only; the demo, and its ``demo_report.json``, are the
library's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protlm.cli.common import add_out, apply_threads, emit, json_parent, progress_bar, threads_parent


def _silhouette_text(scores: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items()
                     if k.endswith(("_cosine", "_euclidean")) and isinstance(v, float))


def cmd_demo(args) -> int:
    from protlm.demo import REPORT_NAME, run_demo

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
    lines.append(f"  report      {Path(args.out) / REPORT_NAME}")
    emit(args, report, "\n".join(lines))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the main job on real sequences (offline)",
                              parents=[json_parent(), threads_parent()],
                              description="The papers' story at small scale, offline on a CPU: statistics and "
                                          "pretraining shards of a real proteome (shipped with pyhmmer; with --data "
                                          "the Swiss-Prot sample), a tiny LM pretrained for a few steps, embeddings "
                                          "with the committed checkpoint, t-SNE/UMAP maps with silhouettes, and with "
                                          "--data secondary-structure and localization heads vs one-hot with a "
                                          "results table.")
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
