"""How deep are Swiss-Prot-only MMseqs2 profiles for each benchmark set? (docs/profiles.md, docs/results.md)

For every protein of the NetSurfP-2.0 splits (train: the same seeded ``--max-train`` sample
``protlm train`` draws with ``train.max_train``; validation; NEW364) and of CB513, the ``profile:``
embedder's features (from its cache when ``protlm train``/``benchmark`` already searched them;
otherwise they are searched now), summarised per set: the share of proteins with at least one
hit (some position aligned to another sequence), the mean number of aligned sequences per
position (from the ``depth`` column), and the share of positions covered by no hit.

    .venv/bin/python benchmarks/profile_depth.py [--data DIR] [--db FASTA] [--max-train 2000] [--threads 1]

Prints a Markdown table and writes ``benchmarks/results/profile_depth.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--db", default=None, help="database FASTA (default: DATA's Swiss-Prot 2014_01)")
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "profile_depth.json"))
    args = ap.parse_args()
    data = Path(args.data)
    db_path = Path(args.db) if args.db else data / "pretraining" / "swissprot_2014_01_go_annotated.fasta.gz"
    if not db_path.exists() or not (data / "secondary_structure").is_dir():
        print(f"SKIP: {db_path} or {data / 'secondary_structure'} not found")
        return 0
    from protlm.align import mmseqs as mm
    from protlm.data.benchmarks import load_benchmark

    ns = load_benchmark("netsurfp", data)
    train = [r for r in ns if r.split == "train"]
    if args.max_train and len(train) > args.max_train:  # the sample protlm train's train.max_train draws
        rng = np.random.default_rng(args.subset_seed)
        train = [train[i] for i in sorted(rng.choice(len(train), args.max_train, replace=False).tolist())]
    sets = {"train (sample)": train, "valid": [r for r in ns if r.split == "valid"],
            "NEW364": [r for r in ns if r.split == "test"], "CB513": load_benchmark("cb513", data)}
    builder = mm.ProfileBuilder(mm.TargetDatabase(db_path, threads=args.threads), threads=args.threads)
    d = mm.COLUMNS.index("depth")
    rows = {}
    for name, recs in sets.items():
        feats = builder.features([r.sequence for r in recs], progress=print)
        aligned = [10 ** (3 * f[:, d]) - 2 for f in feats]  # sequences other than the query per position
        rows[name] = {"proteins": len(recs),
                      "with_hits": float(np.mean([(a > 0.5).any() for a in aligned])),
                      "mean_aligned_per_position": float(np.mean(np.concatenate(aligned))),
                      "median_protein_mean_aligned": float(np.median([a.mean() for a in aligned])),
                      "positions_without_hits": float(np.mean(np.concatenate(aligned) < 0.5))}
    print(f"\nProfiles against {db_path.name} ({builder.params.key()}):\n")
    print("| set | proteins | with ≥ 1 hit | aligned sequences per position (mean) | per-protein mean, median "
          "| positions with no hit |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['proteins']} | {r['with_hits']:.1%} | {r['mean_aligned_per_position']:.1f} | "
              f"{r['median_protein_mean_aligned']:.1f} | {r['positions_without_hits']:.1%} |")
    Path(args.out_json).write_text(json.dumps({"database": str(db_path), "params": builder.params.key(),
                                               "sets": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
