"""The real CPU pretraining run on Swiss-Prot: a size sweep at equal compute, then MLM vs causal.

Steps (each a `protlm` command, printed before it runs; everything resumes if interrupted):

1. ``protlm prepare`` the Swiss-Prot 2014 file with ``--dedup`` (435,059 distinct sequences; the
   id-hash split puts ~1% in validation, and no validation sequence occurs in training);
2. the unigram baseline: the cross-entropy of the training split's amino-acid frequencies on the
   validation residues (the best a model without context can do);
3. the sweep: ESM-style MLM models of several sizes, every one trained for the same number of
   training FLOPs (``--budget-tflop``), with the curriculum of ``configs/pretrain/swissprot_cpu.yaml``;
4. the causal LM of the winning size (lowest final validation perplexity), same FLOPs and tokens;
5. ``curves.png`` and ``summary.json`` in ``--out``; with ``--publish``, the two final models are
   copied (safetensors only) to ``checkpoints/`` with a model card.

    .venv/bin/python experiments/swissprot_cpu/run.py --data ../shared/data --out runs/swissprot --publish
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "pretrain" / "swissprot_cpu.yaml"

# (name, layers, hidden, heads, ffn): head width 16 as in ESM-2 8M.
SIZES = [
    ("xs", 3, 96, 6, 384),
    ("s", 4, 128, 8, 512),
    ("m", 6, 192, 12, 768),
    ("l", 6, 320, 20, 1280),
]
TOKENS_PER_STEP = 8192
TYPICAL_LENGTH = 240  # mean tokens per sequence at the 256 crop (measured on the first run's log)


def flops_per_token(layers: int, hidden: int, ffn: int, length: int = TYPICAL_LENGTH) -> float:
    from protlm.pretrain.metrics import training_flops

    return training_flops(np.array([length]), arch="esm", layers=layers, hidden=hidden, ffn=ffn, vocab=33) / length


def sh(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train(name: str, arch: str, size: tuple, steps: int, shards: Path, out: Path) -> Path:
    _, layers, hidden, heads, ffn = size
    run = out / name
    if (run / "model" / "model.safetensors").exists():
        return run
    phase1 = max(1, steps // 10)
    cmd = [str(REPO / ".venv" / "bin" / "protlm"), "pretrain", "--config", str(CONFIG), "--out", str(run),
           "--shards", str(shards), f"model.arch={arch}", f"model.layers={layers}", f"model.hidden={hidden}",
           f"model.heads={heads}", f"model.ffn={ffn}", f"train.phases.0.steps={steps - phase1}",
           f"train.phases.1.steps={phase1}", f"train.eval_every={max(1, steps // 10)}",
           f"train.save_every={max(1, steps // 10)}", f"optimizer.warmup_steps={max(1, steps // 20)}"]
    if (run / "checkpoints" / "latest").exists():
        cmd.append("--resume")
    sh(cmd)
    return run


def unigram_baseline(shards: Path, n_valid: int) -> dict:
    from protlm.data.alphabet import ALPHABET
    from protlm.data.shards import ShardedDataset

    train = ShardedDataset(shards, "train")
    counts = np.zeros(len(ALPHABET))
    step = max(1, len(train) // 50_000)  # a 50k-sequence sample gives the frequencies to 4 digits
    for i in range(0, len(train), step):
        counts += np.bincount(train[i], minlength=len(ALPHABET))
    p = (counts + 1) / (counts + 1).sum()
    valid = ShardedDataset(shards, "valid")
    q = np.zeros(len(ALPHABET))
    for i in range(min(n_valid, len(valid))):
        q += np.bincount(valid[i][:1022], minlength=len(ALPHABET))  # the validation crop
    cross = float(-(q * np.log(p)).sum() / q.sum())
    entropy = float(-(p * np.log(p)).sum())
    return {"perplexity": math.exp(cross), "train_entropy_perplexity": math.exp(entropy)}


def read_metrics_(path: Path) -> list[dict]:
    from protlm.pretrain.metrics import read_metrics

    return read_metrics(path)


def final_eval(run: Path) -> dict:
    """Validation of the final checkpoint with the current evaluation code (all selected residues
    masked), so that every run is scored the same way whatever protlm version trained it."""
    import yaml

    from protlm.pretrain.checkpoint import latest_checkpoint
    from protlm.pretrain.config import load_config
    from protlm.pretrain.trainer import Trainer

    ckpt = latest_checkpoint(run)
    config = load_config(data=yaml.safe_load((ckpt / "protlm_pretrain.yaml").read_text()))
    return Trainer(config, run, resume=True, progress=False).evaluate()


def curves(runs: dict[str, Path]) -> dict[str, list[dict]]:
    from protlm.pretrain.metrics import read_metrics

    return {name: [r for r in read_metrics(path) if r["kind"] == "valid"] for name, path in runs.items()}


def plot(curves_: dict, baseline: float, path: Path, best: str, sweep: dict[str, tuple[int, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(sweep)
    axes[0].plot([sweep[n][0] for n in names], [sweep[n][1] for n in names], marker="o")
    for n in names:
        axes[0].annotate(n, sweep[n], textcoords="offset points", xytext=(5, 5))
    axes[0].set_xscale("log")
    axes[0].set_xlabel("parameters")
    axes[0].set_title("size sweep: final validation perplexity at equal FLOPs (MLM)")
    for name, points in curves_.items():
        if points:
            axes[1].plot([p["flops_seen"] / 1e12 for p in points], [p["val_ppl"] for p in points],
                         marker="o", ms=3, label=name)
    axes[1].set_xlabel("training compute (TFLOP)")
    axes[1].set_title(f"MLM vs causal at size {best}")
    for ax in axes:
        ax.axhline(baseline, color="grey", ls="--", label=f"unigram baseline ({baseline:.2f})")
        ax.set_ylabel("validation perplexity")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


MODEL_CARD = """# {folder}

