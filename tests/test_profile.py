"""The ``profile:`` embedder: MMseqs2 profiles on a tiny database the tests build.

Tests that run MMseqs2 skip when the ``mmseqs`` binary is absent (CI installs the Debian package
``mmseqs2``); the feature arithmetic, option parsing and the missing-binary message need none.
"""

from __future__ import annotations

import random
import shutil

import h5py
import numpy as np
import pytest

from protlm.align import mmseqs as mm
from protlm.cli.main import main
from protlm.data.alphabet import STANDARD
from protlm.embed.registry import resolve
from protlm.errors import ConfigError, InputError

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None,
                                  reason="MMseqs2 binary 'mmseqs' not installed (apt-get install mmseqs2)")


def _random_seq(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(STANDARD) for _ in range(n))


def _mutate(rng: random.Random, seq: str, rate: float) -> str:
    return "".join(rng.choice(STANDARD) if rng.random() < rate else c for c in seq)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A query family (query + 20 homologs at ~30% mutation) and 80 unrelated decoys."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("profile")
    query = _random_seq(rng, 110)
    homologs = [_mutate(rng, query, 0.3) for _ in range(20)]
    decoys = [_random_seq(rng, rng.randint(60, 200)) for _ in range(80)]
    lonely = _random_seq(rng, 90)  # nothing like it in the database
    with_h = root / "with_homologs.fasta"
    with_h.write_text("".join(f">h{i}\n{s}\n" for i, s in enumerate(homologs))
                      + "".join(f">d{i}\n{s}\n" for i, s in enumerate(decoys)))
    without = root / "decoys_only.fasta"
    without.write_text("".join(f">d{i}\n{s}\n" for i, s in enumerate(decoys)))
    return {"root": root, "query": query, "lonely": lonely, "with": with_h, "without": without}


def _backend(tiny, db, **extra):
    opts = ",".join(f"{k}={v}" for k, v in {"threads": 1, "cache": tiny["root"] / "cache", **extra}.items())
    return resolve(f"profile:{db},{opts}")


@needs_mmseqs
def test_homologs_change_the_profile(tiny):
    q, lonely = tiny["query"], tiny["lonely"]
    with_h, without = _backend(tiny, tiny["with"]).forward([q, lonely])
    (alone,) = _backend(tiny, tiny["without"]).forward([q])
    (strict,) = _backend(tiny, tiny["with"], e="1e-60").forward([lonely])  # an E-value nothing passes
    for a, seq in ((with_h, q), (without, lonely), (alone, q), (strict, lonely)):
        assert a.shape == (len(seq), mm.DIM) and a.dtype == np.float32 and np.isfinite(a).all()
    col = {c: i for i, c in enumerate(mm.COLUMNS)}
    freq = slice(col["freq_A"], col["freq_Y"] + 1)

    def onehot(seq):
        return np.eye(20, dtype=np.float32)[[STANDARD.index(c) for c in seq]]

    # no hits: the frequency columns are the query's one-hot rows and depth is one sequence
    np.testing.assert_allclose(strict[:, freq], onehot(lonely), atol=1e-6)
    np.testing.assert_allclose(strict[:, col["depth"]], np.log10(2) / 3, atol=1e-6)
    assert (strict[:, col["gap"]] == 0).all()
    # decoys only: little aligns (one chance hit over a quarter of this query), most rows stay the query's
    # own; with the homologs almost none does
    def own_rows(a):
        return (np.abs(a[:, freq] - onehot(q)).sum(1) < 1e-6).mean()

    assert own_rows(alone) > 0.5 > 0.1 > own_rows(with_h)
    # with 20 homologs: many sequences per column, other residues seen, and MMseqs2's PSSM moves too
    assert with_h[:, col["depth"]].mean() > np.log10(10) / 3 > alone[:, col["depth"]].mean()
    assert np.abs(with_h[:, freq] - onehot(q)).sum(1).mean() > 0.3
    assert np.abs(with_h[:, :20] - alone[:, :20]).max() > 0.05
    # the frequency columns are distributions, info is in [0, 1]
    np.testing.assert_allclose(with_h[:, freq].sum(1), 1.0, atol=1e-5)
    assert (0 <= with_h[:, col["info"]]).all() and (with_h[:, col["info"]] <= 1 + 1e-6).all()


