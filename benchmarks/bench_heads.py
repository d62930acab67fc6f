"""Where the time of `protlm train` / `benchmark` goes on a CPU, side by side in one run.

Two costs dominate a benchmark-suite run with a small LM: embedding the task's proteins (once,
then cached) and training the head. Both are measured here with 1 and 2 torch threads,
alternating round-robin (this machine is shared and noisy: compare the ratios, not the
absolute numbers), and the embedding with each batch plan: packed (the CPU default for ESM-like
models), equal-length only, and padded mixed batches.

    .venv/bin/python benchmarks/bench_heads.py [--data ../shared/data] [--rounds 3]

Writes benchmarks/results/heads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def embed_case(embedder, seqs, threads: int) -> float:
    torch.set_num_threads(threads)
    t = time.perf_counter()
    embedder.embed(seqs)
    return sum(map(len, seqs)) / (time.perf_counter() - t)


def head_case(threads: int, steps: int = 20) -> float:
    from protlm.tasks.heads import build_head

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head = build_head("cnn", 96, [3, 8], per_residue=True)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    residues = 0
    for _ in range(steps):
        width = int(rng.integers(150, 450))  # a new batch width every step, as in training
        x = torch.randn(32, width, 96)
        mask = torch.ones(32, width)
        y = torch.randint(0, 3, (32, width))
        out = head(x, mask)
        loss = torch.nn.functional.cross_entropy(out[0].reshape(-1, 3), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        residues += 32 * width
    return residues / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--proteins", type=int, default=300)
    args = ap.parse_args()
    from protlm.data.benchmarks import load_benchmark
    from protlm.embed import EmbedOptions, Embedder

    recs = load_benchmark("netsurfp", args.data)
    rng = np.random.default_rng(0)
    seqs = [recs[i].sequence for i in rng.choice(len(recs), args.proteins, replace=False)]
    # the batching is the backend's choice at load time: one embedder per plan (packed is the CPU default)
    model = str(REPO / "checkpoints" / "protlm-swissprot-masked-xs")
    embedders = {"packed": Embedder(model, EmbedOptions()),
                 "equal-length": Embedder(model, EmbedOptions(equal_length_batches=True)),
                 "padded": Embedder(model, EmbedOptions(equal_length_batches=False))}
    for e in embedders.values():
        e.embed(seqs[:10])
    cases = {f"embed {plan} batches, {t} thread(s)": (lambda t=t, e=e: embed_case(e, seqs, t))
             for t in (1, 2) for plan, e in embedders.items()}
    cases.update({f"CNN head training, {t} thread(s)": (lambda t=t: head_case(t)) for t in (1, 2)})
    results: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            results[name].append(fn())
            print(f"round {r} {name}: {results[name][-1]:,.0f} residues/s", flush=True)
    summary = {k: {"median_residues_per_s": statistics.median(v), "runs": v} for k, v in results.items()}
    doc = {"proteins": args.proteins, "residues": sum(map(len, seqs)), "rounds": args.rounds,
           "load_average_at_end": os.getloadavg(), "results": summary}
    out = REPO / "benchmarks" / "results" / "heads.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for k, v in summary.items():
        print(f"{k:45s} {v['median_residues_per_s']:>10,.0f} residues/s")


if __name__ == "__main__":
    main()