A {kind} protein language model trained by protlm on one 2-core CPU. It is small on purpose: it
exists so that the embedding and task layers, the demo and users have a real, offline-loadable
protein LM. It is not a substitute for ESM-2 or ProtT5.

| | |
|---|---|
| architecture | `{cls}` ({layers} layers, {hidden} wide, {heads} heads, FFN {ffn}; {params:,} parameters) |
| objective | {objective} |
| tokenizer | ESM-2 vocabulary (33 tokens, `<cls>` … `<eos>`, no spaces) |
| data | Swiss-Prot 2014_01 (GO-annotated), `protlm prepare --dedup`: {train_seqs:,} training / {valid_seqs:,} validation sequences split by id hash; no validation sequence occurs in training |
| training | {steps} steps of {tps:,} padded tokens, crops of 256 then 1024 residues; AdamW, cosine schedule, fp32 |
| tokens seen | {tokens:,} (real tokens, padding excluded) |
| compute | {tflop:.1f} TFLOP ({wall:.0f} min of training steps on 2 CPU cores, validation excluded) |
| validation perplexity | **{ppl:.3f}** on {targets:,} {target_kind} of 256 validation proteins (crop 1024); unigram baseline {baseline:.3f} |

Load it with plain `transformers`:

```python
from transformers import AutoTokenizer, {auto}
tok = AutoTokenizer.from_pretrained("{folder}")
model = {auto}.from_pretrained("{folder}")
```

Regenerate it (prepare, sweep, both models, this card; about an hour on 2 cores):

```
.venv/bin/python experiments/swissprot_cpu/run.py --data ../shared/data --out runs/swissprot --publish
```

