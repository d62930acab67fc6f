"""The papers' architecture comparison at a small CPU budget: every family, equal training FLOPs.

Every architecture protlm trains — BERT, ALBERT, pre-LN/ESM, causal (GPT-NeoX), ProtTXL,
ProtXLNet, T5 — gets the same body shape (the swissprot_cpu sweep's winning ``xs``: 3 layers,
96 wide, 6 heads, FFN 384; T5 has that many encoder *and* decoder layers), the same data (the
20,000-protein random Swiss-Prot sample of ../shared/data, ``protlm prepare``'d once, ~1% held
out by id hash), the same crops and token budget per step, and the same training FLOPs
(``--budget-tflop``; steps = budget / FLOPs per step of that family, from
:func:`protlm.pretrain.metrics.training_flops` at the typical crop length). Each run uses one
thread, under ``nice``.

    .venv/bin/python experiments/architectures_cpu/run.py --data ../shared/data --out runs/arch_cpu

Writes ``OUT/summary.json`` (per family: steps, tokens seen, FLOPs counted by the trainer,
final validation loss / perplexity and what they are measured on) and prints a Markdown table.
``--publish DIR`` copies every trained model folder under 2 MB to ``DIR/<family>`` with a model
card (README.md) written from the summary; larger ones are listed and left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHAPE = dict(layers=3, hidden=96, heads=6, ffn=384)
FAMILIES = ["bert", "albert", "esm", "causal", "txl", "xlnet", "t5"]
TOKENS_PER_STEP = 4096
MAX_LENGTH = 256
TYPICAL_LENGTH = 240
# a 256-token crop is read as two segments with memory; pre-LN blocks: the post-LN ProtTXL of the first
# comparison collapsed its last layer (docs/results.md, "ProtTXL's collapsed last layer"; checkpoints/
# architectures-xs/txl is that run, architectures-xs/txl-preln the fixed one)
TXL = {"segment_length": 128, "mem_len": 128, "pre_lnorm": True}
WHAT = {"mlm": "masked residues (15%, all masked)", "causal": "next residues", "plm": "permuted-order targets (1/6, spans ≤ 5)",
        "span": "corrupted residues (15%, decoder)"}


def flops_per_token(arch: str) -> float:
    from protlm.models.architectures import ARCHITECTURES
    from protlm.pretrain.metrics import training_flops

    vocab = ARCHITECTURES[arch].vocab.size
    extra = {"segment": TXL["segment_length"], "memory": TXL["mem_len"]} if arch == "txl" else {}
    return training_flops(np.array([TYPICAL_LENGTH]), arch=arch, vocab=vocab, layers=SHAPE["layers"],
                          hidden=SHAPE["hidden"], ffn=SHAPE["ffn"], **extra) / TYPICAL_LENGTH


def unigram_perplexity(shards: Path, n_valid: int) -> float:
    """Training-split amino-acid frequencies (add-one) scored on every residue of the first
    ``n_valid`` validation proteins (whole sequences; the models see ≤ 254-residue crops)."""
    import math

    from protlm.data.alphabet import ALPHABET
    from protlm.data.shards import ShardedDataset

    train, valid = ShardedDataset(shards, "train"), ShardedDataset(shards, "valid")
    counts = np.zeros(len(ALPHABET))
    for i in range(len(train)):
        counts += np.bincount(train[i], minlength=len(ALPHABET))
    p = (counts + 1) / (counts + 1).sum()
    q = np.zeros(len(ALPHABET))
    for i in range(min(n_valid, len(valid))):
        q += np.bincount(valid[i], minlength=len(ALPHABET))
    return math.exp(-(q * np.log(p)).sum() / q.sum())


def per_protein_losses(run: Path) -> dict[int, tuple[float, int]]:
    """Validation protein index → (summed loss, targets) of a finished run, with the trainer's
    own validation batches (same crops, masks and orders as its ``val_loss``)."""
    import torch
    import torch.nn.functional as F
    import yaml

    from protlm.pretrain.batching import BatchPlan
    from protlm.pretrain.checkpoint import latest_checkpoint
    from protlm.pretrain.config import load_config
    from protlm.pretrain.objectives import IGNORE
    from protlm.pretrain.trainer import Trainer

    config = load_config(data=yaml.safe_load((latest_checkpoint(run) / "protlm_pretrain.yaml").read_text()))
    tr = Trainer(config, run, resume=True, progress=False)
    n = min(config.data.valid_sequences, len(tr.valid_data))
    phase = tr.phase_at(max(tr.step - 1, 0))
    ph = config.train.phases[phase.index]
    max_length = config.data.valid_max_length or ph.max_length
    plan = BatchPlan(tr.valid_data.lengths[:n], max_length=max_length, n_special=tr.vocab.n_special,
                     tokens_per_batch=ph.tokens_per_batch, max_sequences=ph.max_sequences,
                     seed=config.train.seed + 1, phase=phase.index)
    tr.wrapped.eval()
    out = {}
    with torch.no_grad():
        for k in range(plan.batches_per_epoch()):
            _, _, indices = plan.get(k)
            rng = np.random.default_rng([config.train.seed, 999, phase.index, k])
            batch = tr._batch(phase, indices, rng, tr.valid_data, max_length, validation=True)
            logits = tr._forward(batch).float()
            labels = batch.eval_labels
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                                   reduction="none").reshape(labels.shape)
            for row, idx in enumerate(indices):
                out[int(idx)] = (float(loss[row].sum()), int((labels[row] != IGNORE).sum()))
    return out


def paired_difference(a: Path, b: Path, resamples: int = 2000) -> dict:
    """Validation loss of A minus B (nats per target) with a paired bootstrap 95% CI over proteins."""
    la, lb = per_protein_losses(a), per_protein_losses(b)
    keys = sorted(la)
    if sorted(lb) != keys or any(la[k][1] != lb[k][1] for k in keys):
        raise SystemExit(f"{a} and {b} were not scored on the same targets: no paired comparison")
    loss_a = np.array([la[k][0] for k in keys])
    loss_b = np.array([lb[k][0] for k in keys])
    count = np.array([la[k][1] for k in keys], dtype=np.float64)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(keys), size=(resamples, len(keys)))
    diffs = (loss_a[draws].sum(1) - loss_b[draws].sum(1)) / count[draws].sum(1)
    return {"a": str(a), "b": str(b), "proteins": len(keys), "targets": int(count.sum()),
            "difference": float((loss_a.sum() - loss_b.sum()) / count.sum()),
            "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]}


PUBLISH_LIMIT = 2 * 1024 * 1024
LOAD = {"mlm": "AutoModelForMaskedLM", "causal": "AutoModelForCausalLM", "plm": "AutoModelForMaskedLM",
        "span": "AutoModelForSeq2SeqLM"}
NAMES = {"bert": "BERT (ProtBert layout)", "albert": "ALBERT (ProtAlbert layout, shared layers)",
         "esm": "pre-LN BERT (ESM-2 layout, rotary; ProteinLM's pre-LN choice)",
         "causal": "GPT-NeoX causal LM (rotary)", "txl": "Transformer-XL (ProtTXL: relative positions, segment memory)",
         "xlnet": "XLNet (ProtXLNet: permutation LM, two-stream attention)", "t5": "T5 encoder-decoder (ProtT5 layout)"}


NOTES = {"txl": """
**Caveat: its last layer has collapsed.** At this recipe (post-LN Transformer-XL, lr 3·10⁻³) the
last layer's output is nearly the same vector at every residue (per-dimension spread across
residues ~7·10⁻⁵ for values of size ~0.2; ~0.2 in the first layer), so the model predicts little more than amino-acid
frequencies, and its default (last-layer) embeddings differ between residues by ~3·10⁻⁴ of
their size — too little for heads that take features as they are; `protlm embed` warns about it.
The first layer (`--layer 1`) keeps the residue signal at full scale.
"""}


def publish(out: Path, dest: Path, summary: dict, budget: float, unigram: float, argv: str) -> None:
    """Copy each family's model folder (under 2 MB) to ``dest/<family>`` with a model card."""
    dest.mkdir(parents=True, exist_ok=True)
    for arch, s in summary.items():
        model = out / arch / "model"
        size = sum(f.stat().st_size for f in model.iterdir() if f.is_file())
        if size > PUBLISH_LIMIT:
            print(f"not published: {arch} ({size / 2**20:.1f} MB > 2 MB)", flush=True)
            continue
        config = json.loads((model / "config.json").read_text())
        target = dest / arch
        tmp = dest / f".{arch}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp)
        load = LOAD[s["objective"]]
        from protlm.models.architectures import ARCHITECTURES

        vocab = ARCHITECTURES[arch].vocab
        text = '" ".join("MKTAYIAKQR")' if vocab.space_separated else '"MKTAYIAKQR"'
        spaced = "  # ProtTrans vocabulary: residues separated by spaces" if vocab.space_separated else ""
        extra = "import protlm.models  # registers ProtTXL with the Auto classes (no remote code)\n" if arch == "txl" else ""
        card = f"""# {arch}: the architecture comparison's {NAMES[arch]} model (protlm, CPU scale)

One of seven protein LMs pretrained by `experiments/architectures_cpu/run.py` (issue 13) with the
**same training compute** ({budget:g} TFLOP per family), the same body (3 layers, 96 wide, 6 heads,
FFN 384), the same data and the same crops and token budget per step. It is small on purpose: it
exists to compare architectures at equal compute, not to replace a published model.

| | |
|---|---|
| architecture | `{config["architectures"][0]}` (`model_type: {config["model_type"]}`; {s["params"]:,} parameters) |
| tokenizer | the `{vocab.family}` vocabulary ({len(vocab.tokens)} tokens{"; residues separated by spaces" if vocab.space_separated else ""}) |
| objective | {s["objective"]}: {WHAT[s["objective"]]} |
| data | 20,000-protein random sample of Swiss-Prot 2014_01 (`../shared/data/pretraining/swissprot_2014_01_go_annotated.random20k_seed0.fasta`), `protlm prepare --dedup`: 19,453 training / 172 validation sequences by id hash |
| training | {s["steps"]:,} steps of {TOKENS_PER_STEP:,} padded tokens, crops of ≤ {MAX_LENGTH} residues; AdamW, cosine schedule, fp32, one CPU thread |
| tokens seen | {s["tokens_seen"]:,} |
| compute | {s["flops_seen"] / 1e12:.1f} TFLOP counted by the trainer ({s["train_s"] / 60:.0f} min of training steps) |
| validation loss | **{s["val_loss"]:.3f} nats** (perplexity {s["val_ppl"]:.2f}) over {s["val_targets"]:,} {WHAT[s["objective"]]} of the first 128 validation proteins; the unigram baseline's perplexity is {unigram:.2f} |

Only families with the same targets compare on this number: bert, albert and esm (masked
residues), causal and txl (next residues); xlnet and t5 score other tasks. The comparison, with
paired bootstrap CIs and the benchmark suite on these checkpoints, is in protlm's docs/results.md.

```python
{extra}from transformers import AutoTokenizer, {load}
tok = AutoTokenizer.from_pretrained("{dest.as_posix()}/{arch}")
model = {load}.from_pretrained("{dest.as_posix()}/{arch}")
ids = tok({text}, return_tensors="pt")["input_ids"]{spaced}
```
{NOTES.get(arch, "")}
`protlm embed --model {dest.as_posix()}/{arch}` gives one {config.get("hidden_size") or config.get("d_model")}-wide row per residue (the
{"encoder's " if arch == "t5" else ""}last layer).

Regenerate (the whole comparison; `protlm_pretrain.yaml` here is the exact training config):

```
{argv}
```
"""
        (tmp / "README.md").write_text(card)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        print(f"published {target} ({size / 2**20:.2f} MB)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(REPO / "runs" / "arch_cpu"))
    ap.add_argument("--budget-tflop", type=float, default=1.0, help="training FLOPs per family (default 1 TFLOP)")
    ap.add_argument("--families", nargs="*", default=FAMILIES)
    ap.add_argument("--publish", metavar="DIR", help="copy each model folder under 2 MB to DIR/<family> with a model card")
    ap.add_argument("--paired", nargs="*", default=[], metavar="A:B",
                    help="after training: paired bootstrap CI of val. loss A − B (families scored on the same targets)")
    args = ap.parse_args()
    fasta = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"
    if not fasta.exists():
        print(f"SKIP: {fasta} not found")
        return 0
    out = Path(args.out)
    shards = out / "shards"
    protlm = str(REPO / ".venv" / "bin" / "protlm")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if not (shards / "manifest.json").exists():
        subprocess.run(["nice", protlm, "prepare", str(fasta), "--out", str(shards), "--dedup"], check=True, env=env)
    summary = {}
    unigram = unigram_perplexity(shards, 128)
    print(f"unigram baseline perplexity {unigram:.2f}", flush=True)
    for arch in args.families:
        from protlm.models.architectures import ARCHITECTURES
        from protlm.pretrain.metrics import read_metrics

        steps = max(10, round(args.budget_tflop * 1e12 / (TOKENS_PER_STEP * flops_per_token(arch))))
        run = out / arch
        cmd = ["nice", protlm, "pretrain", "--config", str(REPO / "configs" / "pretrain" / "tiny.yaml"),
               "--out", str(run), f"data.shards={shards}", f"model.arch={arch}",
               *(f"model.{k}={v}" for k, v in SHAPE.items()), "model.max_positions=300",
               "train.phases=[{steps: %d, max_length: %d, tokens_per_batch: %d}]" % (steps, MAX_LENGTH, TOKENS_PER_STEP),
               f"train.eval_every={steps}", f"train.save_every={steps}", f"train.log_every={max(1, steps // 10)}",
               "train.peak_flops=1e11", "train.tensorboard=false", f"optimizer.warmup_steps={max(1, steps // 20)}",
               "optimizer.schedule=cosine", "data.valid_sequences=128", f"data.valid_max_length={MAX_LENGTH}"]
        if arch == "txl":
            cmd += [f"model.extra.{k}={v}" for k, v in TXL.items()]
        if (run / "model" / "model.safetensors").exists():
            pass
        else:
            if (run / "checkpoints" / "latest").exists():
                cmd.append("--resume")
            print("+ " + " ".join(cmd), flush=True)
            t = time.time()
            subprocess.run(cmd, check=True, env=env)
            print(f"  {arch}: {time.time() - t:.0f} s", flush=True)
        records = read_metrics(run)
        valid = [r for r in records if r["kind"] == "valid"][-1]
        train = [r for r in records if r["kind"] == "train"]
        summary[arch] = {"objective": ARCHITECTURES[arch].objective, "steps": steps,
                         "params": next(r for r in records if r["kind"] == "start")["params"],
                         "tokens_seen": train[-1]["tokens_seen"], "flops_seen": train[-1]["flops_seen"],
                         "train_s": sum(r["elapsed_s"] for r in train), "val_loss": valid["val_loss"],
                         "val_ppl": valid["val_ppl"], "val_targets": valid["val_targets"],
                         "first_train_loss": train[0]["loss"], "last_train_loss": train[-1]["loss"]}
        (out / "summary.json").write_text(json.dumps({"budget_tflop": args.budget_tflop, "shape": SHAPE,
                                                      "unigram_perplexity": unigram,
                                                      "tokens_per_step": TOKENS_PER_STEP, "max_length": MAX_LENGTH,
                                                      "txl": TXL, "families": summary}, indent=2))
    for pair in args.paired:
        a, b = pair.split(":")
        d = paired_difference(out / a, out / b)
        summary.setdefault("_paired", {})[pair] = d
        print(f"{a} − {b}: {d['difference']:+.4f} nats per target, 95% CI [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] "
              f"({d['proteins']} proteins, {d['targets']:,} targets, paired bootstrap over proteins)", flush=True)
    if args.paired:
        meta = json.loads((out / "summary.json").read_text())
        meta["paired"] = summary.pop("_paired")
        (out / "summary.json").write_text(json.dumps(meta, indent=2))
    if args.publish:
        publish(out, Path(args.publish), summary, args.budget_tflop, unigram,
                ".venv/bin/python experiments/architectures_cpu/run.py " + " ".join(sys.argv[1:]))
    print("| family | objective | parameters | steps | tokens seen | TFLOP | val. loss | val. perplexity | over |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for arch, s in summary.items():
        print(f"| {arch} | {s['objective']} | {s['params']:,} | {s['steps']} | {s['tokens_seen']:,} | "
              f"{s['flops_seen'] / 1e12:.2f} | {s['val_loss']:.3f} | {s['val_ppl']:.2f} | "
              f"{s['val_targets']:,} {WHAT[s['objective']]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
