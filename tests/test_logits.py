"""``forward_tokens(logits=True)`` on the Hugging Face families (issue 20, item 1: one forward that
returns hidden states and, when asked, attention maps and logits): the LM head saved in the folder,
applied to the encoder's last state, equals what transformers' own LM class gives at every residue
position of a padded batch; a folder without a head and a family without one are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protlm.embed.registry import resolve
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError
from protlm.models.architectures import ModelSpec, build_model
from protlm.models.vocab import build_tokenizer

CPU = EmbedOptions(device="cpu")
SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV", "MSTNPKPQRKTKRNT", "ACDEFGHIKLMNPQRSTVWY"]
# family → (arch preset, tokenizer, extra model arguments)
FAMILIES = {
    "esm": ("esm", {}),
    "bert": ("protbert", {"max_positions": 128}),
    "albert": ("protbert", {"max_positions": 128}),
    "causal": ("esm", {}),
    "xlnet": ("protxlnet", {}),
}


def _folder(root: Path, arch: str) -> Path:
    tok, extra = FAMILIES[arch]
    torch.manual_seed(1)
    folder = root / arch
    build_model(ModelSpec(arch=arch, preset="tiny", **extra)).save_pretrained(folder)
    build_tokenizer(tok).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_logits_equal_transformers_lm_class_at_residue_positions(arch, tmp_path):
    import transformers

    folder = _folder(tmp_path, arch)
    backend = resolve(str(folder), CPU)
    with torch.inference_mode():
        out = backend.forward_tokens(SEQS, logits=True)
    ids, mask = backend.encode_batch(SEQS)
    config = transformers.AutoConfig.from_pretrained(folder)
    ref_model = getattr(transformers, config.architectures[0]).from_pretrained(folder).eval()
    with torch.inference_mode():
        ref = ref_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    first = len(backend.layout.prefix)
    assert out.logits.shape[:2] == (len(SEQS), max(map(len, SEQS)))
    assert out.logits.shape[2] == ref.shape[2]
    for row, s in enumerate(SEQS):
        torch.testing.assert_close(out.logits[row, :len(s)], ref[row, first:first + len(s)], atol=1e-5, rtol=1e-5)
        assert (out.logits[row, len(s):] == 0).all()  # padding rows are zero, as the hidden states'
    # the hidden states are unchanged by asking for logits
    with torch.inference_mode():
        plain = backend.forward_tokens(SEQS)
    torch.testing.assert_close(plain.hidden[-1], out.hidden[-1])


def test_a_folder_without_its_lm_head_is_refused(tmp_path):
    from transformers import EsmModel

    full = _folder(tmp_path, "esm")
    enc_folder = tmp_path / "encoder_only"
    EsmModel.from_pretrained(full, add_pooling_layer=False).save_pretrained(enc_folder)
    build_tokenizer("esm").save_pretrained(enc_folder)
    backend = resolve(str(enc_folder), CPU)
    with pytest.raises(InputError, match="no LM head"):
        backend.forward_tokens(SEQS[:1], logits=True)


def test_t5_encoder_has_no_per_residue_lm_head(tmp_path):
    from transformers import T5EncoderModel

    t5 = build_model(ModelSpec(arch="t5", preset="tiny"))
    enc = T5EncoderModel(t5.config)
    enc.save_pretrained(tmp_path / "t5")
    build_tokenizer("prott5").save_pretrained(tmp_path / "t5")
    backend = resolve(str(tmp_path / "t5"), CPU)
    with pytest.raises(ConfigError, match="no per-residue LM head"):
        backend.forward_tokens(SEQS[:1], logits=True)
