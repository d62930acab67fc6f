"""The cost of fine-tuning UniRep: one forward + backward of a training batch, per model size.

What it answers: how many CPU hours an epoch of fine-tuning UniRep-64/256/1900 on the NetSurfP-2.0
training set (9,712 proteins, 2.48M residues) costs on this machine, from the time of one batch of
``--batch`` random proteins of ``--length`` residues (the training set's mean is 255), full
fine-tuning (every weight gets a gradient), fp32, ``--threads`` torch threads. Medians of
``--repeats`` batches after one warm-up; the frozen forward (the fast inference scan) of the same
batch in the same run, for the ratio.

    python benchmarks/bench_finetune_unirep.py --sizes 64 256 1900 --out benchmarks/results/finetune_unirep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

TRAIN_RESIDUES = 2_479_773  # NetSurfP-2.0 training split (protlm benchmark's count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1900])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=255)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from protlm.embed.spec import parse_spec
    from protlm.tasks.finetune import FinetuneConfig, trainable_lm

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), args.length)) for _ in range(args.batch)]
    residues = args.batch * args.length
    rows = []
    for size in args.sizes:
        backend = trainable_lm(parse_spec(f"unirep{size}"), FinetuneConfig(method="full"))
        train_s, frozen_s = [], []
        for rep in range(args.repeats + 1):
            t = time.perf_counter()
            out = backend.forward_tokens(seqs)
            out.hidden[-1].pow(2).mean().backward()
            dt = time.perf_counter() - t
            backend.module.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with torch.inference_mode():
                backend.forward(seqs)
            ft = time.perf_counter() - t
            if rep:
                train_s.append(dt)
                frozen_s.append(ft)
        step = statistics.median(train_s)
        row = {"size": size, "batch_seconds": step, "frozen_forward_seconds": statistics.median(frozen_s),
               "train_over_frozen": step / statistics.median(frozen_s), "residues_per_s": residues / step,
               "epoch_cpu_hours": TRAIN_RESIDUES / (residues / step) / 3600}
        rows.append(row)
        print(f"UniRep-{size:<5d} fwd+bwd {step:7.2f} s / batch ({row['residues_per_s']:7.0f} res/s, "
              f"{row['train_over_frozen']:.1f}x the frozen forward) → one NetSurfP epoch ≈ "
              f"{row['epoch_cpu_hours']:.2f} CPU h", flush=True)
    doc = {"benchmark": "finetune_unirep", "batch": args.batch, "length": args.length, "threads": args.threads,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": rows,
           "command": "python benchmarks/bench_finetune_unirep.py " + " ".join(
               f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
               if v is not None)}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
