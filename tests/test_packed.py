"""Packed variable-length batches (protlm.embed.packed): the same numbers as protein at a time.

Reference: the plain transformers module run on one protein at a time (no padding, no mask).
Tiny random-weight models in the layouts of ESM-2 (rotary), ESM-1b (absolute positions with a
60-residue limit, to test windows) and ProtBert.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protlm.embed import EmbedOptions, Embedder
from protlm.embed.packed import ATTENTION, Packed, pack, packed_hidden, packing_support
from protlm.errors import ConfigError, InputError
from protlm.models.architectures import ModelSpec, build_model
from protlm.models.vocab import build_tokenizer

TOL = 1e-5
LETTERS = list("ACDEFGHIKLMNPQRSTVWY")


def _random_seqs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(LETTERS, n)) for n in lengths]


# lengths 1 and 2, a repeated length, and one longer than ESM-1b's 60-residue limit
MIXED = _random_seqs([33, 1, 57, 7, 33, 2, 120, 19])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed_models")

    def save(model, tokenizer, name):
        model.save_pretrained(root / name)
        build_tokenizer(tokenizer).save_pretrained(root / name)
        return str(root / name)

    torch.manual_seed(0)
    return {
        "esm": save(build_model(ModelSpec(arch="esm", preset="tiny")), "esm", "esm2"),
        "esm1b": save(build_model(ModelSpec(arch="esm", preset="tiny", max_positions=64,
                                            extra={"position_embedding_type": "absolute"})), "esm", "esm1b"),
        "protbert": save(build_model(ModelSpec(arch="bert", preset="tiny", max_positions=1024)), "protbert",
                         "protbert"),
        "causal": save(build_model(ModelSpec(arch="causal", preset="tiny")), "esm", "causal"),
    }


def one_at_a_time(emb: Embedder, seqs, layer: int = -1) -> list[np.ndarray]:
    """What the transformers module gives for each protein alone (its residue rows)."""
    model, first = emb.backend.model, len(emb.backend.layout.prefix)
    out = []
    with torch.inference_mode():
        for s in seqs:
            ids = torch.from_numpy(emb.backend.layout.encode(s))[None]
            res = model(input_ids=ids, output_hidden_states=True)
            h = res.last_hidden_state if layer == -1 else res.hidden_states[layer]
            out.append(h[0, first:first + len(s)].numpy())
    return out


def max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["esm", "protbert"])
@pytest.mark.parametrize("layer", [-1, 1])  # the last layer and a middle one (tiny models have 2)
def test_packed_batches_equal_protein_at_a_time(models, name, layer):
    emb = Embedder(models[name], EmbedOptions(device="cpu", layer=layer))
    assert emb.backend.packed_batches, emb.backend.packing_unavailable
    batches = emb.plan([len(s) for s in MIXED])
    assert any(len({len(MIXED[i]) for i in b}) > 1 for b in batches)  # mixed lengths really share a batch
    got = emb.embed(MIXED)
    ref = one_at_a_time(emb, MIXED, layer)
    assert [g.shape for g in got] == [(len(s), emb.dim) for s in MIXED]
    assert max_diff(got, ref) < TOL
    means = emb.embed_proteins(MIXED)
    assert np.abs(means - np.stack([r.mean(0) for r in ref])).max() < TOL


def test_a_protein_over_the_position_limit_is_windowed_and_the_rest_packed(models):
    emb = Embedder(models["esm1b"], EmbedOptions(device="cpu", window_overlap=20))
    assert emb.backend.packed_batches and emb.max_residues == 60
    got = emb.embed(MIXED)
    assert emb.stats.windowed == 1  # the 120-residue protein
    today = Embedder(models["esm1b"], EmbedOptions(device="cpu", window_overlap=20, equal_length_batches=True))
    assert not today.backend.packed_batches
    assert max_diff(got, today.embed(MIXED)) < TOL
    short = [s for s in MIXED if len(s) <= 60]
    assert max_diff([g for g, s in zip(got, MIXED) if len(s) <= 60], one_at_a_time(emb, short)) < TOL


@pytest.mark.parametrize("name", ["esm1b", "protbert"])
def test_absolute_positions_restart_at_every_protein(models, name):
    """Two copies of one protein packed together must each equal the protein alone; with
    positions running on across the batch (the bug this guards against) the second copy differs."""
    emb = Embedder(models[name], EmbedOptions(device="cpu"))
    model, layout = emb.backend.model, emb.backend.layout
    seq = MIXED[7]  # 19 residues: two copies with running positions still fit ESM-1b's 64-position table
    enc = [layout.encode(seq), layout.encode(seq)]
    alone = one_at_a_time(emb, [seq])[0]
    first, n = len(layout.prefix), len(enc[0])
    right = pack(enc)
    with torch.inference_mode():
        h = packed_hidden(model, right)[-1].numpy()
        wrong = Packed(right.tokens, right.cu_seqlens, torch.arange(2 * n), right.segment)
        h_wrong = packed_hidden(model, wrong)[-1].numpy()
    for start in (first, n + first):
        assert np.abs(h[start:start + len(seq)] - alone).max() < TOL
    assert np.abs(h_wrong[n + first:n + first + len(seq)] - alone).max() > 1e-3  # the check has teeth


def test_rotary_positions_restart_and_attention_stays_in_each_protein(models):
    """Rotary angles are relative: inside one protein's attention a constant offset of its
    positions cancels in q·k, so for ESM-2 the positions must restart (checked on pack) and,
    what actually bites, no protein may attend to another: the same batch run as one segment
    differs."""
    emb = Embedder(models["esm"], EmbedOptions(device="cpu"))
    model, layout = emb.backend.model, emb.backend.layout
    seqs = [MIXED[2], MIXED[0], MIXED[1]]
    enc = [layout.encode(s) for s in seqs]
    right = pack(enc)
    assert right.positions.tolist() == [i for e in enc for i in range(len(e))]
    assert right.cu_seqlens == [0, len(enc[0]), len(enc[0]) + len(enc[1]), sum(map(len, enc))]
    alone = one_at_a_time(emb, seqs)
    first = len(layout.prefix)
    with torch.inference_mode():
        h = packed_hidden(model, right)[-1].numpy()
        one_segment = [0, right.cu_seqlens[-1]]
        crossing = Packed(right.tokens, one_segment, right.positions, torch.zeros_like(right.segment))
        h_crossing = packed_hidden(model, crossing)[-1].numpy()
    rows = [slice(c + first, c + first + len(s)) for c, s in zip(right.cu_seqlens, seqs)]
    assert max(np.abs(h[r] - a).max() for r, a in zip(rows, alone)) < TOL
    assert np.abs(h_crossing[rows[1]] - alone[1]).max() > 1e-3  # the check has teeth


def test_token_dropout_rescales_by_each_proteins_own_mask_ratio(models):
    emb = Embedder(models["esm"], EmbedOptions(device="cpu"))
    model, layout = emb.backend.model, emb.backend.layout
    assert model.config.token_dropout
    masked = layout.encode(MIXED[0])
    masked[[3, 9, 10]] = model.config.mask_token_id
    enc = [masked, layout.encode(MIXED[2]), layout.encode(MIXED[1])]
    p = pack(enc)
    with torch.inference_mode():
        h = packed_hidden(model, p, layers=(-1, 0))
        for i, e in enumerate(enc):
            ref = model(input_ids=torch.from_numpy(e)[None], output_hidden_states=True)
            s, t = p.cu_seqlens[i], p.cu_seqlens[i + 1]
            assert (h[-1][s:t] - ref.last_hidden_state[0]).abs().max() < TOL
            assert (h[0][s:t] - ref.hidden_states[0][0]).abs().max() < TOL


def test_forward_packed_returns_forward_tokens_output(models):
    emb = Embedder(models["esm"], EmbedOptions(device="cpu"))
    b = emb.backend
    seqs = MIXED[:5]
    with torch.inference_mode():
        got = b.forward_packed(seqs, layers=(-1, 1, 0))
        ref = b.forward_tokens(seqs, layers=(-1, 1, 0))  # padded, with a mask
    assert torch.equal(got.mask, ref.mask)
    for layer in (-1, 1, 0):
        assert got.hidden[layer].shape == ref.hidden[layer].shape
        assert (got.hidden[layer] - ref.hidden[layer]).abs().max() < TOL


@pytest.mark.parametrize("schedule", sorted(ATTENTION))
def test_every_attention_schedule_gives_the_same_numbers(models, schedule):
    emb = Embedder(models["esm"], EmbedOptions(device="cpu"))
    emb.backend.packed_attention = schedule
    assert max_diff(emb.embed(MIXED), one_at_a_time(emb, MIXED)) < TOL


def test_packing_falls_back_where_it_does_not_apply(models):
    def packs(name, **options):
        return Embedder(models[name], EmbedOptions(device="cpu", **options)).backend

    assert packs("esm").packed_batches
    for backend in (packs("esm", int8=True), packs("esm", equal_length_batches=True),
                    packs("esm", equal_length_batches=False), packs("causal")):
        assert not backend.packed_batches and backend.packing_unavailable
    assert "GPTNeoXModel" in packs("causal").packing_unavailable
    assert packing_support(packs("causal").model) is not None
    # the padded path still serves what packing does not: int8 runs and gives finite numbers
    assert all(np.isfinite(a).all() for a in Embedder(models["esm"], EmbedOptions(device="cpu", int8=True))
               .embed(MIXED[:3]))
    # training mode (fine-tuning) keeps forward_tokens: the packed forward refuses it
    b = packs("esm")
    b.model.train()
    with pytest.raises(ConfigError, match="inference"):
        b.forward_packed(MIXED[:2])
    b.model.eval()


def test_plan_counts_real_tokens_when_packed(models):
    lengths = [50, 50, 50, 40, 40, 7, 300, 1]
    packed = Embedder(models["esm"], EmbedOptions(device="cpu", tokens_per_batch=200))
    batches = packed.plan(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) == 1 or sum(lengths[i] + 2 for i in b) <= 200 for b in batches)
    assert any(len({lengths[i] for i in b}) > 1 for b in batches)
    equal = Embedder(models["esm"], EmbedOptions(device="cpu", tokens_per_batch=200, equal_length_batches=True))
    assert all(len({lengths[i] for i in b}) == 1 for b in equal.plan(lengths))


def test_out_of_memory_halves_a_packed_batch(models, monkeypatch):
    emb = Embedder(models["esm"], EmbedOptions(device="cpu"))
    expected = one_at_a_time(emb, MIXED)
    real = emb.backend.forward

    def limited(seqs, cpu=False):
        if len(seqs) > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return real(seqs, cpu=cpu)

    monkeypatch.setattr(emb.backend, "forward", limited)
    got = emb.embed(MIXED)
    assert emb.stats.oom_splits >= 1 and max_diff(got, expected) < TOL


def test_a_non_finite_output_is_refused_naming_the_protein(models):
    emb = Embedder(models["esm"], EmbedOptions(device="cpu"))
    with torch.no_grad():
        emb.backend.model.encoder.layer[0].output.dense.bias[0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        emb.embed(MIXED)


def test_bf16_packed_stays_close_to_bf16_padded(models):
    from protlm.embed.precision import cpu_bf16

    if not cpu_bf16()[0]:
        pytest.skip("this CPU has no bf16 instructions (avx512_bf16 / amx_bf16)")
    packed = Embedder(models["esm"], EmbedOptions(device="cpu", dtype="bf16"))
    assert packed.backend.packed_batches and packed.backend.cpu_autocast
    padded = Embedder(models["esm"], EmbedOptions(device="cpu", dtype="bf16", equal_length_batches=True))
    fp32 = one_at_a_time(packed, MIXED)
    for a, b, ref in zip(packed.embed(MIXED), padded.embed(MIXED), fp32):
        cos = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.999
        assert np.abs(a - b).max() < 0.1 * np.abs(b).max()


# ------------------------------------------------------------------ --compile (torch.compile)

def test_compiled_forward_equals_protein_at_a_time_in_fp32(models):
    """The fused forward (fp32) computes what the module computes protein by protein; --compile is
    recorded in the fingerprint (the kernels are not bit-equal to the eager path's)."""
    emb = Embedder(models["esm"], EmbedOptions(device="cpu", compile=True))
    assert emb.backend._compiled is not None and emb.backend._compiled.dtype == "fp32"
    got = emb.embed(MIXED)
    assert max_diff(got, one_at_a_time(emb, MIXED)) < TOL
    assert emb.fingerprint().endswith("|fp32+compiled")
    assert Embedder(models["esm"], EmbedOptions(device="cpu")).fingerprint().endswith("|fp32")
    # a middle layer and the embedding layer, as packed_hidden gives them
    mid = Embedder(models["esm"], EmbedOptions(device="cpu", compile=True, layer=1))
    assert max_diff(mid.embed(MIXED), one_at_a_time(mid, MIXED, 1)) < TOL
    # ESM-1b's absolute positions (no rotation), within its 60-residue limit
    short = [s for s in MIXED if len(s) <= 60]
    esm1b = Embedder(models["esm1b"], EmbedOptions(device="cpu", compile=True))
    assert max_diff(esm1b.embed(short), one_at_a_time(esm1b, short)) < TOL


def test_compiled_forward_is_compiled_once_for_every_batch_size(models):
    """Only the token count changes from batch to batch: it is compiled as a dynamic size and heads
    and head width as constants, so new batch sizes reuse the kernels of the warm-up (a recompile
    per size would stall every batch, and dynamo falls back to eager after 8)."""
    emb = Embedder(models["esm"], EmbedOptions(device="cpu", compile=True))  # compiled by the warm-up
    ref = Embedder(models["esm"], EmbedOptions(device="cpu"))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seqs in (MIXED[:1], MIXED[2:5], MIXED, MIXED[6:]):
            assert max_diff(emb.embed(seqs), ref.embed(seqs)) < TOL


def test_compiled_bf16_forward_stays_close_to_fp32(models):
    from protlm.embed.precision import cpu_bf16

    if not cpu_bf16()[0]:
        pytest.skip("this CPU has no bf16 instructions (avx512_bf16 / amx_bf16)")
    emb = Embedder(models["esm"], EmbedOptions(device="cpu", dtype="bf16", compile=True))
    assert emb.backend._compiled.dtype == "bf16"
    for a, ref in zip(emb.embed(MIXED), one_at_a_time(emb, MIXED)):
        cos = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.999


@pytest.mark.parametrize("model,why", [("protbert", "ESM/ESM-2 only"), ("causal", "no packed forward"),
                                       ("onehot", "baseline embedder")])
def test_compile_is_refused_where_it_would_do_nothing(models, model, why):
    with pytest.raises(ConfigError, match=why):
        Embedder(models.get(model, model), EmbedOptions(device="cpu", compile=True))


def test_compile_that_cannot_build_its_kernels_is_one_clear_error(models, monkeypatch):
    """A machine where inductor fails (here: a C++ compiler that is not there) gets one ConfigError
    naming --compile before anything is embedded, not a traceback at the first batch."""
    import protlm.embed.packed as packed_mod

    def broken(self):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")

    monkeypatch.setattr(packed_mod.CompiledESM, "warm_up", broken)
    with pytest.raises(ConfigError, match="torch.compile could not build its kernels.*without --compile"):
        Embedder(models["esm"], EmbedOptions(device="cpu", compile=True))


def test_layers_above_the_deepest_wanted_one_are_not_run():
    from protlm.embed.packed import run_layers

    ran = []

    def layer(i, x):
        ran.append(i)
        return x + 1

    out = run_layers(0, 6, (2, 0), layer)
    assert ran == [1, 2] and out == {2: 2, 0: 0}
    ran.clear()
    assert run_layers(0, 3, (-1,), layer) == {-1: 3} and ran == [1, 2, 3]
