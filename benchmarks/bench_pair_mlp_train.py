"""What one training step of the contact pair MLP costs per input width, on this CPU.

The pair MLP's |e_i − e_j| and e_i ⊙ e_j parts are computed per pair, so a training step costs
about (pairs × D × hidden) multiply-adds, linear in the embedding width D. This times one step
(forward, backward, Adam) on one 256-residue crop — the recipe's crop, 31,375 scored pairs with
separation ≥ 6 — for the widths of the contact inputs (one-hot 21, masked-xs 96, UniRep-64, -256,
-1900), with random embeddings (the cost does not depend on the values), to turn a measured epoch
time at one width into an estimate at another. Each width is timed two ways, interleaved: the head's
``train_logits`` (blocks of rows by broadcasting) and its pair-by-pair definition ``pair_logits``
(gathers e_i, e_j for every pair: how protlm computed it up to session 21):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pair_mlp_train.py [--threads 1] [--repeats 5]

Prints one line per width: seconds per step (median of the repeats after one warm-up step) of
both, their ratio, and the ratio to UniRep-256's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from protlm.tasks.heads.pair_mlp import PairMLP

WIDTHS = {"one-hot": 21, "UniRep-64": 64, "masked-xs": 96, "UniRep-256": 256, "UniRep-1900": 1900}


def step_seconds(dim: int, crop: int, repeats: int) -> tuple[float, float]:
    """Median seconds per step: (blocks, pair by pair)."""
    torch.manual_seed(0)
    head = PairMLP(dim)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    emb = torch.randn(crop, dim)
    pairs = torch.triu(torch.ones(crop, crop, dtype=torch.bool), diagonal=6)
    i, j = torch.nonzero(pairs, as_tuple=True)
    target = (torch.rand(int(pairs.sum())) < 0.05).float()
    ways = {"blocks": lambda: head.train_logits(emb, pairs), "pairs": lambda: head.pair_logits(head.norm(emb), i, j)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats + 1):
        for name, logits in ways.items():
            t = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - t)
    return statistics.median(times["blocks"][1:]), statistics.median(times["pairs"][1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--crop", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"crop {args.crop}")
    got = {name: step_seconds(dim, args.crop, args.repeats) for name, dim in WIDTHS.items()}
    for name, (s, pairwise) in got.items():
        print(f"{name:12s} D={WIDTHS[name]:5d}  blocks {s:.3f} s/step, pair by pair {pairwise:.3f} "
              f"(×{pairwise / s:.2f})  ×{s / got['UniRep-256'][0]:.2f} of UniRep-256")


if __name__ == "__main__":
    main()
