"""The ProtTrans paper's Fig. 9 on this machine: building MMseqs2 profiles vs embedding with each LM.

Seconds per protein, on the same proteins (the first ``--proteins`` of a fixed random sample,
seed 0, of the 20k Swiss-Prot speed set), for:

* **profiles** (``protlm.align.mmseqs``, the ``profile:`` embedder's work): one ``mmseqs search``
  of all proteins at once (``--num-iterations 2 -s 5.7 -e 1e-3``, the embedder's defaults), then
  ``result2profile``, ``profile2pssm``, ``convertalis`` and the feature arithmetic, against each
  database of ``--db-fractions`` (1.0: the whole 516,371-sequence Swiss-Prot file; smaller: a
  seeded random subset of it), at each ``--threads``. The one-off ``createdb`` + ``createindex``
  cost of each database is reported separately (measured when the cache was built: the time and
  thread count recorded in its ``meta.json``). Also: the same search one protein at a time for
  the first ``--single`` proteins (the fixed cost of a search, which batching amortises).
  Wall seconds, and the CPU seconds of the ``mmseqs`` processes.
* **LM embeddings** (``protlm.Embedder(...).embed``): ESM-2 8M and 35M shapes with random weights
  (the speed does not depend on the weights), the committed checkpoints, UniRep when its weights
  are installed, and the k-mer and one-hot baselines; torch at each ``--threads``. A model that
  would take more than ``--lm-budget-s`` (default 300 s) for all proteins is timed on the prefix
  that fits, and its seconds per residue scaled to the sample's mean length (recorded in the JSON).

The machine is shared, so wall seconds depend on the load; CPU seconds (the ``mmseqs``
processes' user+system time, and this process's for the LMs, all threads) are the comparison.
``--no-index`` adds the search of the full database without its precomputed index (the
prefilter then builds its k-mer table for every search, as a plain ``mmseqs search`` on a
FASTA-made database does).

The sample's proteins are Swiss-Prot entries, so each finds itself in the database: that is the
realistic case for a protein with a well-studied family, and costs what any hit costs.

    .venv/bin/python benchmarks/bench_profile_cost.py [--data DIR] [--proteins 200] [--threads 1 2] \
        [--db-fractions 1.0 0.1] [--single 5] [--no-index] [--lm-budget-s 300] [--skip-lm] \
        [--plot docs/img/profile_cost.png]

Writes ``benchmarks/results/profile_cost.json`` and the plot, and prints one Markdown table
(seconds per protein, projected hours for the 20k set, and each row's cost relative to the
profile search on the full database at the same thread count).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
SWISSPROT = "pretraining/swissprot_2014_01_go_annotated.fasta.gz"
SAMPLE = "pretraining/swissprot_2014_01_go_annotated.random20k_seed0.fasta"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def subset_fasta(full: Path, fraction: float, cache: Path) -> Path:
    """A seeded random ``fraction`` of the records of ``full`` (written once, then reused)."""
    out = cache / "subsets" / f"{full.name.split('.')[0]}.frac{fraction:g}.seed0.fasta"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = out.with_suffix(".tmp")
    with gzip.open(full, "rt") as f, open(tmp, "w") as w:
        header = None
        for line in f:
            if line.startswith(">"):
                header = line if rng.random() < fraction else None
                if header:
                    w.write(header)
            elif header:
                w.write(line)
    os.replace(tmp, out)
    return out


def unindexed_view(db, folder: Path):
    """The same MMseqs2 database without its ``.idx`` files (symlinks), so searches build the k-mer table."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in db.folder.iterdir():
        if f.name.startswith("db") and ".idx" not in f.name:
            (folder / f.name).symlink_to(f)
    view = copy.copy(db)
    view.prefix = folder / "db"
    return view


def time_profiles(seqs, db, threads, single):
    from protlm.align import mmseqs as mm

    params = mm.SearchParams()
    work = Path(tempfile.mkdtemp(prefix="bench_profile_"))
    try:
        c0, t0 = children_cpu(), time.perf_counter()
        feats = mm.search_chunk(seqs, db, params, work / "batch", threads)
        wall, cpu = time.perf_counter() - t0, children_cpu() - c0
        assert [a.shape[0] for a in feats] == [len(s) for s in seqs]
        depth = float(np.mean([a[:, mm.COLUMNS.index("depth")].mean() for a in feats]))
        one = []
        for i, s in enumerate(seqs[:single]):
            t = time.perf_counter()
            mm.search_chunk([s], db, params, work / f"one{i}", threads)
            one.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": wall, "cpu_s": cpu, "s_per_protein": wall / len(seqs), "cpu_s_per_protein": cpu / len(seqs),
            "mean_depth_feature": depth, "one_at_a_time_s": one,
            "one_at_a_time_median_s": float(np.median(one)) if one else None, "params": params.key()}


