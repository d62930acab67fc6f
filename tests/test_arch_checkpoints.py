"""The architecture comparison's small checkpoints (checkpoints/architectures-xs, issue 13): each
is a standard folder under 2 MB with a model card, loads with plain transformers (ProtTXL after
``import protlm.models``) and gives finite logits, and embeds through ``protlm`` (one row per residue).
Parity of protlm's embeddings with a direct forward is tested per family in test_xlnet.py,
test_transfo_xl.py and family_checks.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1] / "checkpoints" / "architectures-xs"
FAMILIES = sorted(p.name for p in ROOT.iterdir() if p.is_dir()) if ROOT.is_dir() else []
AUTO = {"BertForMaskedLM": "AutoModelForMaskedLM", "AlbertForMaskedLM": "AutoModelForMaskedLM",
        "EsmForMaskedLM": "AutoModelForMaskedLM", "GPTNeoXForCausalLM": "AutoModelForCausalLM",
        "ProtTXLForCausalLM": "AutoModelForCausalLM", "XLNetLMHeadModel": "AutoModelForCausalLM",
        "T5ForConditionalGeneration": "AutoModelForSeq2SeqLM"}
SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRERVGV",
        "MSHHWGYGKHNGPEHWHKDFPIAKGERQSPVDIDTHTAKYDPSLKPLSVSYDQATSLRILNNGHAFNVEFDDSQDKAVLKGGPLDGTYRLIQFHFHWGS"]


def test_the_comparison_ships_its_small_checkpoints():
    assert {"bert", "albert", "esm", "causal", "txl"} <= set(FAMILIES), FAMILIES
    for fam in FAMILIES:
        folder = ROOT / fam
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert size < 2 * 1024 * 1024, (fam, size)
        assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
        card = (folder / "README.md").read_text()
        assert "validation loss" in card and "experiments/architectures_cpu/run.py" in card


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_transformers_loads_it_and_protlm_embeds_the_same(family):
    import transformers

    import protlm.models  # noqa: F401  (registers ProtTXL with the Auto classes)
    from protlm.embed.runner import Embedder

    folder = ROOT / family
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, AUTO[arch]).from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    spaced = tok("A C")["input_ids"] != tok("AC")["input_ids"]  # ProtTrans vocabularies read spaced residues
    text = " ".join(SEQS[1]) if spaced else SEQS[1]
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        if arch == "T5ForConditionalGeneration":
            logits = model(input_ids=ids, decoder_input_ids=ids[:, :8]).logits
        else:
            logits = model(input_ids=ids).logits
    assert logits.shape[-1] >= 20 and torch.isfinite(logits).all()

    got = Embedder(str(folder)).embed(SEQS)
    for seq, e in zip(SEQS, got):
        assert e.shape == (len(seq), 96) and np.isfinite(e).all()
    assert not np.allclose(got[0][:50], got[1][:50])
