"""Does the one batch runner (v0.4) cost anything against the v0.3 embedder it replaced?

The same proteins are embedded with the same checkpoint by the v0.3 code (a ``git archive`` of
``--old-rev`` on PYTHONPATH) and by this checkout's, in separate processes taking turns (old,
new, old, new …), one torch thread each; the figure is residues/s of ``Embedder.embed`` (model
loading excluded) and the ratio new/old per round, summarised by the median. The outputs are
compared too (max |diff|), since a refactor that is fast but different would be worse.

    .venv/bin/python benchmarks/bench_runner.py [--old-rev 1b83895] [--rounds 3] [--proteins 400]

Writes benchmarks/results/runner_vs_v03.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from protlm import Embedder
from protlm.demo import embedded_proteome
from protlm.data.fasta import read_fasta
from protlm.data.alphabet import CleaningPolicy
n, model, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
recs = list(read_fasta(embedded_proteome(), CleaningPolicy()))[:n]
seqs = [r.sequence for r in recs]
emb = Embedder(model)
emb.embed(seqs[:5])
t = time.perf_counter()
arrays = emb.embed(seqs)
dt = time.perf_counter() - t
np.save(out, np.concatenate([a.mean(axis=0)[None] for a in arrays]))
print(json.dumps({"seconds": dt, "residues": sum(map(len, seqs))}))
"""


def run(src: Path, n: int, model: str, out: Path) -> dict:
    env = {"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(n), model, str(out)], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-rev", default="1b83895", help="the v0.3 commit (default: the last v0.3 landing)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--proteins", type=int, default=400)
    ap.add_argument("--model", default=str(REPO / "checkpoints" / "protlm-swissprot-masked-xs"))
    args = ap.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_rev, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        rows = []
        for i in range(args.rounds):
            a = run(old / "src", args.proteins, args.model, Path(tmp) / "old.npy")
            b = run(REPO / "src", args.proteins, args.model, Path(tmp) / "new.npy")
            rate_old, rate_new = a["residues"] / a["seconds"], b["residues"] / b["seconds"]
            rows.append({"round": i, "old_residues_per_s": rate_old, "new_residues_per_s": rate_new,
                         "ratio_new_over_old": rate_new / rate_old})
            print(f"round {i}: v0.3 {rate_old:,.0f} res/s, runner {rate_new:,.0f} res/s, "
                  f"ratio {rate_new / rate_old:.3f}", flush=True)
        diff = float(np.abs(np.load(Path(tmp) / "old.npy") - np.load(Path(tmp) / "new.npy")).max())
    ratio = statistics.median(r["ratio_new_over_old"] for r in rows)
    result = {"old_rev": args.old_rev, "model": args.model, "proteins": args.proteins, "residues": a["residues"],
              "rounds": rows, "median_ratio_new_over_old": ratio, "max_abs_diff_per_protein_mean": diff}
    out = REPO / "benchmarks" / "results" / "runner_vs_v03.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median ratio runner/v0.3: {ratio:.3f}; max |diff| of per-protein means: {diff:.2e}; → {out}")


if __name__ == "__main__":
    main()
