"""What one training step of the 2-D ResNet contact head costs on this CPU, and whether the
memory layout (channels_last) or stacking a batch's crops into one tensor would shorten it.

An epoch of the recipe contacts_resnet2d_masked_xs on 1,000 chains takes 3-4 minutes of one core
here, and converging takes 20-40 epochs per embedder; the step is convolution-bound (8 dilated
3×3 convolutions of 32 channels over a 128 × 128 pair map, forward and backward). This times the
training step (forward, backward, AdamW) on random 128-residue crops of a UniRep-64-wide input,
four ways side by side in one run, and the convolutions' arithmetic rate against this core's fp32
matmul ceiling measured in the same run:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_resnet_step.py [--threads 1] [--rounds 3]

  nchw/one     one protein at a time, NCHW tensors (protlm before 0.5)
  cl/one       one protein at a time, channels_last tensors and weights (what protlm does now)
  nchw/batch8  the batch's 8 crops stacked into one 8 × C × L × L tensor
  cl/batch8    stacked and channels_last

Prints the median seconds per protein of each (rounds interleaved, so load on a shared machine
hits all alike), its ratio to nchw/one, and the convolutions' GFLOP/s as a share of the ceiling.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from protlm.tasks.heads.resnet2d import ResNet2D

MODES = ("nchw/one", "cl/one", "nchw/batch8", "cl/batch8")


def conv_flops(head: ResNet2D, n: int) -> float:
    """Multiply-adds × 2 of every convolution of one forward pass over an n × n map."""
    total = 0
    for m in head.modules():
        if isinstance(m, torch.nn.Conv2d):
            total += 2 * n * n * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
    return float(total)


def matmul_ceiling(size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - t) / 1e9


def pair_map(head: ResNet2D, emb: torch.Tensor) -> torch.Tensor:
    a = head.proj(head.norm(emb))
    n = a.shape[0]
    ai, aj = a[:, None, :].expand(n, n, -1), a[None, :, :].expand(n, n, -1)
    return torch.cat([ai, aj, ai * aj], dim=-1).permute(2, 0, 1)  # 3p × L × L


def trunk(head: ResNet2D, x: torch.Tensor) -> torch.Tensor:
    x = head.inp(x)
    for block in head.blocks:
        x = block(x)
    z = head.out(torch.relu(x))[:, 0]
    return (z + z.transpose(1, 2)) / 2


def step(head: ResNet2D, opt, embs: list[torch.Tensor], mask, targets, mode: str) -> float:
    layout = torch.channels_last if mode.startswith("cl") else torch.contiguous_format
    t = time.perf_counter()
    opt.zero_grad()
    if mode.endswith("one"):
        for emb, y in zip(embs, targets):
            x = pair_map(head, emb)[None].contiguous(memory_format=layout)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(trunk(head, x)[0][mask], y)
            (loss / len(embs)).backward()
    else:
        x = torch.stack([pair_map(head, e) for e in embs]).contiguous(memory_format=layout)
        z = trunk(head, x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, mask], torch.stack(targets))
        loss.backward()
    opt.step()
    return (time.perf_counter() - t) / len(embs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.crop
    embs = [torch.randn(n, args.dim) for _ in range(8)]
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=6)
    targets = [(torch.rand(int(mask.sum())) < 0.03).float() for _ in embs]
    heads, opts = {}, {}
    for mode in MODES:
        torch.manual_seed(0)
        head = ResNet2D(args.dim)
        head = head.to(memory_format=torch.channels_last if mode.startswith("cl") else torch.contiguous_format)
        heads[mode], opts[mode] = head, torch.optim.AdamW(head.parameters(), 1e-3)
        step(head, opts[mode], embs, mask, targets, mode)  # warm-up
    got: dict[str, list[float]] = {m: [] for m in MODES}
    ceilings = []
    for _ in range(args.rounds):
        ceilings.append(matmul_ceiling())
        for mode in MODES:
            got[mode].append(step(heads[mode], opts[mode], embs, mask, targets, mode))
    ceiling = statistics.median(ceilings)
    flops = 3 * conv_flops(heads["nchw/one"], n)  # forward + backward (data and weight gradients)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"crop {n}, input width {args.dim}; fp32 matmul ceiling {ceiling:.1f} GFLOP/s")
    base = statistics.median(got["nchw/one"])
    for mode in MODES:
        s = statistics.median(got[mode])
        rate = flops / s / 1e9
        print(f"{mode:12s} {s:.3f} s/protein  ×{base / s:.2f} of nchw/one  conv {rate:.1f} GFLOP/s "
              f"({100 * rate / ceiling:.0f}% of the ceiling)")


if __name__ == "__main__":
    main()
