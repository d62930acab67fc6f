"""Peak memory and speed of head training on 1,900-wide per-residue features: lazy vs in RAM.

Issue 16: reading a whole embedding HDF5 into RAM as float32 took 11.0 GB for 989k residues at
D = 1,900 (UniRep), and would need ≈ 21.6 GB for the full NetSurfP set (2.85M residues). protlm
now reads the features of each batch from disk (:mod:`protlm.tasks.features`). This script
measures, each configuration in its own child process (peak RSS = ``ru_maxrss`` of that child):

- ``full``: the SS recipe's head (CNN, Q3 + Q8 outputs, batch 32) for one epoch on a
  synthetic set of the full NetSurfP size (``--residues``, default 2.85M, protein lengths drawn
  from NetSurfP's own length distribution when ``--data`` has it, else log-normal), features in
  a float16 HDF5 file read lazily. The features are random numbers: memory and speed do not
  depend on the values (say so when quoting the numbers).
- ``small-*``: the same head, 2 epochs, on a subset of ``--small`` residues, three ways side by
  side: ``eager`` (today's way until this change: every protein read into RAM as float32 first),
  ``lazy-h5`` (read per batch from the float16 HDF5), ``lazy-cache`` (read per batch from a
  protlm feature-cache part, float32). The seconds per epoch give the speed ratio; the eager
  peak RSS shows what grows with the set.

    nice .venv/bin/python benchmarks/bench_features_memory.py [--residues 2850000] [--small 150000]
        [--dim 1900] [--data ../shared/data] [--scratch DIR] [--threads 1]

Writes benchmarks/results/features_memory.json. The scratch HDF5 (≈ 10.8 GB for the full size)
is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def netsurfp_lengths(data: Path) -> np.ndarray | None:
    path = data / "secondary_structure" / "sequences.fasta"
    if not path.is_file():
        return None
    lengths, n = [], 0
    with open(path) as fh:
        for line in fh:
            if line.startswith(">"):
                if n:
                    lengths.append(n)
                n = 0
            else:
                n += len(line.strip())
    if n:
        lengths.append(n)
    return np.array(lengths)


def make_lengths(total: int, source: np.ndarray | None, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    out, n = [], 0
    while n < total:
        length = int(rng.choice(source)) if source is not None else int(np.clip(rng.lognormal(5.4, 0.6), 20, 1500))
        length = min(length, total - n) if total - n >= 20 else length
        out.append(length)
        n += length
    return out


def write_h5(path: Path, lengths: list[int], dim: int) -> None:
    import h5py

    rng = np.random.default_rng(1)
    pool = rng.standard_normal(8_000_000 + 2000 * dim).astype(np.float16)  # sliced at random offsets
    with h5py.File(path, "w") as f:
        f.attrs["level"] = "residue"
        f.attrs["model"] = "synthetic-random"
        for i, n in enumerate(lengths):
            start = int(rng.integers(0, len(pool) - n * dim))
            f.create_dataset(f"p{i}", data=pool[start:start + n * dim].reshape(n, dim))


# --------------------------------------------------------------------------- child


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from protlm.tasks.build import load_task_config
    from protlm.tasks.features import ArrayFeatures, FeatureCache, FeatureSet, FeatureSource, read_part_slice
    from protlm.tasks.train import Encoded, fit_head

    lengths = json.loads(Path(args.lengths).read_text())
    ids = [f"p{i}" for i in range(len(lengths))]
    n_valid = max(2, len(ids) // 20)
    rng = np.random.default_rng(2)
    targets = [[rng.integers(0, 3, n) for n in lengths], [rng.integers(0, 8, n) for n in lengths]]
    config = load_task_config(data={
        "name": "bench", "protocol": "residue_to_class", "embedder": args.h5,
        "data": {"train": {"benchmark": "netsurfp"}},
        "targets": [{"name": "q3", "classes": list("HEC")}, {"name": "q8", "classes": list("HGIEBTSC")}],
        "head": {"type": "cnn", "hidden": 32, "kernel": 7},
        "train": {"epochs": args.epochs, "patience": 100, "batch_size": 32, "lr": 0.001}})
    t0 = time.perf_counter()
    source = FeatureSource(args.h5)
    # proteins are looked up by id here (the file is keyed p0, p1, …); sequences only give lengths
    fs = source.features(ids, ["A" * n for n in lengths])
    if args.mode == "eager":
        x = ArrayFeatures([np.asarray(fs[i], dtype=np.float32) for i in range(len(fs))], ids)
    elif args.mode == "lazy-cache":
        cache = FeatureCache(Path(args.scratch) / "cache")
        if not cache.parts():
            for s in range(0, len(ids), 64):
                cache.write(ids[s:s + 64], [np.asarray(fs[i], dtype=np.float32) for i in range(s, min(s + 64, len(ids)))])
        index = cache.index()
        locs = [index[k] for k in ids]
        x = FeatureSet(ids, lengths, fs.dim, lambda i: read_part_slice(*locs[i]), "cache")
    else:
        x = fs
    t_load = time.perf_counter() - t0

    def part(sel):
        if isinstance(x, ArrayFeatures):
            return ArrayFeatures([x._reader(i) for i in sel], [ids[i] for i in sel])
        return FeatureSet([ids[i] for i in sel], [lengths[i] for i in sel], x.dim, lambda j: x[sel[j]], "set")

    tr_idx, va_idx = list(range(n_valid, len(ids))), list(range(n_valid))
    train = Encoded(part(tr_idx), [[t[i] for i in tr_idx] for t in targets])
    valid = Encoded(part(va_idx), [[t[i] for i in va_idx] for t in targets])
    times = []
    last = [time.perf_counter()]

    def cb(epoch, tl, vl):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    fit_head(config, train, valid, x.dim, [3, 8], [(0.0, 1.0)] * 2, cb)
    source.close()
    return {"mode": args.mode, "proteins": len(ids), "residues": int(sum(lengths)), "dim": x.dim,
            "load_seconds": t_load, "epoch_seconds": times,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


# --------------------------------------------------------------------------- parent


def run_child(mode: str, h5: Path, lengths_file: Path, scratch: Path, epochs: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--h5", str(h5), "--lengths", str(lengths_file),
           "--scratch", str(scratch), "--epochs", str(epochs), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = time.perf_counter() - t
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--residues", type=int, default=2_850_000)
    ap.add_argument("--small", type=int, default=150_000)
    ap.add_argument("--dim", type=int, default=1900)
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "features_memory.json"))
    ap.add_argument("--child")
    ap.add_argument("--h5")
    ap.add_argument("--lengths")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="protlm-bench-features-"))
    scratch.mkdir(parents=True, exist_ok=True)
    source_lengths = netsurfp_lengths(Path(args.data))
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dim": args.dim, "threads": args.threads,
               "lengths_from": "NetSurfP-2.0 sequences.fasta" if source_lengths is not None else "log-normal",
               "features": "random float16 numbers (synthetic; memory and speed do not depend on the values)",
               "runs": []}
    try:
        small = make_lengths(args.small, source_lengths)
        (scratch / "small.json").write_text(json.dumps(small))
        t = time.perf_counter()
        write_h5(scratch / "small.h5", small, args.dim)
        print(f"small set: {len(small)} proteins, {sum(small):,} residues ({time.perf_counter() - t:.0f} s to write)",
              flush=True)
        for mode in ("eager", "lazy-h5", "lazy-cache"):
            results["runs"].append({"set": "small", **run_child(mode, scratch / "small.h5", scratch / "small.json",
                                                               scratch, 2, args.threads)})
        (scratch / "small.h5").unlink()
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        if args.residues > 0:
            full = make_lengths(args.residues, source_lengths)
            (scratch / "full.json").write_text(json.dumps(full))
            t = time.perf_counter()
            write_h5(scratch / "full.h5", full, args.dim)
            size = (scratch / "full.h5").stat().st_size
            print(f"full set: {len(full)} proteins, {sum(full):,} residues, {size / 1e9:.1f} GB float16 "
                  f"({time.perf_counter() - t:.0f} s to write)", flush=True)
            results["full_h5_gb"] = size / 1e9
            results["runs"].append({"set": "full", **run_child("lazy-h5", scratch / "full.h5", scratch / "full.json",
                                                              scratch, 1, args.threads)})
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    small_runs = {r["mode"]: r for r in results["runs"] if r["set"] == "small"}
    base = np.median(small_runs["eager"]["epoch_seconds"])
    print("\n| set | mode | proteins | residues | peak RSS (GB) | s/epoch | vs eager |\n|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        per = float(np.median(r["epoch_seconds"]))
        ratio = f"{per / base:.2f}" if r["set"] == "small" else "–"
        print(f"| {r['set']} | {r['mode']} | {r['proteins']:,} | {r['residues']:,} | {r['peak_rss_gb']:.2f} | "
              f"{per:.1f} | {ratio} |")
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n→ {args.out_json}")


if __name__ == "__main__":
    main()
