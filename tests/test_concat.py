"""``concat:A+B``: per-residue concatenation of embedders."""

from __future__ import annotations

import numpy as np
import pytest

from protlm.embed.backend import Backend
from protlm.embed.backends.concat import ConcatBackend
from protlm.embed.registry import resolve
from protlm.errors import ConfigError, InputError

SEQS = ["MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWYX", "W"]


def test_columns_are_the_parts_side_by_side():
    both = resolve("concat:onehot+blosum62")
    onehot, blosum = resolve("onehot"), resolve("blosum62")
    assert both.dim == onehot.dim + blosum.dim == 42
    for joined, a, b, seq in zip(both.forward(SEQS), onehot.forward(SEQS), blosum.forward(SEQS), SEQS):
        assert joined.shape == (len(seq), 42) and joined.dtype == np.float32
        np.testing.assert_array_equal(joined[:, :21], a)
        np.testing.assert_array_equal(joined[:, 21:], b)
    reverse = resolve("concat:blosum62+onehot")
    np.testing.assert_array_equal(reverse.forward(SEQS[:1])[0][:, :21], blosum.forward(SEQS[:1])[0])


def test_fingerprint_names_every_part_in_order():
    a = resolve("concat:onehot+blosum62").fingerprint()
    assert a != resolve("concat:blosum62+onehot").fingerprint()
    assert a != resolve("concat:onehot+onehot").fingerprint()
    assert resolve("onehot").fingerprint() in a and resolve("blosum62").fingerprint() in a
    d = resolve("concat:onehot+blosum62").describe()
    assert d["family"] == "concat" and d["parts"] == "onehot+blosum62" and d["part_dims"] == "21,21"


def test_runner_embeds_a_concatenation():
    from protlm.embed.runner import Embedder

    emb = Embedder("concat:onehot+blosum62")
    per_residue = emb.embed(SEQS)
    assert [a.shape for a in per_residue] == [(len(s), 42) for s in SEQS]
    np.testing.assert_allclose(emb.embed_proteins(SEQS[:1])[0], per_residue[0].mean(0), atol=1e-6)


class _Fake(Backend):
    family = "fake"

    def __init__(self, dim, max_residues=None, tokens=4000, wrong_rows=False):
        self.dim, self.max_residues, self.default_tokens_per_batch = dim, max_residues, tokens
        self.wrong_rows = wrong_rows
        self.source = f"fake{dim}"

    def forward(self, seqs, *, cpu=False):
        return [np.ones((len(s) + self.wrong_rows, self.dim), np.float32) for s in seqs]


def test_strictest_batching_and_shape_check():
    c = ConcatBackend([_Fake(3, max_residues=None, tokens=10**7), _Fake(2, max_residues=1022, tokens=4000)],
                      ["a", "b"])
    assert c.max_residues == 1022 and c.default_tokens_per_batch == 4000 and c.dim == 5
    bad = ConcatBackend([_Fake(3), _Fake(2, wrong_rows=True)], ["a", "b"])
    with pytest.raises(RuntimeError, match="concat part b returned"):
        bad.forward(["MKV"])


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="at least two"):
        resolve("concat:onehot")
    with pytest.raises(ConfigError, match="at least two"):
        resolve("concat:onehot+")
    with pytest.raises(ConfigError, match="cannot itself be concat"):
        resolve("concat:onehot+concat:blosum62+onehot")
    with pytest.raises(InputError, match="not an embedder name"):
        resolve("concat:onehot+no_such_embedder")


def test_compare_pairs_accept_names_with_colons():
    from protlm.tasks.suite import parse_pairs

    names = ["onehot", "profile:db.fasta,s=4", "concat:onehot+profile:db.fasta,s=4"]
    assert parse_pairs(["onehot:profile:db.fasta,s=4", "concat:onehot+profile:db.fasta,s=4:onehot"], names) == [
        ("onehot", "profile:db.fasta,s=4"), ("concat:onehot+profile:db.fasta,s=4", "onehot")]
    with pytest.raises(ConfigError, match="not one of the --embedder values"):
        parse_pairs(["onehot:blosum62"], names)