def lm_models(tmp: Path, data: Path) -> dict[str, str]:
    from bench_embed import SHAPES, make_model

    out = {}
    for name, shape in SHAPES.items():
        out[f"ESM-2 {name.split('_')[1]} shape (random weights)"] = str(make_model(tmp / name, shape))
    for ck in ("protlm-swissprot-masked-xs", "protlm-swissprot-causal-xs"):
        if (REPO / "checkpoints" / ck / "config.json").exists():
            out[f"checkpoints/{ck}"] = str(REPO / "checkpoints" / ck)
    out["unirep1900"] = "unirep1900"
    out["kmer (3-mer baseline)"] = "kmer"
    out["onehot"] = "onehot"
    return out


def time_lm(name, seqs, threads, budget_s):
    """Seconds per protein; a model slower than ``budget_s`` for all proteins (projected from the
    first 5) is timed on the prefix of the proteins that fits the budget (recorded)."""
    import torch

    from protlm.embed.runner import Embedder

    torch.set_num_threads(threads)
    try:
        emb = Embedder(name)
    except Exception as exc:  # e.g. UniRep's weights not installed here
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    emb.embed(seqs[:2])  # warm-up
    t = time.perf_counter()
    emb.embed(seqs[:5])
    per_residue = (time.perf_counter() - t) / sum(map(len, seqs[:5]))
    n, total = len(seqs), 0
    if per_residue * sum(map(len, seqs)) > budget_s:
        n = 0
        while n < len(seqs) and total + len(seqs[n]) <= budget_s / per_residue:
            total += len(seqs[n])
            n += 1
        n = max(n, 5)
    part = seqs[:n]
    c, t = own_cpu(), time.perf_counter()
    out = emb.embed(part)
    wall, cpu = time.perf_counter() - t, own_cpu() - c
    assert [a.shape[0] for a in out] == [len(s) for s in part]
    # a prefix has other lengths than the whole sample: scale by residues so rows stay comparable
    scale = sum(map(len, seqs)) / len(seqs) / sum(map(len, part))
    return {"wall_s": wall, "cpu_s": cpu, "proteins_timed": n, "residues_timed": sum(map(len, part)),
            "s_per_protein": wall * scale, "cpu_s_per_protein": cpu * scale, "dim": emb.dim}


