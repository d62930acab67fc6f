"""Where the time of the compiled bf16 ESM forward goes (issue 23; docs/benchmarks.md, "Static head
shapes in the compiled forward").

1. ``--kernels``: one layer of the random-weight ESM-2 35M shape on 4,000 packed tokens of
   400-residue proteins: the pre-attention kernel (layer norm, q/k/v GEMM, rotation, heads-major
   layout) compiled as protlm compiles it (token count dynamic, head shapes constant) against the
   same function compiled with every shape symbolic (``dynamic=True``, the compile before
   2026-12-07); best of ``--repeats``, alternated.
2. A torch profile of ``Embedder.embed`` (``--dtype bf16 --compile``) on the first ``--proteins``
   proteins of the Swiss-Prot 20k sample, then the same call timed without the profiler.

    .venv/bin/python benchmarks/profile_compiled.py --threads 2 [--proteins 300] [--kernels]

Needs a CPU with bf16 (avx512_bf16 / amx_bf16) and the 20k sample in ``DATA/pretraining``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import SHAPES, make_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def kernels(folder: Path, repeats: int) -> None:
    from transformers import EsmModel

    from protlm.embed import packed as P

    model = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
    compiled = P.CompiledESM(model, "bf16")
    compiled.warm_up()
    symbolic = torch.compile(P._esm_pre, dynamic=True)
    w = compiled.layers[0]
    n, length = 4000, 400
    x = torch.randn(n, model.config.hidden_size)
    positions = torch.arange(length).repeat(n // length)
    cos, sin = model.rotary_embeddings(x, positions[None])
    cos, sin = cos[0].float(), sin[0].float()
    args = (x, *w["ln1"], w["wqkv"], w["bqkv"], cos, sin, w["heads"], w["head_dim"])
    for t in (x, cos, sin):
        torch._dynamo.mark_dynamic(t, 0)
    ways = {"head shapes constant (now)": lambda: compiled.pre(*args),
            "every shape symbolic (before)": lambda: symbolic(*args)}
    best = {k: float("inf") for k in ways}
    with torch.inference_mode():
        for f in ways.values():
            f()
        for r in range(repeats):
            for k in (ways if r % 2 == 0 else list(reversed(ways))):
                t = time.perf_counter()
                ways[k]()
                best[k] = min(best[k], time.perf_counter() - t)
    for k, v in best.items():
        print(f"pre-attention kernel, one layer, {n} tokens of {length}-residue proteins, {k}: {v * 1e3:.2f} ms")


def profile(folder: Path, data: Path, proteins: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from protlm.data.fasta import read_fasta
    from protlm.embed import EmbedOptions, Embedder

    seqs = []
    for rec in read_fasta(data / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"):
        seqs.append(rec.sequence)
        if len(seqs) == proteins:
            break
    residues = sum(map(len, seqs))
    emb = Embedder(str(folder), EmbedOptions(device="cpu", dtype="bf16", compile=True))
    emb.embed(seqs[:5])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        emb.embed(seqs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    t = time.perf_counter()
    emb.embed(seqs)
    print(f"{len(seqs)} proteins, {residues:,} residues: {residues / (time.perf_counter() - t):,.0f} residues/s "
          f"without the profiler")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--proteins", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--kernels", action="store_true", help="also time the pre-attention kernel, before and now")
    ap.add_argument("--model-dir", default="/tmp/b/esm2_35M", help="where the random-weight 35M folder is (made)")
    args = ap.parse_args(argv)
    from protlm.embed.precision import cpu_bf16

    ok, why = cpu_bf16()
    if not ok:
        print(f"SKIP: {why}")
        return 0
    torch.set_num_threads(args.threads)
    folder = make_model(Path(args.model_dir), SHAPES["esm2_35M"])
    if args.kernels:
        kernels(folder, args.repeats)
    profile(folder, Path(args.data), args.proteins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
