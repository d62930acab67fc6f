"""docs/architecture.md, tested: a new embedder family is one file that touches no other module."""

from __future__ import annotations

import importlib

import h5py
import numpy as np
import pytest

from protlm.cli.main import main
from protlm.embed import Embedder, EmbedOptions
from protlm.errors import InputError


@pytest.fixture(scope="module")
def toy():
    return importlib.import_module("toys.toy_backend")


def test_a_new_backend_is_one_file_and_gets_the_whole_runner(toy):
    emb = Embedder("toy-positions")
    seqs = ["MKTAYIAKQR", "GW", "A" * 130, "MKTAYIAKQR"]
    out = emb.embed(seqs)
    assert [a.shape for a in out] == [(len(s), 3) for s in seqs]
    np.testing.assert_array_equal(out[1][:, 0], [0, 1])
    # the 130-residue protein was windowed by the runner (the backend's limit is 50): positions restart per window
    assert emb.stats.windowed == 1 and out[2][:, 0].max() < 50
    np.testing.assert_array_equal(out[2][:, 2], 50)
    # batching by the backend's token budget, longest first, equal lengths together (CPU plan)
    plan = emb.plan([len(s) for s in seqs])
    assert plan[0] == [2] and sorted(plan[1]) == [0, 3]
    np.testing.assert_allclose(emb.embed_proteins(["GW"])[0], out[1].mean(axis=0))
    assert emb.fingerprint() == "toy:toy-positions"


def test_a_new_backend_works_in_protlm_embed(toy, tmp_path, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGW\n")
    out = tmp_path / "toy.h5"
    assert main(["embed", "--model", "toy-positions", "--input", str(fasta), "--output", str(out)]) == 0, \
        capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["a"].shape == (10, 3) and f.attrs["family"] == "toy" and f.attrs["model_type"] == "toy_positions"


def test_runner_refuses_non_finite_output_naming_the_protein(toy, monkeypatch):
    emb = Embedder("toy-positions")
    real = emb.backend.forward

    def broken(seqs, cpu=False):
        out = real(seqs, cpu=cpu)
        out[0][0, 0] = np.nan
        return out

    monkeypatch.setattr(emb.backend, "forward", broken)
    with pytest.raises(InputError, match="non-finite values .* protein 0"):
        emb.embed(["MKT"])


def test_options_reach_the_runner_through_a_spec(toy):
    emb = Embedder({"name": "toy-positions", "tokens_per_batch": 10, "max_sequences": 1})
    assert emb.plan([3, 3, 3]) == [[0], [1], [2]]
    emb2 = Embedder("toy-positions", EmbedOptions(max_sequences=2))
    assert [len(b) for b in emb2.plan([3, 3, 3])] == [2, 1]
