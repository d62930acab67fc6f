"""Baseline embedders (one-hot, BLOSUM62, 3-mer): shapes, values, training, files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from protlm.cli.main import main
from protlm.data.alphabet import STANDARD
from protlm.embed.backends.baselines import KmerBackend, blosum62
from protlm.models.kmer import RESIDUES, KmerModel, KmerTraining, default_kmer_folder, train_kmer
from protlm.embed import EmbedOptions, load_embedder
from protlm.embed.registry import names as embedder_names
from protlm.errors import ConfigError, InputError

PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQ", "GX", "W", "ACDEFGHIKLMNPQRSTVWYX", "MKV"]


def one_line_error(err: str, *parts: str) -> str:
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("protlm: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- shapes, tables


@pytest.mark.parametrize("name, dim", [("onehot", 21), ("blosum62", 21), ("kmer", 64)])
def test_every_embedder_gives_exactly_l_by_d_in_input_order(name, dim):
    emb = load_embedder(name)
    assert emb.name == name and emb.dim == dim
    out = emb.embed(PROTEINS)
    assert [a.shape for a in out] == [(len(s), dim) for s in PROTEINS]
    assert all(a.dtype == np.float32 for a in out)
    per_protein = emb.embed_proteins(PROTEINS)
    assert per_protein.shape == (len(PROTEINS), dim) and per_protein.dtype == np.float32
    np.testing.assert_allclose(per_protein[0], out[0].mean(axis=0), rtol=1e-6)
    # input order, not length order: embedding one protein alone gives the same rows
    np.testing.assert_array_equal(emb.embed([PROTEINS[3]])[0], out[3])


def test_onehot_rows():
    out = load_embedder("onehot").embed(["ACYX", "BZUO"])
    assert RESIDUES == "ACDEFGHIKLMNPQRSTVWYX"
    np.testing.assert_array_equal(out[0].argmax(axis=1), [0, 1, 19, 20])
    np.testing.assert_array_equal(out[0].sum(axis=1), 1.0)
    np.testing.assert_array_equal(out[1].argmax(axis=1), [20, 20, 20, 20])  # rare residues read as X


def test_blosum62_known_entries_and_symmetry():
    m = blosum62(RESIDUES)
    pos = {a: i for i, a in enumerate(RESIDUES)}
    known = {("W", "W"): 11, ("A", "A"): 4, ("C", "C"): 9, ("H", "H"): 8, ("P", "P"): 7, ("I", "V"): 3,
             ("D", "E"): 2, ("W", "F"): 1, ("L", "D"): -4, ("X", "X"): -1, ("X", "A"): 0, ("X", "P"): -2}
    for (a, b), score in known.items():
        assert m[pos[a], pos[b]] == score, (a, b)
    np.testing.assert_array_equal(m, m.T)
    assert (np.diag(m)[:20] > 0).all()
    emb = load_embedder("blosum62").embed(["WA"])[0]
    np.testing.assert_array_equal(emb, m[[pos["W"], pos["A"]]])


def test_unclean_sequences_are_refused_with_one_line():
    with pytest.raises(InputError, match="'J' at position 3"):
        load_embedder("onehot").embed(["MKJ"])


# --------------------------------------------------------------------------- k-mer training


def _grammar_corpus(n: int = 300, words: int = 30, seed: int = 0) -> list[str]:
    """Proteins written in non-overlapping 3-mer 'words' from two disjoint vocabularies.

    Group A proteins use only A words, in which MKW and HPC are interchangeable (every slot
    picks uniformly): identical contexts. TRY belongs to group B and never meets an A word.
    """
    rng = np.random.default_rng(seed)
    group_a = ["MKW", "HPC", "AAG", "DEL", "NQS", "VIL", "RRK", "GSG"]
    group_b = ["TRY", "FYW", "CCN", "PPQ", "MEH", "KLA", "SDV", "IGT"]
    out = []
    for i in range(n):
        group = group_a if i % 2 == 0 else group_b
        out.append("".join(group[j] for j in rng.integers(0, len(group), words)))
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cooccurrences_are_same_frame_within_the_window_and_never_span_proteins():
    from protlm.models.kmer import CooccurrenceCounter, kmer_indices, residue_codes

    counter = CooccurrenceCounter(window=2)
    for seq in ["AAACCCGGG", "DDDEEE", "AXAKKK"]:
        counter.add(seq)
    words = ["AAA", "CCC", "GGG", "DDD", "EEE", "AAC", "ACC", "CCG", "KKK", "AKK"]
    idx = np.array([kmer_indices(residue_codes(w))[0] for w in words])
    m = counter.matrix(idx)
    expected = np.zeros((len(words), len(words)), dtype=np.int64)
    for a, b in [("AAA", "CCC"), ("AAA", "GGG"), ("CCC", "GGG"), ("DDD", "EEE"), ("AAC", "CCG")]:
        i, j = words.index(a), words.index(b)
        expected[i, j] = expected[j, i] = 1
    np.testing.assert_array_equal(m, expected)  # no CCC–DDD (two proteins), nothing with X, no overlaps
    assert counter.unigrams[idx].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert counter.sequences == 3 and counter.residues == 21


def test_ppmi_is_the_smoothed_formula():
    from protlm.models.kmer import ppmi

    counts = np.array([[0, 6, 2], [6, 2, 0], [2, 0, 10]])
    got = ppmi(counts)
    n = counts.sum(axis=1).astype(float)
    pc = n ** 0.75 / (n ** 0.75).sum()
    for w in range(3):
        for c in range(3):
            want = max(0.0, np.log(counts[w, c] / (n[w] * pc[c]))) if counts[w, c] else 0.0
            assert got[w, c] == pytest.approx(want, rel=1e-6), (w, c)


def test_kmers_in_identical_contexts_get_nearly_identical_vectors():
    model = train_kmer(_grammar_corpus(), KmerTraining(dim=8, window=3))
    same = _cos(model.vector("MKW"), model.vector("HPC"))
    unrelated = _cos(model.vector("MKW"), model.vector("TRY"))
    assert same > 0.9, same
    assert unrelated < 0.3, unrelated
    assert not model.vector("QQQ").any()  # never seen: the zero vector
    cfg = model.config
    assert cfg["sequences"] == 300 and cfg["residues"] == 300 * 90 and cfg["window"] == 3


def test_kmer_per_residue_convention():
    model = train_kmer(_grammar_corpus(), KmerTraining(dim=8, window=3))
    out = model.forward(["MKWAAG", "MKXAAG", "MK"])
    a = out[0]
    # residue i: the 3-mer centred on it; the ends take the nearest full 3-mer
    expected = [model.vector(k) for k in ["MKW", "MKW", "KWA", "WAA", "AAG", "AAG"]]
    np.testing.assert_array_equal(a, np.stack(expected))
    assert not out[1][1:4].any() and out[1][4].any()  # 3-mers containing X → zero
    assert out[2].shape == (2, 8) and not out[2].any()  # shorter than a 3-mer → zero


def test_kmer_training_is_deterministic_and_refuses_tiny_corpora():
    a = train_kmer(_grammar_corpus(60), KmerTraining(dim=8, window=2, seed=3))
    b = train_kmer(_grammar_corpus(60), KmerTraining(dim=8, window=2, seed=3))
    assert a.kmers == b.kmers
    np.testing.assert_array_equal(a.vectors, b.vectors)
    with pytest.raises(InputError, match="too small"):
        train_kmer(["MKWAAG"], KmerTraining(dim=8))
    with pytest.raises(ConfigError, match="--window"):
        train_kmer(["MKWAAG"], KmerTraining(window=0))


def test_save_load_round_trip(tmp_path):
    model = train_kmer(_grammar_corpus(), KmerTraining(dim=8, window=3))
    folder = model.save(tmp_path / "km")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "protlm_kmer" and cfg["k"] == 3 and cfg["dim"] == 8 and cfg["window"] == 3
    assert (folder / "vocab.txt").read_text().split() == model.kmers
    loaded = KmerModel.load(folder)
    stored = model.vectors.astype(np.float16).astype(np.float32)  # float16 on disk
    np.testing.assert_array_equal(loaded.vectors, stored)
    for x, y in zip(loaded.forward(PROTEINS), model.forward(PROTEINS)):
        np.testing.assert_allclose(x, y, atol=2e-3 * np.abs(model.vectors).max())
    with pytest.raises(InputError, match="already exists"):
        model.save(folder)
    assert not list(tmp_path.glob(".km.tmp-*"))


# --------------------------------------------------------------------------- registry


def test_load_embedder_dispatch(tmp_path):
    assert {"onehot", "blosum62", "kmer"} <= set(embedder_names())
    folder = train_kmer(_grammar_corpus(), KmerTraining(dim=8, window=3)).save(tmp_path / "km")
    by_path = load_embedder(str(folder))
    assert isinstance(by_path.backend, KmerBackend) and by_path.dim == 8 and by_path.name == str(folder)
    default = load_embedder("kmer")
    assert isinstance(default.backend, KmerBackend) and default.dim == 64
    assert default_kmer_folder().name == "protlm-kmer3-swissprot"
    cfg = default.model.config
    assert cfg["model_type"] == "protlm_kmer" and cfg["kmers"] == len(default.model.kmers) <= 8000


def test_unknown_names_and_missing_paths_give_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not an embedder name \\(.*blosum62, .*kmer, .*onehot"):
        load_embedder("onehott")
    with pytest.raises(InputError, match="no such folder"):
        load_embedder(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="baseline embedder.*\\(--layer: only a language model takes it\\)"):
        load_embedder("onehot", EmbedOptions(layer=2))
    with pytest.raises(ConfigError, match="\\(--layer, --int8: only a language model takes them\\)"):
        load_embedder("blosum62", EmbedOptions(layer=2, int8=True))


def test_missing_default_kmer_model_is_one_input_error(monkeypatch, tmp_path):
    import protlm.models.kmer as kmer

    monkeypatch.setattr(kmer, "default_kmer_folder", lambda: tmp_path / "absent")
    with pytest.raises(InputError, match="default k-mer model .* is missing"):
        load_embedder("kmer")


# --------------------------------------------------------------------------- CLI


def test_cli_embed_onehot_end_to_end(tmp_path, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGXW\n")
    out = tmp_path / "out.h5"
    code = main(["embed", "--model", "onehot", "--input", str(fasta), "--output", str(out), "--level", "both"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "D=21" in err
    with h5py.File(out) as f:
        assert f["a"].shape == (10, 21) and f["b"].shape == (3, 21)
        np.testing.assert_array_equal(f["b"][:].argmax(axis=1), [5, 20, 18])
        assert f.attrs["model"] == "onehot" and f.attrs["model_type"] == "protlm_onehot"
        assert "layer" not in f.attrs
    with h5py.File(out.with_name("out.per_protein.h5")) as f:
        assert f["a"].shape == (21,)


def test_cli_embed_kmer_folder(tmp_path, capsys):
    folder = train_kmer(_grammar_corpus(), KmerTraining(dim=8, window=3)).save(tmp_path / "km")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKWAAG\n")
    code = main(["embed", "--model", str(folder), "--input", str(fasta), "--output", str(tmp_path / "o.h5")])
    assert code == 0, capsys.readouterr().err
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["a"].shape == (6, 8) and f.attrs["family"] == "kmer"


def test_a_damaged_kmer_folder_is_one_error_line(tmp_path, capsys):
    """Weights cut short, weights missing, vectors with NaN: one line and exit 2, never a traceback."""
    from safetensors.numpy import load_file, save_file

    folder = train_kmer(_grammar_corpus(), KmerTraining(dim=8, window=3)).save(tmp_path / "km")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKWAAG\n")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    vectors = load_file(str(weights))["vectors"]
    vectors[0, 0] = np.nan

    def cut(): weights.write_bytes(good[: len(good) // 2])
    def gone(): weights.unlink()
    def nan(): save_file({"vectors": vectors}, str(weights))
    for damage, said in ((cut, "unreadable k-mer model, model.safetensors"), (gone, "without model.safetensors"),
                         (nan, "NaN/inf")):
        damage()
        code = main(["embed", "--model", str(folder), "--input", str(fasta), "--output", str(tmp_path / "o.h5")])
        err = capsys.readouterr().err
        assert code == 2 and said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o.h5").exists()
        weights.write_bytes(good)


def test_cli_kmer_train(tmp_path, capsys):
    fasta = tmp_path / "corpus.fa"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(_grammar_corpus(120))))
    out = tmp_path / "model"
    code = main(["kmer-train", str(fasta), "--out", str(out), "--dim", "8", "--window", "3",
                 "--max-sequences", "100", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["sequences"] == 100 and result["sample"] == "first 100 sequences"
    assert result["trained_on"] == "corpus.fa"
    assert load_embedder(str(out)).dim == 8
    code = main(["kmer-train", str(fasta), "--out", str(out)])
    assert code == 2
    one_line_error(capsys.readouterr().err, "already exists")


def test_cli_kmer_train_bad_path_is_exit_2_one_line(tmp_path, capsys):
    code = main(["kmer-train", str(tmp_path / "missing.fa"), "--out", str(tmp_path / "m")])
    assert code == 2
    one_line_error(capsys.readouterr().err, "missing.fa")
    bad = tmp_path / "bad.fa"
    bad.write_text(">a\nMK1V\n")
    code = main(["kmer-train", str(bad), "--out", str(tmp_path / "m")])
    assert code == 2
    one_line_error(capsys.readouterr().err, "'1'")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp-*"))
