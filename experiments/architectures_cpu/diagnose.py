"""Diagnostics of the comparison's checkpoints behind docs/results.md (issue 13): per layer, how
much the states vary across residues; for the causal families, perplexity on real vs shuffled
validation proteins; protlm's embeddings against a direct transformers forward; and how much
residue identity a nearest-centroid read-out recovers from the last layer.

    .venv/bin/python experiments/architectures_cpu/diagnose.py --run runs/arch_cpu_24
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import protlm.models  # noqa: F401  (registers ProtTXL)
from protlm.data.fasta import read_fasta
from protlm.embed.runner import Embedder
from protlm.models.architectures import ARCHITECTURES

REPO = Path(__file__).resolve().parents[2]
PROTEIN = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKA"
           "LRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPF")  # 160 residues


def text(arch: str, seq: str) -> str:
    return " ".join(seq) if ARCHITECTURES[arch].vocab.space_separated else seq


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "arch_cpu_24"))
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--families", nargs="*", default=["bert", "albert", "esm", "causal", "txl", "xlnet", "t5"])
    args = ap.parse_args()
    fasta = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"
    real = [r.sequence[:254] for r in read_fasta(fasta)][:200]
    real = [s for s in real if len(s) >= 60][:60]
    rng = np.random.default_rng(0)
    shuffled = ["".join(rng.permutation(list(s))) for s in real]
    letters = np.array(list(PROTEIN))
    for arch in args.families:
        folder = Path(args.run) / arch / "model"
        tok = AutoTokenizer.from_pretrained(folder)
        base = AutoModel.from_pretrained(folder).eval()
        ids = tok(text(arch, PROTEIN), return_tensors="pt")
        with torch.no_grad():
            if arch == "t5":
                states = base.encoder(**ids, output_hidden_states=True).hidden_states
            else:
                states = base(**ids, output_hidden_states=True).hidden_states
        start = 0 if arch in ("xlnet", "t5") else 1  # the token before the residues, if any
        spread = [float(h[0, start:start + len(PROTEIN)].std(0).mean()) for h in states]
        emb = Embedder(str(folder)).embed([PROTEIN])[0]
        parity = float(np.abs(states[-1][0, start:start + len(PROTEIN)].numpy() - emb).max())
        cents = {c: emb[letters == c].mean(0) for c in set(PROTEIN)}
        guess = np.array([min(cents, key=lambda c: np.linalg.norm(x - cents[c])) for x in emb])
        line = (f"{arch}: spread across residues per layer {', '.join(f'{v:.2g}' for v in spread)}; "
                f"last-layer size {float(np.abs(emb).mean()):.2g}; protlm vs direct forward {parity:.1e}; "
                f"residue identity read-out {float((guess == letters).mean()):.2f}")
        if ARCHITECTURES[arch].objective == "causal":
            lm = AutoModelForCausalLM.from_pretrained(folder).eval()

            def ppl(seqs):
                total = count = 0
                with torch.no_grad():
                    for s in seqs:
                        x = torch.tensor([tok(text(arch, s))["input_ids"]])
                        logits = lm(input_ids=x).logits[0, :-2]
                        total += float(F.cross_entropy(logits.float(), x[0, 1:-1], reduction="sum"))
                        count += len(s)
                return float(np.exp(total / count))

            line += f"; perplexity real {ppl(real):.2f} vs shuffled {ppl(shuffled):.2f} ({len(real)} proteins)"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
