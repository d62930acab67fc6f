"""UniRep's next-residue perplexity on the Swiss-Prot validation proteins, beside protlm's causal LM.

The validation proteins are the ones ``protlm prepare --dedup`` puts in the validation split of
Swiss-Prot 2014_01 (id hash below 1% with salt "protlm"; exact duplicate sequences removed,
the first occurrence in file order kept), in file order; like the pretraining run
(docs/pretraining.md) the first ``--proteins`` (256) of them, each cropped to its first 1,022
residues (the 1,024-token validation crop less <cls> and <eos>). The committed causal checkpoint
is scored on the same crops, so its number can be checked against the 17.109 of
docs/pretraining.md (equal: the same proteins). Every residue is a target, predicted from the
residues before it (the first from the start token alone); neither model is scored on its stop
token. UniRep's softmax has 25 classes (the residues, X, start, stop), the causal model's its
own vocabulary.

    nice .venv/bin/python experiments/unirep/perplexity.py [--data ../shared/data] [--proteins 256]
        [--sizes 1900,256,64] [--threads 2] [--out runs/unirep/perplexity.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FASTA = "pretraining/swissprot_2014_01_go_annotated.fasta.gz"
CROP = 1022


def validation_proteins(fasta: Path, n: int) -> list[tuple[str, str]]:
    import xxhash

    from protlm.data.fasta import read_fasta
    from protlm.data.prepare import PrepareOptions, split_seed

    opts = PrepareOptions()
    seed = split_seed(opts.split_salt)
    threshold = min(int(opts.valid_fraction * 2**64), 2**64 - 1)
    seen: set[bytes] = set()
    out = []
    for rec in read_fasta(fasta):  # cleaned as prepare's default: rare residues to X
        seq = rec.sequence
        key = xxhash.xxh3_128_digest(seq.encode())
        if key in seen:
            continue
        seen.add(key)
        if xxhash.xxh3_64_intdigest(rec.id.encode(), seed) < threshold:
            out.append((rec.id, seq))
            if len(out) == n:
                break
    return out


def causal_nll(folder: Path, seqs: list[str]) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([tok(s)["input_ids"]])  # <cls> residues <eos>
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            target = ids[0, 1:-1]  # the residues
            total -= float(logp[:-2].gather(1, target[:, None]).sum())
            count += len(target)
    return total, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--proteins", type=int, default=256)
    ap.add_argument("--sizes", default="1900,256,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--causal", default=str(REPO / "checkpoints" / "protlm-swissprot-causal-xs"))
    ap.add_argument("--out", default=str(REPO / "runs" / "unirep" / "perplexity.json"))
    args = ap.parse_args()

    import torch

    from protlm.models.unirep_weights import load_published

    torch.set_num_threads(args.threads)
    fasta = Path(args.data) / FASTA
    if not fasta.is_file():
        raise SystemExit(f"{fasta}: missing (the shared data set; --data DIR)")
    t = time.perf_counter()
    proteins = validation_proteins(fasta, args.proteins)
    seqs = [s[:CROP] for _, s in proteins]
    res = {"proteins": len(seqs), "residues": sum(map(len, seqs)), "first_ids": [p for p, _ in proteins[:5]],
           "select_s": time.perf_counter() - t, "models": {}}
    print(f"{len(seqs)} validation proteins, {res['residues']:,} residues (crop {CROP})", flush=True)
    nll, n = causal_nll(Path(args.causal), seqs)
    res["models"]["protlm-swissprot-causal-xs"] = {"perplexity": math.exp(nll / n), "targets": n}
    print(f"causal-xs: {math.exp(nll / n):.3f} over {n:,} residues", flush=True)
    for size in [int(x) for x in args.sizes.split(",")]:
        model, _ = load_published(size)
        t = time.perf_counter()
        total, count = 0.0, 0
        for i in range(0, len(seqs), 64):
            a, b = model.next_residue_nll(seqs[i:i + 64])
            total, count = total + a, count + b
        res["models"][f"unirep{size}"] = {"perplexity": math.exp(total / count), "targets": count,
                                          "seconds": time.perf_counter() - t}
        print(f"unirep{size}: {math.exp(total / count):.3f} over {count:,} residues", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".part")
    part.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(part, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
