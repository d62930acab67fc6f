"""Attention of packed proteins on a CPU: the kernels protlm could use, side by side (issue 23).

After ``--compile`` fused the per-token work, attention is the largest cost of the ESM-2 forward on
an AMX CPU (docs/benchmarks.md). This script times, for ESM-2's head shape (20 heads × 24 by
default) in bf16, the same packed q/k/v (heads × N × head-dim) through:

* ``segments``: one ``scaled_dot_product_attention`` call per protein (what protlm runs; torch's
  CPU flash-attention kernel);
* ``flex``: one ``flex_attention`` call over all proteins with a document mask (a block mask that
  lets each token see only its own protein), compiled with ``torch.compile`` — torch's
  variable-length attention for packed batches;
* ``math``: per protein, q·kᵀ as a bf16 batched matmul, softmax in fp32, then the product with v
  (the unfused path, compiled);
* with ``--pad-head-dim P``, ``segments_padP``: the per-protein SDPA calls on q/k/v zero-padded to
  head width P (padded before timing, as padded projection weights would produce them; zeros in q
  and k leave q·kᵀ unchanged, v's extra columns are dropped) — whether a width that AMX tiles fit
  runs faster than ESM-2's 24.

For each length mix it prints milliseconds (best of ``--repeats``), the ratio to ``segments``,
scores per second (query-key pairs × heads) and the largest absolute difference from
``segments``. One process, the methods alternated. ``--threads`` sets torch's threads.

    .venv/bin/python benchmarks/bench_attention.py --threads 2 [--out-json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def segments(q, k, v, cu):
    out = torch.empty_like(q)
    for s, e in zip(cu[:-1], cu[1:]):
        out[:, s:e] = F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, s:e], v[None, :, s:e],
                                                     scale=1.0)[0]
    return out


def _math_one(q, k, v):
    s = torch.matmul(q, k.transpose(-1, -2)).float()
    return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--head-dim", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pad-head-dim", type=int, default=None, metavar="P",
                    help="also time the per-protein SDPA on q/k/v zero-padded to head width P")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args(argv)
    if args.pad_head_dim is not None and args.pad_head_dim <= args.head_dim:
        ap.error(f"--pad-head-dim {args.pad_head_dim}: must exceed --head-dim {args.head_dim}")
    torch.set_num_threads(args.threads)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)  # dynamic shapes: inductor 2.13 fails to build the CPU template
    math_one = torch.compile(_math_one, dynamic=True)
    rng = random.Random(0)
    mixes = {"one protein of 340": [340], "one of 1,000": [1000], "one of 3,000": [3000],
             "40 of 100": [100] * 40, "10 Swiss-Prot-like lengths (50–900)": [rng.randint(50, 900) for _ in range(10)]}
    rows = []
    H, D = args.heads, args.head_dim
    for label, lengths in mixes.items():
        n = sum(lengths)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(H, n, D, generator=g).to(torch.bfloat16) for _ in range(3))
        cu = [0]
        for L in lengths:
            cu.append(cu[-1] + L)
        doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

        def same_protein(b, h, qi, ki):
            return doc[qi] == doc[ki]

        t = time.perf_counter()
        mask = create_block_mask(same_protein, None, None, n, n, device="cpu")
        mask_s = time.perf_counter() - t
        methods = {
            "segments": lambda: segments(q, k, v, cu),
            "flex": lambda: flex(q[None], k[None], v[None], block_mask=mask, scale=1.0)[0],
            "math": lambda: torch.cat([math_one(q[:, s:e], k[:, s:e], v[:, s:e]) for s, e in zip(cu[:-1], cu[1:])],
                                      dim=1),
        }
        if args.pad_head_dim:
            P = args.pad_head_dim
            qp, kp, vp = (F.pad(t, (0, P - D)).contiguous() for t in (q, k, v))
            methods[f"segments_pad{P}"] = lambda: segments(qp, kp, vp, cu)[..., :D]
        with torch.inference_mode():
            ref = methods["segments"]()
            diff = {m: float((f().float() - ref.float()).abs().max()) for m, f in methods.items()}  # also warms up
            best = {m: float("inf") for m in methods}
            for r in range(args.repeats):
                for m in (methods if r % 2 == 0 else list(reversed(methods))):
                    t = time.perf_counter()
                    methods[m]()
                    best[m] = min(best[m], time.perf_counter() - t)
        scores = H * sum(L * L for L in lengths)
        for m in methods:
            rows.append({"mix": label, "lengths": lengths, "method": m, "ms": best[m] * 1e3,
                         "vs_segments": best["segments"] / best[m], "scores_per_s": scores / best[m],
                         "max_abs_diff_vs_segments": diff[m], "block_mask_ms": mask_s * 1e3 if m == "flex" else None})
            print(f"{label:38s} {m:9s} {best[m] * 1e3:9.2f} ms  {best['segments'] / best[m]:5.2f}× segments  "
                  f"{scores / best[m] / 1e9:5.2f} G scores/s  max |Δ| {diff[m]:.3g}", flush=True)
    if args.out_json:
        from protlm.embed.precision import cpu_flags

        meta = {"benchmark": "bench_attention", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": platform.machine(), "threads": args.threads, "torch": torch.__version__,
                "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512_vnni"))),
                "load_average": os.getloadavg(), "heads": H, "head_dim": D, "pad_head_dim": args.pad_head_dim,
                "rows": rows}
        Path(args.out_json).write_text(json.dumps(meta, indent=1))
        print(f"wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
