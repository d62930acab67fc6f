"""``protlm pretrain`` — pretrain a protein LM from prepared shards (:mod:`protlm.pretrain`).

Argument parsing and the printed summary only; torch is imported inside :func:`cmd_pretrain`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from protlm.cli.common import add_out, apply_threads, emit, json_parent, threads_parent


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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain a protein LM from prepared shards",
                              parents=[json_parent(), threads_parent()],
                              description="Train a BERT/ALBERT/ESM-style/causal/T5/XLNet/Transformer-XL protein LM "
                                          "from `protlm prepare` shards. Single process, or several under "
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