`protlm_pretrain.yaml` in this folder is the exact training config.
"""


def publish(run: Path, folder: Path, info: dict) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "model", tmp)
    (tmp / "README.md").write_text(MODEL_CARD.format(folder=f"checkpoints/{folder.name}", **info))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(REPO / "runs" / "swissprot"))
    ap.add_argument("--budget-tflop", type=float, default=24.0, help="training FLOPs per run (default 24 TFLOP)")
    ap.add_argument("--sizes", nargs="*", default=[s[0] for s in SIZES], help="sweep members (default all)")
    ap.add_argument("--publish", action="store_true", help="copy the final models to checkpoints/")
    args = ap.parse_args()

    fasta = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.fasta.gz"
    if not fasta.exists():
        print(f"SKIP: {fasta} not found")
        return 0
    out = Path(args.out)
    shards = out / "shards"
    t0 = time.time()
    if not (shards / "manifest.json").exists():
        sh([str(REPO / ".venv" / "bin" / "protlm"), "prepare", str(fasta), "--out", str(shards), "--dedup"])
    baseline = unigram_baseline(shards, 256)
    print(f"unigram baseline perplexity {baseline['perplexity']:.3f}", flush=True)

    sizes = {s[0]: s for s in SIZES if s[0] in args.sizes}
    steps = {name: max(20, round(args.budget_tflop * 1e12 / (TOKENS_PER_STEP * flops_per_token(s[1], s[2], s[4]))))
             for name, s in sizes.items()}
    runs, walls = {}, {}
    for name, size in sizes.items():
        t = time.time()
        runs[name] = train(f"sweep_{name}", "esm", size, steps[name], shards, out)
        walls[name] = time.time() - t
    finals = {name: final_eval(path)["val_ppl"] for name, path in runs.items()}
    best = min(finals, key=finals.get)
    print("sweep final validation perplexity: " + ", ".join(f"{k} {v:.3f}" for k, v in finals.items()), flush=True)
    t = time.time()
    causal = train(f"causal_{best}", "causal", sizes[best], steps[best], shards, out)
    walls["causal"] = time.time() - t
    all_curves = curves({f"mlm_{best}": runs[best], f"causal_{best}": causal})
    params = {name: next(r for r in read_metrics_(path) if r["kind"] == "start")["params"] for name, path in runs.items()}
    plot(all_curves, baseline["perplexity"], out / "curves.png", best,
         {name: (params[name], finals[name]) for name in runs})

    manifest = json.loads((shards / "manifest.json").read_text())
    summary = {"baseline": baseline, "budget_tflop": args.budget_tflop, "steps": steps, "best": best,
               "params": params,
               "sweep_final_ppl": finals, "wall_s_this_invocation": walls, "curves": all_curves,
               "train_s": {name: sum(r["elapsed_s"] for r in read_metrics_(path) if r["kind"] == "train")
                           for name, path in {**{f"sweep_{k}": v for k, v in runs.items()},
                                              f"causal_{best}": causal}.items()},
               "sizes": {k: dict(zip(("name", "layers", "hidden", "heads", "ffn"), v)) for k, v in sizes.items()},
               "total_wall_s": time.time() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.publish:
        from protlm.pretrain.metrics import read_metrics

        for kind, run, cls, auto, objective, target_kind in [
            ("masked", runs[best], "EsmForMaskedLM", "AutoModelForMaskedLM",
             "masked LM: 15% of residues, 80/10/10 mask/random/keep (ESM-2 layout: pre-LN, rotary)",
             "masked residues"),
            ("causal", causal, "GPTNeoXForCausalLM", "AutoModelForCausalLM",
             "causal (next-residue) LM, pre-LN + rotary, same block shape as the masked model",
             "next-residue predictions"),
        ]:
            records = read_metrics(run)
            start = next(r for r in records if r["kind"] == "start")
            last = [r for r in records if r["kind"] == "valid"][-1]
            _, layers, hidden, heads, ffn = sizes[best]
            # Training time from the log (sums the logged windows, so it is right across resumes).
            train_s = sum(r["elapsed_s"] for r in records if r["kind"] == "train")
            info = dict(kind=kind, cls=cls, auto=auto, objective=objective, target_kind=target_kind,
                        layers=layers, hidden=hidden, heads=heads, ffn=ffn, params=start["params"],
                        train_seqs=manifest["splits"]["train"]["records"] if "splits" in manifest else 0,
                        valid_seqs=manifest["splits"]["valid"]["records"] if "splits" in manifest else 0,
                        steps=last["step"], tps=TOKENS_PER_STEP, tokens=last["tokens_seen"],
                        tflop=last["flops_seen"] / 1e12, wall=train_s / 60,
                        ppl=last["val_ppl"], targets=last["val_targets"], baseline=baseline["perplexity"],
                        total_wall=summary["total_wall_s"] / 60)
            publish(run, REPO / "checkpoints" / f"protlm-swissprot-{kind}-{best}", info)
        shutil.copy(out / "curves.png", REPO / "docs" / "img" / "pretraining_curves.png")
    print(json.dumps({k: summary[k] for k in ("baseline", "steps", "best", "sweep_final_ppl", "train_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
