"""Pretraining throughput on this machine: protlm's training step vs a plain Hugging Face loop.

Model: the ESM-2 8M shape (6 layers, 320 wide, 20 heads, 1280 FFN), random weights, fp32, all
threads of the machine, AdamW. Two workloads, each measured side by side in one run, methods
interleaved step by step (round-robin), medians of the per-step times:

* ``fixed`` — identical batches for every method: 8 Swiss-Prot proteins of ≥ 510 residues,
  cropped to 510 (+ <cls>/<eos> = 512 tokens), the same 15% masking. This isolates the cost of
  the training step itself (no padding anywhere).
  - ``hf_sdpa``: ``EsmForMaskedLM`` (transformers' default SDPA attention) + ``torch.optim.AdamW``,
    ``loss = model(..., labels=...).loss; loss.backward(); opt.step()`` — the plain loop;
  - ``hf_eager``: the same with ``attn_implementation="eager"`` (transformers 4.x's default);
  - ``protlm``: ``Trainer.train_step`` (the code ``protlm pretrain`` runs), eager;
  - ``protlm_compiled``: the same with ``train.compile: true``.
* ``stream`` — the same Swiss-Prot sequences for both: the plain loop takes 8 random proteins per
  step padded to the longest (cropped at 512), as ``DataCollatorForLanguageModeling`` does;
  protlm batches the same data by a budget of 4,096 padded tokens with length bucketing. Only
  real tokens count towards tokens/s.

MFU = training FLOPs of the real tokens (3 × (2·N_body + 4·layers·width·L) per token) per second,
divided by the fp32 matmul ceiling measured in the same run (2048² matmuls).

    .venv/bin/python benchmarks/bench_pretrain.py [--data DIR] [--steps 4] [--rounds 2] [--no-compile]

Needs ``DATA/pretraining/swissprot_2014_01_go_annotated.random20k_seed0.fasta`` (prints SKIP
otherwise). Writes ``benchmarks/results/pretrain.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "pretrain.json"))
    args = ap.parse_args()

    fasta = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"
    if not fasta.exists():
        print(f"SKIP: {fasta} not found")
        return 0

    from transformers import EsmForMaskedLM

    from protlm.data.prepare import PrepareOptions, prepare
    from protlm.data.shards import ShardedDataset
    from protlm.models.architectures import build_config
    from protlm.models.vocab import VOCABS
    from protlm.pretrain.config import load_config
    from protlm.pretrain.metrics import measure_peak_flops, training_flops
    from protlm.pretrain.objectives import make_batch
    from protlm.pretrain.trainer import Trainer, token_loss

    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    prepare(fasta, tmp / "shards", PrepareOptions())
    data = ShardedDataset(tmp / "shards", "train")
    vocab = VOCABS["esm"]
    shape = dict(arch="esm", layers=6, hidden=320, ffn=1280, vocab=vocab.size)
    peak = measure_peak_flops(torch.device("cpu"), seconds=3.0)
    print(f"fp32 matmul ceiling: {peak / 1e9:.1f} GFLOP/s, threads {torch.get_num_threads()}", flush=True)

    def batch_of(indices, seed):
        return make_batch([data[int(i)] for i in indices], "mlm", vocab, max_length=512, mask_probability=0.15,
                          replace_mask=0.8, replace_random=0.1, rng=np.random.default_rng(seed))

    long_ids = np.flatnonzero(data.lengths >= 510)
    rng = np.random.default_rng(0)
    fixed = [batch_of(rng.choice(long_ids, 8, replace=False), s) for s in range(4)]
    stream_order = np.random.default_rng(1).permutation(len(data))

    def config(compile_: bool, tokens: int = 4096):
        return load_config(data={
            "model": {"arch": "esm", "preset": "small"},
            "data": {"shards": str(tmp / "shards"), "valid_sequences": 0},
            "optimizer": {"name": "adamw", "lr": 1e-4, "warmup_steps": 0, "schedule": "constant"},
            "train": {"phases": [{"steps": 100_000, "max_length": 512, "tokens_per_batch": tokens}],
                      "compile": compile_, "peak_flops": peak, "tensorboard": False},
        })

    # ---------------------------------------------------------------- methods
    def hf_method(attn: str, stream: bool):
        torch.manual_seed(0)
        model = EsmForMaskedLM._from_config(build_config(config(False).model), attn_implementation=attn)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        counter = {"k": 0}

        def step():
            k = counter["k"]
            counter["k"] += 1
            b = batch_of(stream_order[8 * k: 8 * k + 8], 100 + k) if stream else fixed[k % len(fixed)]
            out = model(**b.inputs, labels=b.labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            return b.lengths
        return step

    def protlm_method(compile_: bool, stream: bool):
        tr = Trainer(config(compile_), tmp / f"run_{compile_}_{stream}_{time.time_ns()}", progress=False)
        counter = {"k": 0}
        if not stream:
            def fixed_batches(step):
                return [fixed[counter["k"] % len(fixed)]]
            tr.micro_batches = fixed_batches

        def step():
            if stream:
                batches = tr.micro_batches(tr.step)
            else:
                batches = [fixed[counter["k"] % len(fixed)]]
            counter["k"] += 1
            tr.train_step()
            return np.concatenate([b.lengths for b in batches])
        return step

    workloads = {
        "fixed": {"hf_sdpa": lambda: hf_method("sdpa", False), "hf_eager": lambda: hf_method("eager", False),
                  "protlm": lambda: protlm_method(False, False)},
        "stream": {"hf_sdpa": lambda: hf_method("sdpa", True), "protlm": lambda: protlm_method(False, True)},
    }
    if not args.no_compile:
        workloads["fixed"]["protlm_compiled"] = lambda: protlm_method(True, False)
        workloads["stream"]["protlm_compiled"] = lambda: protlm_method(True, True)

    results: dict = {}
    for wname, methods in workloads.items():
        steppers = {}
        warmup = {}
        for name, make in methods.items():
            steppers[name] = make()
            t = time.perf_counter()
            steppers[name]()  # first step: allocation, and compilation for the compiled variant
            warmup[name] = time.perf_counter() - t
            print(f"[{wname}] {name}: first step {warmup[name]:.1f} s", flush=True)
        samples = {name: [] for name in methods}
        for r in range(args.rounds):
            # Round-robin one step at a time, so that the machine's drifting speed (shared host)
            # hits every method alike.
            for _ in range(args.steps):
                for name, step in steppers.items():
                    t = time.perf_counter()
                    lengths = step()
                    dt = time.perf_counter() - t
                    samples[name].append({"s": dt, "tokens": int(lengths.sum()),
                                          "flops": training_flops(lengths, **shape)})
            print(f"[{wname}] round {r + 1}/{args.rounds} done", flush=True)
        table = {}
        for name, runs in samples.items():
            tok_s = statistics.median(x["tokens"] / x["s"] for x in runs)
            mfu = statistics.median(x["flops"] / x["s"] / peak for x in runs)
            table[name] = {"tokens_per_s": tok_s, "mfu": mfu, "first_step_s": warmup[name],
                           "median_step_s": statistics.median(x["s"] for x in runs), "runs": runs}
        base = table["hf_sdpa"]["tokens_per_s"]
        for name in table:
            table[name]["ratio_vs_hf_sdpa"] = table[name]["tokens_per_s"] / base
        results[wname] = table

    # The ceiling is measured again at the end; the higher reading is the machine's ceiling, and
    # MFU is recomputed against it (the shared host's speed drifts by tens of percent).
    peak_end = measure_peak_flops(torch.device("cpu"), seconds=3.0)
    if peak_end > peak:
        for table in results.values():
            for row in table.values():
                row["mfu"] *= peak / peak_end
        peak = peak_end
    print(f"fp32 matmul ceiling (max of start and end): {peak / 1e9:.1f} GFLOP/s")
    print("\n| workload | method | tokens/s | MFU | × plain HF (SDPA) | first step (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for wname, table in results.items():
        for name, row in table.items():
            print(f"| {wname} | {name} | {row['tokens_per_s']:.0f} | {100 * row['mfu']:.1f}% | "
                  f"{row['ratio_vs_hf_sdpa']:.2f}× | {row['first_step_s']:.1f} |")
    out = {
        "benchmark": "pretrain", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "peak_flops": peak,
        "steps": args.steps, "rounds": args.rounds, "results": results,
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