@needs_mmseqs
def test_exactly_one_row_per_residue(tiny):
    seqs = ["M", "X", "MK", "BZUO", tiny["query"][:7], "X" * 20, tiny["query"] + "U" + tiny["query"][:30]]
    out = _backend(tiny, tiny["with"]).forward(seqs)
    assert [a.shape for a in out] == [(len(s), mm.DIM) for s in seqs]
    assert all(np.isfinite(a).all() for a in out)


@needs_mmseqs
def test_resume_keeps_finished_chunks(tiny, monkeypatch):
    seqs = [tiny["query"], tiny["lonely"], tiny["query"][10:90]]
    db = mm.TargetDatabase(tiny["with"], cache_dir=tiny["root"] / "resume_cache", threads=1)
    one = mm.SearchParams(iterations=1)  # resume does not depend on the iterations; one is faster
    calls = []
    real = mm.search_chunk

    def crash_on_second(queries, *a, **k):
        calls.append(list(queries))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed during its second search
        return real(queries, *a, **k)

    monkeypatch.setattr(mm, "search_chunk", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        mm.ProfileBuilder(db, one, threads=1, chunk=1).features(seqs)
    monkeypatch.setattr(mm, "search_chunk", real)
    again = mm.ProfileBuilder(db, one, threads=1, chunk=1)
    out = again.features(seqs)
    assert again.stats["reused"] == 1 and again.stats["searched"] == 2
    assert not list(again.store.glob("work-*")), "the interrupted chunk's work folder was left behind"
    third = mm.ProfileBuilder(db, one, threads=1, chunk=5)
    np.testing.assert_array_equal(np.concatenate(third.features(seqs)), np.concatenate(out))
    assert third.stats["searched"] == 0
    assert mm.ProfileBuilder(db, threads=1).store != third.store  # other parameters: other results


@needs_mmseqs
def test_fingerprint_follows_database_and_parameters(tiny):
    a = _backend(tiny, tiny["with"]).fingerprint()
    assert a == _backend(tiny, tiny["with"], threads=2, chunk=3).fingerprint()  # no effect on the numbers
    assert a != _backend(tiny, tiny["without"]).fingerprint()
    assert a != _backend(tiny, tiny["with"], s=4).fingerprint()
    assert a != _backend(tiny, tiny["with"], iterations=1).fingerprint()
    assert a != _backend(tiny, tiny["with"], e=0.1).fingerprint()


@needs_mmseqs
def test_protlm_embed_writes_profiles_to_hdf5(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(mm.CACHE_ENV, str(tiny["root"] / "cli_cache"))
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">fam\n{tiny['query']}\n>lonely\n{tiny['lonely']}\n")
    out = tmp_path / "out.h5"
    code = main(["embed", "--model", f"profile:{tiny['with']},threads=1", "--input", str(fasta),
                 "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    (direct,) = _backend(tiny, tiny["with"]).forward([tiny["query"]])
    with h5py.File(out) as f:
        assert f["fam"].shape == (len(tiny["query"]), mm.DIM)
        np.testing.assert_allclose(f["fam"][()], direct, atol=1e-6)
        assert f["lonely"].shape == (len(tiny["lonely"]), mm.DIM)


def test_missing_binary_is_one_clear_error(tmp_path, monkeypatch, capsys):
    db = tmp_path / "db.fasta"
    db.write_text(">a\nMKV\n")
    monkeypatch.setenv(mm.BINARY_ENV, str(tmp_path / "no" / "mmseqs"))
    with pytest.raises(InputError, match="not found.*apt-get install mmseqs2"):
        resolve(f"profile:{db}")
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKV\n")
    code = main(["embed", "--model", f"profile:{db}", "--input", str(fasta), "--output", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "MMseqs2 binary" in err and "apt-get install mmseqs2" in err


def test_missing_database_and_bad_options(tmp_path):
    with pytest.raises(InputError, match="not found"):
        resolve(f"profile:{tmp_path / 'nope.fasta'}")
    db = tmp_path / "db.fasta"
    db.write_text(">a\nMKV\n")
    with pytest.raises(ConfigError, match="unknown option"):
        resolve(f"profile:{db},sens=4")
    with pytest.raises(ConfigError, match="bad value"):
        resolve(f"profile:{db},s=fast")
    with pytest.raises(ConfigError, match="give the database"):
        resolve("profile:")


def test_search_parameters_are_checked():
    with pytest.raises(ConfigError, match="sensitivity"):
        mm.SearchParams(sensitivity=9).validate()
    with pytest.raises(ConfigError, match="iterations"):
        mm.SearchParams(iterations=0).validate()
    assert mm.SearchParams().search_args() == ["--num-iterations", "2", "-s", "5.7", "-e", "0.001",
                                               "--max-seqs", "300", "-a"]


def test_alignment_columns_by_hand():
    # query ACDA; hit 1 covers positions 1-3 as C-D with a deletion at 2 ("C-D" vs query "CDA"? no:)
    # hit 1: query CDA aligned to target C-A  → pos1 C, pos2 deletion, pos3 A
    # hit 2: query ACD aligned to target AGD with a target insertion after A (query "A-CD", target "AWGD")
    query = "ACDA"
    hits = [(1, "CDA", "C-A"), (0, "A-CD", "AWGD")]
    f = mm.alignment_features(query, hits)
    assert f.shape == (4, 23)
    a, c, d, g = (STANDARD.index(x) for x in "ACDG")
    # column 0: query A, hit2 A → all A
    assert f[0, a] == pytest.approx(1.0)
    # column 3: query A only (hit 1 has A there too) → all A; hit 2 does not cover it
    assert f[3, a] == pytest.approx(1.0)
    # column 1: query C, hit1 C, hit2 G → C and G with weights; C has two sequences
    assert f[1, c] > f[1, g] > 0 and f[1, c] + f[1, g] == pytest.approx(1.0)
    # column 2: query D, hit1 deletion, hit2 D → only D among residues; one of three spanning sequences deleted
    assert f[2, d] == pytest.approx(1.0)
    assert 0 < f[2, 20] < 1
    assert f[0, 20] == 0 and f[3, 20] == 0
    # depth: residues per column (query included): 2, 3, 2, 2
    np.testing.assert_allclose(f[:, 22], np.log10(1 + np.array([2, 3, 2, 2])) / 3, rtol=1e-6)
    # info: a column with one residue type carries log2(20) bits → 1.0
    assert f[0, 21] == pytest.approx(1.0) and f[1, 21] < 1.0


@needs_mmseqs
def test_a_damaged_cache_part_is_removed_and_searched_again(tiny, caplog):
    """issue 24 item 13: a truncated part-*.npz crashed every later run with a traceback."""
    seqs = [tiny["query"], tiny["lonely"]]
    db = mm.TargetDatabase(tiny["with"], cache_dir=tiny["root"] / "damaged_cache", threads=1)
    one = mm.SearchParams(iterations=1)
    first = mm.ProfileBuilder(db, one, threads=1, chunk=1)
    out = first.features(seqs)
    parts = sorted(first.store.glob("part-*.npz"))
    assert len(parts) == 2
    parts[0].write_bytes(parts[0].read_bytes()[: parts[0].stat().st_size // 2])  # a copy cut short
    again = mm.ProfileBuilder(db, one, threads=1, chunk=1)
    redo = again.features(seqs)
    assert again.stats["searched"] == 1 and again.stats["reused"] == 1
    assert "damaged part" in caplog.text
    np.testing.assert_array_equal(np.concatenate(redo), np.concatenate(out))
