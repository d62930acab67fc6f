"""Embedding throughput on this machine: `protlm embed`'s engine vs the ProtTrans embedder approach.

Models: random-weight ESM-2 8M and 35M shapes (the speed does not depend on the weights), fp32,
all threads. Proteins: the first ``--proteins`` of a fixed random sample of the Swiss-Prot 20k
benchmark set (the same proteins for every method). Methods, interleaved in rounds, median time:

* ``hf_single``: a plain transformers forward, one protein at a time (``EsmModel``);
* ``prottrans``: the ProtTrans embedder script's batching — sorted by length (longest first),
  batches of ≤ 4,000 residues and ≤ 100 proteins, padded to the longest;
* ``protlm``: ``Embedder.embed`` (token budget 4,000 padded tokens, proteins > 1,000 alone);
* ``protlm_int8``: the same with dynamic int8 quantisation of the linear layers.

Then the paper's Table 2 shape (seconds per protein at lengths 128/256/512 × batch 1/16/32, 35M
shape), and the longest Swiss-Prot protein (35,213 residues, 8M shape): time and peak RSS in a
child process. MFU = forward FLOPs (2·N_body + 4·layers·width·L per token) / measured fp32
matmul ceiling (max of start and end of the run).

    .venv/bin/python benchmarks/bench_embed.py [--data DIR] [--proteins 2000] [--rounds 2] [--skip-long]

Writes ``benchmarks/results/embed.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"esm2_8M": dict(layers=6, hidden=320, heads=20, ffn=1280),
          "esm2_35M": dict(layers=12, hidden=480, heads=20, ffn=1920)}


def make_model(folder: Path, shape: dict) -> Path:
    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = build_model(ModelSpec(arch="esm", preset="small", **shape))
        model.save_pretrained(folder)
        build_tokenizer("esm").save_pretrained(folder)
    return folder


def forward_flops(lengths, shape) -> float:
    from protlm.pretrain.metrics import forward_flops as ff

    return ff(np.asarray(lengths) + 2, arch="esm", layers=shape["layers"], hidden=shape["hidden"],
              ffn=shape["ffn"], vocab=33)


def long_protein_child(folder: str, seq_file: str) -> None:
    from protlm.embed import Embedder

    seq = Path(seq_file).read_text().strip()
    emb = Embedder(folder)
    t = time.perf_counter()
    out = emb.embed([seq])[0]
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"length": len(seq), "seconds": dt, "peak_rss_bytes": rss, "shape": list(out.shape)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--proteins", type=int, default=2000)
    ap.add_argument("--proteins-35m", type=int, default=0, help="proteins for the 35M shape (default: --proteins)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=list(SHAPES))
    ap.add_argument("--skip-long", action="store_true", help="skip the 35,213-residue protein")
    ap.add_argument("--skip-table2", action="store_true")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "embed.json"))
    ap.add_argument("--long-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.long_child:
        long_protein_child(*args.long_child)
        return 0

    sample = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"
    if not sample.exists():
        print(f"SKIP: {sample} not found")
        return 0
    from transformers import EsmModel
    from transformers.utils import logging as hf_logging

    from protlm.data.fasta import read_fasta
    from protlm.embed import EmbedOptions, Embedder
    from protlm.pretrain.metrics import measure_peak_flops

    hf_logging.set_verbosity_error()
    records = list(read_fasta(sample))
    order = np.random.default_rng(0).permutation(len(records))
    seqs = [records[i].sequence for i in order[:args.proteins]]
    all_residues = sum(len(r.sequence) for r in records)
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    peak = measure_peak_flops(torch.device("cpu"), seconds=3.0)
    print(f"fp32 matmul ceiling: {peak / 1e9:.1f} GFLOP/s; {len(seqs)} proteins, "
          f"{sum(map(len, seqs)):,} residues", flush=True)

    results: dict = {"throughput": {}, "table2": {}, "long": None}
    all_seqs = seqs
    for name in args.models:
        shape = SHAPES[name]
        seqs = all_seqs[:args.proteins_35m] if (name == "esm2_35M" and args.proteins_35m) else all_seqs
        folder = make_model(tmp / name, shape)
        emb = Embedder(str(folder))
        emb_int8 = Embedder(str(folder), EmbedOptions(int8=True))
        hf = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
        lut = emb.layout

        def hf_single():
            with torch.inference_mode():
                for s in seqs:
                    ids = torch.from_numpy(lut.encode(s))[None]
                    hf(input_ids=ids).last_hidden_state

        def prottrans():
            idx = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            batch: list[int] = []

            def run(b):
                enc = [lut.encode(seqs[i]) for i in b]
                width = max(map(len, enc))
                ids = np.full((len(b), width), lut.pad_id)
                mask = np.zeros((len(b), width), dtype=np.int64)
                for r, e in enumerate(enc):
                    ids[r, :len(e)] = e
                    mask[r, :len(e)] = 1
                with torch.inference_mode():
                    hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state

            for i in idx:
                n = len(seqs[i])
                if batch and (sum(len(seqs[j]) for j in batch) + n > 4000 or len(batch) >= 100):
                    run(batch)
                    batch = []
                batch.append(i)
            if batch:
                run(batch)

        methods = {"hf_single": hf_single, "prottrans": prottrans, "protlm": lambda: emb.embed(seqs),
                   "protlm_int8": lambda: emb_int8.embed(seqs)}
        times = {m: [] for m in methods}
        for r in range(args.rounds):
            for m, fn in methods.items():
                t = time.perf_counter()
                fn()
                times[m].append(time.perf_counter() - t)
                print(f"[{name}] round {r + 1} {m}: {times[m][-1]:.1f} s", flush=True)
        flops = forward_flops([len(s) for s in seqs], shape)
        residues = sum(map(len, seqs))
        results["throughput"][name] = {m: {"seconds": statistics.median(t), "runs": t,
                                           "residues_per_s": residues / statistics.median(t),
                                           "mfu_vs_start_peak": flops / statistics.median(t) / peak}
                                       for m, t in times.items()}
        if not args.skip_table2 and name == "esm2_35M":
            rng = np.random.default_rng(5)
            letters = list("ACDEFGHIKLMNPQRSTVWY")
            for length in (128, 256, 512):
                for bs in (1, 16, 32):
                    batch = ["".join(rng.choice(letters, length)) for _ in range(bs)]
                    emb.embed(batch[:1])  # warm-up
                    ts = []
                    for _ in range(2):
                        t = time.perf_counter()
                        emb.embed(batch)
                        ts.append(time.perf_counter() - t)
                    results["table2"][f"{length}x{bs}"] = {"length": length, "batch": bs,
                                                          "s_per_protein": statistics.median(ts) / bs}
                    print(f"[table2] L={length} batch={bs}: {statistics.median(ts) / bs:.4f} s/protein", flush=True)
    if not args.skip_long and "esm2_8M" in args.models:
        full = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.fasta.gz"
        longest = max(read_fasta(full), key=lambda r: len(r.sequence))
        seq_file = tmp / "longest.txt"
        seq_file.write_text(longest.sequence)
        out = subprocess.run([sys.executable, __file__, "--long-child", str(tmp / "esm2_8M"), str(seq_file)],
                             capture_output=True, text=True)
        results["long"] = {"id": longest.id, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(f"[long] {longest.id}: {results['long']}", flush=True)
    peak_end = measure_peak_flops(torch.device("cpu"), seconds=3.0)
    peak = max(peak, peak_end)
    print(f"\nfp32 matmul ceiling (max of start and end): {peak / 1e9:.1f} GFLOP/s")
    print("\n| model | method | residues/s | MFU | × best baseline | projected 20k set |")
    print("|---|---|---:|---:|---:|---:|")
    for name, table in results["throughput"].items():
        used = all_seqs[:args.proteins_35m] if (name == "esm2_35M" and args.proteins_35m) else all_seqs
        flops = forward_flops([len(s) for s in used], SHAPES[name])
        table_residues = sum(map(len, used))
        best = max(table["hf_single"]["residues_per_s"], table["prottrans"]["residues_per_s"])
        for m, row in table.items():
            row["mfu"] = flops / row["seconds"] / peak
            row["ratio_vs_best_baseline"] = row["residues_per_s"] / best
            row["projected_20k_s"] = all_residues / row["residues_per_s"]
            print(f"| {name} | {m} | {row['residues_per_s']:,.0f} | {100 * row['mfu']:.1f}% | "
                  f"{row['ratio_vs_best_baseline']:.2f}× | {row['projected_20k_s'] / 60:.1f} min |")
    if results["table2"]:
        print("\n| length | batch 1 | batch 16 | batch 32 |  (s per protein, ESM-2 35M shape)")
        print("|---:|---:|---:|---:|")
        for length in (128, 256, 512):
            cells = [results["table2"][f"{length}x{b}"]["s_per_protein"] for b in (1, 16, 32)]
            print(f"| {length} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    out = {"benchmark": "embed", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "peak_flops": peak, "proteins": len(all_seqs), "residues": sum(map(len, all_seqs)),
           "proteins_35m": args.proteins_35m or len(all_seqs),
           "set_residues": all_residues, "results": results, "command": "python " + " ".join(sys.argv)}
    Path(args.out_json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
