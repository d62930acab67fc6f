"""ProtTXL (protlm's Transformer-XL): segment recurrence is exact (segments with a long enough
memory == the whole sequence at once; the in-forward recurrence == the classical segment walk,
in numbers and gradients), the memory gets no gradient, Auto-class loading of saved folders,
engine parity (2 processes, resume) and segment-by-segment embedding against a direct forward.
Loss-falls and trainer checkpoint reload are in test_pretrain.py (parametrised over every
architecture)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import protlm.models  # noqa: F401  (registers model_type "prottxl" with the Auto classes)
from protlm.models.transfo_xl import ProtTXLConfig, ProtTXLForCausalLM, ProtTXLModel

sys.path.insert(0, str(Path(__file__).parent))
from family_checks import cli_embed_matches, make_shards, resume_matches, two_processes_match_one  # noqa: E402

SMALL = dict(vocab_size=30, d_model=32, n_layer=3, n_head=4, d_inner=64)
RECURRENCE = {"segment_length": 24, "mem_len": 24}  # engine tests: proteins of up to 96 tokens span 4 segments


def _model(segment_length, mem_len, seed=0, cls=ProtTXLForCausalLM, state=None):
    torch.manual_seed(seed)
    model = cls(ProtTXLConfig(**SMALL, segment_length=segment_length, mem_len=mem_len))
    if state is not None:
        model.load_state_dict(state)
    return model


def _walk(model, ids, chunk):
    mems, outs = None, []
    for start in range(0, ids.shape[1], chunk):
        out = model(ids[:, start:start + chunk], mems=mems, use_mems=True)
        mems = out.mems
        outs.append(out.logits)
    return torch.cat(outs, dim=1), mems


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("txl"))


def test_segments_with_enough_memory_equal_the_whole_sequence():
    ids = torch.randint(5, 30, (2, 41))
    whole = _model(100, 100).eval()
    reference = whole(ids).logits
    walker = _model(7, 100, state=whole.state_dict()).eval()
    walked, mems = _walk(walker, ids, 7)  # 6 segments, the memory holds everything before
    assert torch.allclose(walked, reference, atol=1e-5)
    assert torch.allclose(walker(ids).logits, reference, atol=1e-5)  # the same recurrence in one forward
    assert len(mems) == 3 and mems[0].shape == (2, 41, 32)
    short = _model(7, 5, state=whole.state_dict()).eval()  # a shorter memory forgets: different numbers
    assert not torch.allclose(short(ids).logits, reference, atol=1e-3)
    assert torch.allclose(short(ids[:, :7]).logits, reference[:, :7], atol=1e-5)  # the first segment agrees


def test_in_forward_recurrence_equals_the_segment_walk_with_gradients():
    ids = torch.randint(5, 30, (3, 30))
    model = _model(8, 5).train()  # dropout 0: train mode only switches memory bookkeeping
    walked, _ = _walk(model, ids, 8)
    walked.square().sum().backward()
    walk_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    parallel = model(ids).logits
    parallel.square().sum().backward()
    assert torch.allclose(parallel, walked, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, walk_grads[name], rtol=1e-4, atol=1e-6), name


def test_memory_receives_no_gradient():
    model = _model(8, 8)
    emb = (model.transformer.word_emb(torch.randint(5, 30, (1, 24))) * model.transformer.emb_scale).detach()
    emb.requires_grad_(True)
    out = model.transformer(inputs_embeds=emb)
    probe = torch.randn(8, 32)  # (a plain sum of LayerNorm outputs has no gradient at all)
    (grad,) = torch.autograd.grad((out.last_hidden_state[0, 16:24] * probe).sum(), emb)  # the third segment
    norms = grad[0].norm(dim=-1)
    assert norms[:16].max() == 0 and norms[16:].min() > 0  # earlier segments feed it only as memory
    model.eval()
    _, mems = _walk(model, torch.randint(5, 30, (1, 24)), 8)
    assert all(not m.requires_grad and m.shape == (1, 8, 32) for m in mems)


def test_left_padding_is_refused():
    model = _model(8, 8).eval()
    ids = torch.randint(5, 30, (2, 6))
    with pytest.raises(ValueError, match="right padding"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]))
    right = model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])).logits
    assert torch.allclose(right[0, :4], model(ids[:1, :4]).logits[0], atol=1e-5)  # pads come after


def test_saved_folder_loads_with_auto_classes(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    model = _model(8, 8).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "prottxl"
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())  # no remote code
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(model.state_dict())
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ProtTXLConfig)
    ids = torch.randint(5, 30, (2, 20))
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(lm, ProtTXLForCausalLM) and torch.equal(lm(ids).logits, model(ids).logits)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, ProtTXLModel)
    assert torch.equal(base(ids).last_hidden_state, model.transformer(ids).last_hidden_state)
    out = lm(ids, labels=ids)  # transformers' causal-LM convention: labels shifted inside
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 30), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual)


def test_two_processes_match_one_with_accumulation(shards, tmp_path):
    two_processes_match_one(shards, tmp_path, "txl", RECURRENCE)


def test_resume_gives_the_same_loss_curve(shards, tmp_path):
    resume_matches(shards, tmp_path, "txl", RECURRENCE)


def test_embedding_walks_segments_and_equals_a_direct_forward(shards, tmp_path):
    from protlm.embed.registry import resolve
    from protlm.embed.spec import EmbedOptions
    from protlm.pretrain.config import load_config
    from protlm.pretrain.trainer import Trainer

    from family_checks import family_config

    cfg = load_config(data=family_config(shards, "txl", {"segment_length": 16, "mem_len": 16},
                                         phases=[{"steps": 2, "max_length": 96, "tokens_per_batch": 512}]))
    folder = Path(Trainer(cfg, tmp_path / "run", progress=False).run()["model"])
    backend = resolve(str(folder), EmbedOptions(device="cpu"))
    assert backend.max_residues is None and backend.dim == 64
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ", "GSHMLEDPRVUZ", "W"]
    ours = backend.forward(seqs)  # one batch, right-padded, walked in 16-token segments
    plain = ProtTXLModel.from_pretrained(folder).eval()
    for seq, got in zip(seqs, ours):
        text = seq.translate(str.maketrans("UZOB", "XXXX"))
        ids = torch.from_numpy(backend.layout.encode(text))[None]
        assert ids.shape[1] == len(seq) + 2  # [CLS] … [SEP]
        with torch.no_grad():
            ref = plain(ids).last_hidden_state[0, 1:1 + len(seq)].numpy()  # one forward, whole protein
        assert got.shape == (len(seq), 64)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    layer0 = resolve(str(folder), EmbedOptions(device="cpu", layer=0)).forward(seqs[:1])[0]
    assert not np.allclose(layer0, ours[0])
    cli_embed_matches(folder, tmp_path, seqs, ours)


def test_activation_checkpointing_gives_the_same_losses(shards, tmp_path):
    from protlm.pretrain.config import load_config
    from protlm.pretrain.metrics import read_metrics
    from protlm.pretrain.trainer import Trainer

    from family_checks import family_config

    phases = [{"steps": 3, "max_length": 96, "tokens_per_batch": 1024}]
    losses = []
    for name, flag in (("a", False), ("b", True)):
        cfg = load_config(data=family_config(shards, "txl", RECURRENCE, phases=phases, activation_checkpointing=flag))
        Trainer(cfg, tmp_path / name, progress=False).run()
        losses.append([r["loss"] for r in read_metrics(tmp_path / name) if r["kind"] == "train"])
    assert len(losses[0]) == 3 and np.allclose(losses[0], losses[1], atol=1e-5)


def test_training_flops_count_bounded_attention():
    from protlm.pretrain.metrics import forward_flops

    shape = dict(arch="txl", layers=2, hidden=64, ffn=256, vocab=30, segment=32, memory=32)
    block = 2 * (4 * 64 * 64 + 2 * 64 * 256)
    one = forward_flops(np.array([20]), **shape)  # one segment, no memory: 6·width per query-key pair
    assert one == pytest.approx(20 * (2 * block + 2 * 64 * 30) + 2 * 6 * 64 * 20 * 20)
    per_token = [forward_flops(np.array([n]), **shape) / n for n in (128, 256, 1024)]
    assert per_token[0] == pytest.approx(per_token[1]) == pytest.approx(per_token[2])  # linear in length
    esm = [forward_flops(np.array([n]), **{**shape, "arch": "esm"}) / n for n in (128, 1024)]
    assert esm[1] > esm[0]  # full attention grows with length
