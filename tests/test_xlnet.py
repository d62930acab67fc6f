"""ProtXLNet: the permutation-LM batches (XLNet's definitions, any length), no information leak
through XLNet's two-stream attention, engine parity (2 processes, resume), and `protlm embed`
on a trained checkpoint against a plain transformers forward. Loss-falls and checkpoint-reload
are in test_pretrain.py (parametrised over every architecture)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protlm.models.architectures import ModelSpec, build_model
from protlm.models.vocab import VOCABS
from protlm.pretrain.objectives import IGNORE, PLM_MAX_SPAN, make_batch, plm_order, plm_spans

sys.path.insert(0, str(Path(__file__).parent))
from family_checks import cli_embed_matches, make_shards, resume_matches, two_processes_match_one  # noqa: E402

VOCAB = VOCABS["protxlnet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("xlnet"))


def _plm(lengths, seed=0, max_length=None):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 20, size=int(n)).astype(np.uint8) for n in lengths]
    return make_batch(seqs, "plm", VOCAB, max_length=max_length or max(lengths) + 2, mask_probability=0.15,
                      replace_mask=0.8, replace_random=0.1, rng=np.random.default_rng(seed + 1))


def test_spans_follow_the_collator_definition():
    rng = np.random.default_rng(0)
    total = predicted = longest = 0
    for n in rng.integers(1, 400, size=300):
        m = plm_spans(int(n), rng)
        total += n
        predicted += m.sum()
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]]))))[::2]
        # spans of at most 5, one per context of 6×span tokens; two spans of neighbouring
        # contexts can touch (end of one, start of the next), never three
        assert (runs <= 2 * PLM_MAX_SPAN).all()
        longest = max(longest, runs.max(initial=0))
    assert longest > PLM_MAX_SPAN  # (so the check above could fail)
    assert abs(predicted / total - 1 / 6) < 0.01
    order = plm_order(9, rng)  # odd length: first 4 positions, then the other 5
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:]) == [4, 5, 6, 7, 8]


def test_plm_batch_with_odd_lengths_and_token_budget_shapes():
    b = _plm([37, 60, 5, 1, 123])
    ids, perm, tm = b.inputs["input_ids"], b.inputs["perm_mask"], b.inputs["target_mapping"]
    att = b.inputs["attention_mask"]
    assert ids.shape == (5, 125) and perm.shape == (5, 125, 125) and tm.shape[::2] == (5, 125)
    assert tm.shape[1] == b.labels.shape[1] == int((b.labels != IGNORE).sum(1).max())
    for row, n in enumerate([37, 60, 5, 1, 123]):
        length = n + 2
        assert att[row].sum() == length
        assert ids[row, n:length].tolist() == [VOCAB.eos_id, VOCAB.id("<cls>")]  # seq <sep> <cls>
        k = int((b.labels[row] != IGNORE).sum())
        pos = tm[row, :k].argmax(-1)
        assert torch.equal(tm[row, :k].sum(-1), torch.ones(k)) and (tm[row, k:] == 0).all()
        assert (pos < n).all()  # only residues are predicted, never <sep>/<cls>/padding
        assert (ids[row, pos] == VOCAB.mask_id).all()
        masked = set(pos.tolist())
        p = perm[row]
        for t in masked:
            assert p[t, t] == 1  # a target never sees itself
        for t1 in masked:  # targets are totally ordered: of two, exactly one sees the other
            for t2 in masked - {t1}:
                assert p[t1, t2] + p[t2, t1] == 1
        unmasked = [j for j in range(n) if j not in masked]
        assert (p[:, unmasked] == 0).all()  # residues that are not predicted are seen by everyone
        assert (p[unmasked][:, sorted(masked) + [n, n + 1]] == 1).all()  # …and see no target nor special
        for f in (n, n + 1):  # <sep>, <cls> take part in the order: they see themselves
            assert p[f, f] == 0


def test_two_stream_attention_leaks_nothing():
    """The query stream of a target gets no gradient from its own input nor from later targets."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="xlnet", preset="tiny")).eval()
    b = _plm([40, 31], seed=3)
    emb = model.transformer.word_embedding(b.inputs["input_ids"]).detach().requires_grad_(True)
    kwargs = {k: v for k, v in b.inputs.items() if k != "input_ids"}
    logits = model(inputs_embeds=emb, **kwargs).logits
    tm, perm = b.inputs["target_mapping"], b.inputs["perm_mask"]
    checked = 0
    for row in range(2):
        for p in range(int((b.labels[row] != IGNORE).sum())):
            (grad,) = torch.autograd.grad(logits[row, p].sum(), emb, retain_graph=True)
            t = int(tm[row, p].argmax())
            hidden = perm[row, t].bool()
            norms = grad[row].norm(dim=-1)
            assert hidden[t] and norms[hidden].max() == 0, (row, t)
            assert norms[~hidden & b.inputs["attention_mask"][row].bool()].min() > 0
            assert grad[1 - row].abs().max() == 0  # nor from the other protein of the batch
            checked += 1
    assert checked >= 8


def test_two_processes_match_one_with_accumulation(shards, tmp_path):
    two_processes_match_one(shards, tmp_path, "xlnet")


def test_resume_gives_the_same_loss_curve(shards, tmp_path):
    resume_matches(shards, tmp_path, "xlnet")


def test_trained_checkpoint_embeds_like_a_plain_transformers_forward(shards, tmp_path):
    import transformers

    from protlm.embed.registry import resolve
    from protlm.embed.spec import EmbedOptions
    from protlm.pretrain.config import load_config
    from protlm.pretrain.trainer import Trainer

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pretrain import tiny_config

    cfg = load_config(data=tiny_config(shards, "xlnet", phases=[{"steps": 2, "max_length": 96,
                                                                 "tokens_per_batch": 512}]))
    folder = Path(Trainer(cfg, tmp_path / "run", progress=False).run()["model"])
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPRVUZ", "WCNFYQ"]
    backend = resolve(str(folder), EmbedOptions(device="cpu"))
    ours = backend.forward(seqs)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    plain = transformers.XLNetModel.from_pretrained(folder).eval()
    for seq, got in zip(seqs, ours):
        text = " ".join(seq.translate(str.maketrans("UZOB", "XXXX")))
        ids = torch.tensor([tok(text)["input_ids"]])
        assert ids[0, -2:].tolist() == [VOCAB.eos_id, VOCAB.id("<cls>")]
        with torch.no_grad():
            ref = plain(ids).last_hidden_state[0, :len(seq)].numpy()
        assert got.shape == (len(seq), plain.config.d_model)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    cli_embed_matches(folder, tmp_path, seqs, ours)
