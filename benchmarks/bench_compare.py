"""`protlm benchmark --compare` on finished cells: reading the stored per-protein values vs
predicting every test set again (what protlm did before heads kept per_protein.json).

A suite of three tasks (per-residue classes with the CNN, per-protein classes and values with the
FFN) on generated proteins (600 per task: 400 train, 100 valid, 100 test, 60–400 residues) is
trained once with two embedders (one-hot and protlm's masked-xs checkpoint, frozen). Then the
suite is run again with ``--compare`` — every cell reused — alternately with the stored values
and with them removed (the old path: load the test data, read the cached features, run the head,
compute the per-protein values), ``--rounds`` times each.

    .venv/bin/python benchmarks/bench_compare.py [--rounds 3] [--threads 1]

Writes benchmarks/results/compare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AA = "ACDEFGHIKLMNPQRSTVWY"


def write_sets(root: Path, n: int = 600, seed: int = 0) -> dict[str, Path]:
    """biotrainer-style FASTA files: residue labels (helix-ish by residue type), a charge class and
    a hydrophobic fraction per protein."""
    rng = np.random.default_rng(seed)
    res, cls, val = [], [], []
    for i in range(n):
        seq = "".join(rng.choice(list(AA), int(rng.integers(60, 400))))
        split = "train" if i < 0.67 * n else "valid" if i < 0.83 * n else "test"
        labels = "".join("H" if c in "AELMQKR" else "E" if c in "VIYFWT" else "C" for c in seq)
        res.append(f">r{i} TARGET={labels} SET={split}\n{seq}\n")
        charge = sum(c in "KR" for c in seq) - sum(c in "DE" for c in seq)
        cls.append(f">c{i} TARGET={'pos' if charge > 0 else 'neg'} SET={split}\n{seq}\n")
        val.append(f">v{i} TARGET={sum(c in 'AILMFVW' for c in seq) / len(seq):.4f} SET={split}\n{seq}\n")
    out = {}
    for name, rows in (("res", res), ("cls", cls), ("val", val)):
        out[name] = root / f"{name}.fasta"
        out[name].write_text("".join(rows))
    return out


def config(path: Path, protocol: str, head: str, target: dict) -> dict:
    src = lambda split: {"file": str(path), "format": "biotrainer", "split": split}  # noqa: E731
    return {"name": f"{protocol}_{head}", "protocol": protocol, "embedder": "onehot",
            "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
            "targets": [target], "head": {"type": head},
            "train": {"epochs": 3, "lr": 0.01, "batch_size": 16, "patience": 8, "bootstrap": 1000}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "compare.json"))
    args = ap.parse_args()

    import torch
    import yaml

    torch.set_num_threads(args.threads)
    from protlm.tasks.suite import run_suite

    embedders = ["onehot", str(REPO / "checkpoints" / "protlm-swissprot-masked-xs")]
    pairs = [f"{embedders[1]}:onehot"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["PROTLM_CACHE"] = str(tmp / "cache")
        files = write_sets(tmp)
        suite = tmp / "suite"
        suite.mkdir()
        (suite / "res.yaml").write_text(yaml.safe_dump(config(files["res"], "residue_to_class", "cnn", {
            "name": "q3", "label": "target", "classes": list("HEC")})))
        (suite / "cls.yaml").write_text(yaml.safe_dump(config(files["cls"], "sequence_to_class", "ffn", {
            "name": "charge", "label": "target"})))
        (suite / "val.yaml").write_text(yaml.safe_dump(config(files["val"], "sequence_to_value", "ffn", {
            "name": "hydrophobic", "label": "target"})))
        out = tmp / "out"
        t = time.perf_counter()
        run_suite(suite, embedders, out, None)
        train_s = time.perf_counter() - t
        times: dict[str, list[float]] = {"stored": [], "predicted": []}
        rows = {}
        for _ in range(args.rounds):
            for variant in ("predicted", "stored"):
                if variant == "predicted":
                    for f in out.glob("*/*/per_protein.json"):
                        f.unlink()
                t = time.perf_counter()
                res = run_suite(suite, embedders, out, None, compare=pairs)
                times[variant].append(time.perf_counter() - t)
                rows[variant] = res["paired_differences"]
        assert rows["stored"] == rows["predicted"], "the two paths must give the same rows"
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {"rounds": args.rounds, "threads": args.threads, "train_s": train_s, "seconds": times, "median_s": med,
           "speedup": med["predicted"] / med["stored"], "rows": len(rows["stored"]),
           "cpu_flags": sorted({f for line in Path("/proc/cpuinfo").read_text().splitlines()
                                if line.startswith("flags") for f in line.split()[2:]} &
                               {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}),
           "loadavg": os.getloadavg()}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"suite trained once in {train_s:.1f} s; --compare rerun (every cell reused), median of {args.rounds}:")
    print(f"  predicting the test sets again: {med['predicted']:.2f} s")
    print(f"  stored per-protein values:      {med['stored']:.2f} s   ({doc['speedup']:.1f}x)")
    print(f"  identical paired-difference rows: {len(rows['stored'])}; load average {doc['loadavg']}")


if __name__ == "__main__":
    main()
