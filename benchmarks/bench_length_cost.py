"""The ProtTrans paper's Table 2 / Fig. 11 for every family protlm runs: seconds per protein by length and batch.

For each embedder family, random proteins (seeded, uniform over the 20 residues) of each length
in ``--lengths`` are embedded in batches of each size in ``--batches`` with
``protlm.Embedder(...).embed`` (the runner every command uses), after one warm-up batch; the
median of ``--repeats`` runs divided by the batch size is the cost per protein, in CPU seconds
(this process's, all threads, plus finished child processes: MMseqs2) and wall seconds. On a
shared machine the CPU seconds are the comparison; the table and plot show them. The runner's
own batch plan is bypassed (``tokens_per_batch`` and ``max_sequences`` set to the batch) so each
batch really is one forward pass; on a CPU the transformer families batch equal lengths only,
which these are.

Families (one shape for all the transformers, so the rows compare architectures, not sizes:
``--shape`` ``small`` = the ESM-2 8M shape, 6 layers × 320, or ``tiny``), random weights
(speed does not depend on them), saved as Hugging Face folders and loaded like a user's:

* ``esm`` (ESM-2 layout, rotary), ``bert`` (ProtBert), ``albert`` (ProtAlbert), ``t5`` (ProtT5
  encoder), ``xlnet`` (ProtXLNet), ``causal`` (GPT-NeoX class), ``txl`` (ProtTXL);
  BERT/ALBERT get 4,100 positions so no length here is windowed;
* ``unirep1900`` when its published weights are installed (a 1-layer mLSTM: sequential in
  length), ``kmer``, ``onehot``;
* ``profile`` only with ``--profile-db FASTA`` (an MMseqs2 search per batch; slow).

The default run is short (lengths 128 and 512, batches 1 and 16, one repeat); the paper's grid
is ``--lengths 128 256 512 1024 2048 4096 --batches 1 16 32``.

    .venv/bin/python benchmarks/bench_length_cost.py [--lengths 128 512] [--batches 1 16] [--repeats 1] \
        [--families esm bert ...] [--shape small] [--threads 1] [--profile-db FASTA] \
        [--plot docs/img/length_cost.png]

Writes ``benchmarks/results/length_cost.json`` and the plot (seconds per protein against length,
one line per family, one panel per batch size) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRANSFORMERS = ("esm", "bert", "albert", "t5", "xlnet", "causal", "txl")
OTHERS = ("unirep1900", "kmer", "onehot")


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (mmseqs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_family(arch: str, folder: Path, preset: str) -> str:
    """A random-weight model of ``arch`` in its Hugging Face layout, saved to ``folder``."""
    import torch

    from protlm.models.architectures import ModelSpec, build_model, get_architecture
    from protlm.models.vocab import build_tokenizer

    if (folder / "config.json").exists():
        return str(folder)
    torch.manual_seed(0)
    extra = {"max_positions": 4100} if arch in ("bert", "albert") else {}
    model = build_model(ModelSpec(arch=arch, preset=preset, **extra))
    if arch == "t5":  # ProtT5 is used as an encoder: save the encoder alone, as the published one
        from transformers import T5EncoderModel

        enc = T5EncoderModel(model.config)
        enc.load_state_dict(model.state_dict(), strict=False)
        model = enc
    model.save_pretrained(folder)
    build_tokenizer(get_architecture(arch).family).save_pretrained(folder)
    return str(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--families", nargs="+", default=list(TRANSFORMERS + OTHERS))
    ap.add_argument("--shape", default="small", choices=["tiny", "small"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile-db", help="also time profile:FASTA (an MMseqs2 search per batch)")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "length_cost.json"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "length_cost.png"))
    args = ap.parse_args()

    import torch

    from protlm.embed.runner import Embedder
    from protlm.embed.spec import EmbedOptions

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_length_"))
    names = {}
    for fam in args.families:
        names[fam] = build_family(fam, tmp / fam, args.shape) if fam in TRANSFORMERS else fam
    if args.profile_db:
        names["profile"] = f"profile:{args.profile_db},threads={args.threads}"
    rng = np.random.default_rng(5)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    results, skipped = [], {}
    for fam, name in names.items():
        for bs in args.batches:
            opts = EmbedOptions(tokens_per_batch=bs * (max(args.lengths) + 2), max_sequences=bs,
                                alone_above=max(args.lengths) + 1)
            try:
                emb = Embedder(name, opts)
            except Exception as exc:  # UniRep without its weights, …
                skipped[fam] = f"{type(exc).__name__}: {exc}"
                print(f"[{fam}] skipped: {skipped[fam]}", flush=True)
                break
            for length in args.lengths:
                batch = ["".join(rng.choice(letters, length)) for _ in range(bs)]
                emb.embed(batch[:1])  # warm-up
                ts, cs = [], []
                for _ in range(args.repeats):
                    if fam == "profile":  # a fresh search, not the profile cache
                        batch = ["".join(rng.choice(letters, length)) for _ in range(bs)]
                    c, t = cpu_seconds(), time.perf_counter()
                    out = emb.embed(batch)
                    ts.append(time.perf_counter() - t)
                    cs.append(cpu_seconds() - c)
                assert [a.shape[0] for a in out] == [length] * bs
                row = {"family": fam, "length": length, "batch": bs, "s_per_protein": statistics.median(ts) / bs,
                       "cpu_s_per_protein": statistics.median(cs) / bs, "runs": ts, "cpu_runs": cs, "dim": emb.dim,
                       "windowed": emb.stats.windowed}
                results.append(row)
                print(f"[{fam}] L={length} batch={bs}: {row['s_per_protein']:.4f} s/protein wall, "
                      f"{row['cpu_s_per_protein']:.4f} CPU s", flush=True)
    fams = list(dict.fromkeys(r["family"] for r in results))
    print(f"\nCPU seconds per protein ({args.shape} shape for the transformers, {args.threads} thread(s), "
          f"median of {args.repeats}; wall seconds in the JSON)\n")
    print("| family | batch | " + " | ".join(f"L={n}" for n in args.lengths) + " |")
    print("|---|---:|" + "---:|" * len(args.lengths))
    for fam in fams:
        for bs in args.batches:
            cells = {r["length"]: r["cpu_s_per_protein"] for r in results if r["family"] == fam and r["batch"] == bs}
            print(f"| {fam} | {bs} | " + " | ".join(f"{cells[n]:.4f}" if n in cells else "" for n in args.lengths)
                  + " |")
    for fam, why in skipped.items():
        print(f"\n{fam}: skipped ({why[:120]})")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d %H:%M"),
           "args": vars(args), "results": results, "skipped": skipped}
    tmpj = Path(args.out_json).with_suffix(".tmp")
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    tmpj.write_text(json.dumps(out, indent=1))
    os.replace(tmpj, args.out_json)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.batches), figsize=(4.2 * len(args.batches), 3.8), sharey=True, squeeze=False)
    for ax, bs in zip(axes[0], args.batches):
        for fam in fams:
            pts = sorted((r["length"], r["cpu_s_per_protein"]) for r in results
                         if r["family"] == fam and r["batch"] == bs and r["cpu_s_per_protein"] > 0)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=fam)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("protein length (residues)")
        ax.set_title(f"batch {bs}")
    axes[0][0].set_ylabel("CPU seconds per protein")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Embedding cost by length ({args.shape} shape, {args.threads} CPU thread(s))", fontsize=10)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"\nwrote {args.out_json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