def plot(rows, path: Path, n: int, residues: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "s_per_protein" in r]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.4))
    labels = [f"{r['method']} ({r['threads']} thr)" for r in rows]
    colors = ["#c0504d" if r["kind"] == "profile" else "#4f81bd" for r in rows]
    ax.barh(range(len(rows)), [r["cpu_s_per_protein"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds per protein (log scale)")
    ax.set_title(f"MMseqs2 profiles (red) vs LM embeddings (blue)\n{n} Swiss-Prot proteins, "
                 f"{residues:,} residues, CPU time", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--proteins", type=int, default=200)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--db-fractions", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--single", type=int, default=5, help="proteins also searched one at a time")
    ap.add_argument("--skip-lm", action="store_true")
    ap.add_argument("--no-index", action="store_true",
                    help="also search the full database without its index (1 thread, no one-at-a-time runs)")
    ap.add_argument("--lm-budget-s", type=float, default=300,
                    help="an LM slower than this for all proteins is timed on a prefix (per residue, scaled)")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "profile_cost.json"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "profile_cost.png"))
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --out-json")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.out_json).read_text())
        plot(saved["rows"], Path(args.plot), saved["proteins"], saved["residues"])
        return 0
    data = Path(args.data)
    if not (data / SAMPLE).exists() or not (data / SWISSPROT).exists():
        print(f"SKIP: {data / SAMPLE} or {data / SWISSPROT} not found")
        return 0
    if shutil.which(os.environ.get("PROTLM_MMSEQS", "mmseqs")) is None:
        print("SKIP: the mmseqs binary is not installed (apt-get install mmseqs2)")
        return 0
    from protlm.align import mmseqs as mm
    from protlm.data.fasta import read_fasta

    records = list(read_fasta(data / SAMPLE))
    order = np.random.default_rng(0).permutation(len(records))
    seqs = [records[i].sequence for i in order[:args.proteins]]
    residues = sum(map(len, seqs))
    print(f"{len(seqs)} proteins, {residues:,} residues; mmseqs {mm.mmseqs_version(mm.find_binary())}", flush=True)
    rows, dbs = [], {}
    for frac in args.db_fractions:
        fasta = data / SWISSPROT if frac >= 1 else subset_fasta(data / SWISSPROT, frac, mm.default_cache_dir())
        db = mm.TargetDatabase(fasta, threads=max(args.threads), index=True)
        meta = db.prepare(print)
        dbs[frac] = {"fasta": str(fasta), **meta}
        for th in args.threads:
            r = time_profiles(seqs, db, th, args.single)
            rows.append({"kind": "profile", "method": f"MMseqs2 profile, {meta['sequences']:,}-sequence DB",
                         "db_sequences": meta["sequences"], "db_fraction": frac, "threads": th, **r})
            print(f"[profile] db={meta['sequences']:,} threads={th}: {r['s_per_protein']:.3f} s/protein wall, "
                  f"{r['cpu_s_per_protein']:.3f} CPU-s/protein; one at a time {r['one_at_a_time_median_s']}",
                  flush=True)
        if args.no_index and frac >= 1:
            view_dir = Path(tempfile.mkdtemp(prefix="bench_profile_noidx_"))
            try:
                r = time_profiles(seqs, unindexed_view(db, view_dir), 1, 0)
            finally:
                shutil.rmtree(view_dir, ignore_errors=True)
            rows.append({"kind": "profile", "method": f"MMseqs2 profile, {meta['sequences']:,}-sequence DB, "
                         f"no precomputed index", "db_sequences": meta["sequences"], "db_fraction": -1,
                         "threads": 1, **r})
            print(f"[profile] no index, threads=1: {r['s_per_protein']:.3f} s/protein wall, "
                  f"{r['cpu_s_per_protein']:.3f} CPU-s/protein", flush=True)
    if not args.skip_lm:
        tmp = Path(tempfile.mkdtemp(prefix="bench_profile_lm_"))
        for label, name in lm_models(tmp, data).items():
            for th in args.threads:
                r = time_lm(name, seqs, th, args.lm_budget_s)
                rows.append({"kind": "lm", "method": label, "threads": th, **r})
                print(f"[lm] {label} threads={th}: {r.get('s_per_protein', r.get('skipped'))}", flush=True)
    base = {r["threads"]: r["cpu_s_per_protein"] for r in rows
            if r["kind"] == "profile" and r["db_fraction"] == max(args.db_fractions)}
    print(f"\n{len(seqs)} Swiss-Prot proteins ({residues:,} residues), this machine's CPU\n")
    print("| method | threads | wall s / protein | CPU s / protein | projected 20k proteins (CPU hours) "
          "| × the profile search (CPU; full DB, same threads) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "s_per_protein" not in r:
            print(f"| {r['method']} | {r['threads']} | skipped: {r['skipped'][:80]} | | | |")
            continue
        rel = r["cpu_s_per_protein"] / base[r["threads"]] if r["threads"] in base else float("nan")
        print(f"| {r['method']} | {r['threads']} | {r['s_per_protein']:.4f} | {r['cpu_s_per_protein']:.4f} "
              f"| {r['cpu_s_per_protein'] * 20000 / 3600:.2f} | {rel:.3g} |")
    print("\nOne-off database costs (not in the per-protein numbers):\n")
    print("| database | sequences | createdb s | createindex s | index threads | size on disk |")
    print("|---|---:|---:|---:|---:|---:|")
    for frac, m in dbs.items():
        print(f"| {Path(m['fasta']).name} | {m['sequences']:,} | {m['createdb_s']:.1f} | {m['createindex_s']:.1f} | "
              f"{m['index_threads']} | {m['bytes'] / 1e9:.2f} GB |")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d %H:%M"),
           "proteins": len(seqs), "residues": residues, "databases": dbs, "rows": rows, "args": vars(args)}
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    tmpj = Path(args.out_json).with_suffix(".tmp")
    tmpj.write_text(json.dumps(out, indent=1))
    os.replace(tmpj, args.out_json)
    plot(rows, Path(args.plot), len(seqs), residues)
    print(f"\nwrote {args.out_json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
