"""Features at scale (issue 16, and the feature-cache items of issue 15): lazy per-batch reads
with float16 kept until the batch, one hash rule for writer and reader (B/O/U/Z), training that
says when the epoch cap cut it short, a subset seed of its own, heads that remember their
embedder, export-fasta, a cache that is safe for concurrent writers and keyed by fingerprint,
and NaN/inf features refused with the protein named."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from protlm.cli.main import main
from protlm.embed.store import hash_key
from protlm.errors import InputError
from protlm.tasks.build import load_task_config
from protlm.tasks.data import load_task_data
from protlm.tasks.features import FeatureCache, FeatureSource, pooled
from protlm.tasks.protocols.labels import feature_batch as _batch
from protlm.tasks.train import load_head, predict, train

AA = "ACDEFGHIKLMNPQRSTVWY"
RARE = "BOUZ"


def _label(seq: str) -> str:
    return "".join("H" if c in "AELMQKR" else "E" if c in "VIYFWT" else "C" for c in seq)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    """A per-residue task (biotrainer FASTA); every 5th protein holds B, O, U or Z."""
    rng = np.random.default_rng(7)
    lines = []
    for i in range(90):
        seq = list(rng.choice(list(AA), int(rng.integers(20, 50))))
        if i % 5 == 0:
            seq[3] = RARE[(i // 5) % 4]
        seq = "".join(seq)
        split = "train" if i < 60 else "valid" if i < 75 else "test"
        s = "SET=train VALIDATION=True" if split == "valid" else f"SET={split}"
        lines.append(f">p{i} TARGET={_label(seq)} {s}\n{seq}\n")
    path = tmp_path_factory.mktemp("task") / "task.fasta"
    path.write_text("".join(lines))
    return path


def _cfg(path: Path, embedder: str = "onehot", **train_opts) -> dict:
    src = lambda split: {"file": str(path), "format": "biotrainer", "split": split}  # noqa: E731
    return {"name": "t", "protocol": "residue_to_class", "embedder": embedder,
            "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
            "targets": [{"name": "q3", "label": "target", "classes": list("HEC")}], "head": {"type": "logreg"},
            "train": {"epochs": 3, "lr": 0.01, "batch_size": 16, "patience": 3, "bootstrap": 20, **train_opts}}


def _h5(path: Path, arrays: dict[str, np.ndarray], **attrs) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["level"] = "residue"
        for k, v in attrs.items():
            f.attrs[k] = v
        for key, a in arrays.items():
            f.create_dataset(key, data=a)
    return path


def _task_h5(path: Path, task_file: Path, dtype=np.float32, seed: int = 0, dim: int = 8, **attrs) -> Path:
    """Random features of the task's proteins, keyed by the hash of the sequence as written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for header, seq in zip(task_file.read_text().splitlines()[::2], task_file.read_text().splitlines()[1::2]):
        arrays[hash_key(seq)] = rng.standard_normal((len(seq), dim)).astype(np.float16).astype(dtype)
    return _h5(path, arrays, **attrs)


# --------------------------------------------------------------------------- 1. lazy, float16 until the batch


def test_features_are_read_per_protein_and_float16_stays_float16(tmp_path, task_file):
    h5 = _task_h5(tmp_path / "f16.h5", task_file, np.float16)
    cfg = load_task_config(data=_cfg(task_file, str(h5)))
    tr, _, _, _ = load_task_data(cfg, None)
    reads = []
    with FeatureSource(str(h5)) as source:
        x = source.features(tr.ids, tr.sequences, tr.hash_sequences)
        inner = x._reader
        x._reader = lambda i: reads.append(i) or inner(i)
        assert len(x) == len(tr) and x.dim == 8 and reads == []  # lengths known, nothing read yet
        assert list(x.lengths) == [len(s) for s in tr.sequences]
        assert x[4].dtype == np.float16 and reads == [4]
        xb, mb, _ = _batch(x, [0, 5, 9])
        assert sorted(reads) == [0, 4, 5, 9]  # a batch reads its proteins, nothing else
        assert xb.dtype.is_floating_point and str(xb.dtype) == "torch.float32"
        np.testing.assert_array_equal(xb[1, : x.lengths[5]].numpy(), x[5].astype(np.float32))
        assert float(mb[1].sum()) == x.lengths[5]
        p = pooled(x)
        np.testing.assert_allclose(p[2][0], x[2].astype(np.float32).mean(0), rtol=1e-6)


def test_float16_file_trains_the_same_head_as_its_float32_copy(tmp_path, task_file):
    """float16 values are only upcast in the batch: the same numbers in a float32 file give the
    same head, bit for bit."""
    a = train(load_task_config(data=_cfg(task_file, str(_task_h5(tmp_path / "a.h5", task_file, np.float16)))),
              tmp_path / "ha")
    b = train(load_task_config(data=_cfg(task_file, str(_task_h5(tmp_path / "b.h5", task_file, np.float32)))),
              tmp_path / "hb")
    assert a["test"] == b["test"]
    assert (tmp_path / "ha" / "head.safetensors").read_bytes() == (tmp_path / "hb" / "head.safetensors").read_bytes()


# --------------------------------------------------------------------------- 2. one hash for one sequence


def test_hash_keyed_file_of_protlm_embed_is_read_for_proteins_with_rare_residues(tmp_path, task_file, capsys):
    """export-fasta → protlm embed --key hash → train on the file: every protein is found, those
    with B/O/U/Z included (the hash is over the sequence as written, rare residues kept)."""
    cfg_path = tmp_path / "t.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(_cfg(task_file)))
    fasta, h5 = tmp_path / "all.fasta", tmp_path / "all.h5"
    assert main(["export-fasta", "--config", str(cfg_path), "--out", str(fasta)]) == 0
    text = fasta.read_text()
    assert any(c in text.split(">p0 ")[1].split("\n")[1] for c in RARE)  # written as in the source
    assert main(["embed", "--model", "onehot", "--input", str(fasta), "--output", str(h5), "--key", "hash"]) == 0
    capsys.readouterr()
    cfg = load_task_config(data=_cfg(task_file, str(h5)))
    tr, va, tests, _ = load_task_data(cfg, None)
    rare = [i for i, s in enumerate(tr.hash_sequences) if set(s) & set(RARE)]
    assert len(rare) >= 3 and all(set(tr.sequences[i]) & set(RARE) == set() for i in rare)  # model input: X
    res = train(cfg, tmp_path / "head")
    assert res["proteins"]["train"] == 60
    # the onehot features in the file are those of the sequence as written; read back by hash
    with FeatureSource(str(h5)) as source:
        x = source.features(tr.ids, tr.sequences, tr.hash_sequences)
        assert x[rare[0]].shape == (len(tr.sequences[rare[0]]), 21)
        # the cleaned sequence's hash is not a key: one rule, no second guess
        with pytest.raises(InputError, match="no embedding for protein"):
            source.features([tr.ids[rare[0]] + "_other"], [tr.sequences[rare[0]]])


# --------------------------------------------------------------------------- 3. cut short by the epoch cap


def test_training_cut_short_by_the_cap_is_said_recorded_and_flagged(tmp_path, task_file, caplog):
    from protlm.tasks.suite import results_table

    cfg = load_task_config(data=_cfg(task_file, epochs=2, lr=0.001))
    with caplog.at_level(logging.WARNING, logger="protlm.tasks"):
        res = train(cfg, tmp_path / "short")
    assert res["cut_short"] and res["stopped_by"] == "epoch_cap" and res["best_epoch"] == 2
    assert "epoch cap" in caplog.text and "train.epochs" in caplog.text
    doc = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert doc["cut_short"] is True and doc["epoch_cap"] == 2
    assert "†" in results_table([doc]) and "cut short" in results_table([doc])

    caplog.clear()
    # random features: nothing to learn, the validation loss soon rises and early stopping ends it
    noise = str(_task_h5(tmp_path / "noise.h5", task_file))
    long = train(load_task_config(data=_cfg(task_file, noise, epochs=300, lr=0.05, patience=2)), tmp_path / "long")
    assert long["stopped_by"] == "early_stopping" and not long["cut_short"] and long["epochs_run"] < 300
    assert "epoch cap" not in caplog.text and "†" not in results_table([long])


# --------------------------------------------------------------------------- 4. the subset's own seed


def test_max_train_subset_has_its_own_seed(task_file):
    def subset(**t):
        return load_task_data(load_task_config(data=_cfg(task_file, max_train=20, **t)), None)[0].ids

    base = subset()
    assert len(base) == 20
    assert subset(seed=5) == base  # the init/shuffle seed does not move the subset
    assert subset(subset_seed=5) != base and len(subset(subset_seed=5)) == 20


# --------------------------------------------------------------------------- 5. heads remember their embedder


def test_head_refuses_features_of_another_model_of_the_same_width(tmp_path, task_file):
    a = _task_h5(tmp_path / "a.h5", task_file, seed=1, model="lm-a", fingerprint="fam:aaaa|layer=-1")
    train(load_task_config(data=_cfg(task_file, str(a))), tmp_path / "head")
    head = load_head(tmp_path / "head")
    assert head.info["embedder_identity"]["fingerprint"] == "fam:aaaa|layer=-1"
    seq = task_file.read_text().splitlines()[1]
    other = _task_h5(tmp_path / "b.h5", task_file, seed=2, model="lm-b", fingerprint="fam:bbbb|layer=-1")
    with pytest.raises(InputError, match="not the same model"):
        predict(head, ["p0"], [seq], embedder=str(other))
    # the same model in another file (e.g. new proteins embedded later) is accepted
    same = _task_h5(tmp_path / "c.h5", task_file, seed=3, model="lm-a", fingerprint="fam:aaaa|layer=-1")
    assert predict(head, ["p0"], [seq], embedder=str(same))[0]["id"] == "p0"
    # files without a fingerprint are compared by model attribute and layer
    train(load_task_config(data=_cfg(task_file, str(_task_h5(tmp_path / "d.h5", task_file, model="m", layer=3)))),
          tmp_path / "head2")
    with pytest.raises(InputError, match="layer"):
        predict(load_head(tmp_path / "head2"), ["p0"], [seq],
                embedder=str(_task_h5(tmp_path / "e.h5", task_file, model="m", layer=5)))


def test_head_trained_on_an_embedder_accepts_its_hdf5_and_refuses_another(tmp_path, task_file):
    train(load_task_config(data=_cfg(task_file, "onehot")), tmp_path / "head")
    head = load_head(tmp_path / "head")
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">p0\nMKVLAAG\n")
    made = tmp_path / "onehot.h5"
    assert main(["embed", "--model", "onehot", "--input", str(fasta), "--output", str(made)]) == 0
    assert predict(head, ["p0"], ["MKVLAAG"], embedder=str(made))[0]["prediction"]
    fake = _h5(tmp_path / "fake.h5", {"p0": np.zeros((7, 21), np.float32)}, model="other", fingerprint="x:1")
    with pytest.raises(InputError, match="not the same model"):
        predict(head, ["p0"], ["MKVLAAG"], embedder=str(fake))


def test_suite_reuse_follows_the_file_checksum_not_its_path(tmp_path, task_file):
    import yaml

    from protlm.tasks.suite import run_suite

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "t.yaml").write_text(yaml.safe_dump(_cfg(task_file)))
    h5 = _task_h5(tmp_path / "one.h5", task_file, model="m", fingerprint="f:1")
    run_suite(suite, [str(h5)], tmp_path / "out", None)
    (metrics,) = (tmp_path / "out" / "t").glob("*/metrics.json")
    stamp = metrics.stat().st_mtime_ns
    moved = tmp_path / "elsewhere" / "one.h5"
    moved.parent.mkdir()
    shutil.move(h5, moved)
    again = run_suite(suite, [str(moved)], tmp_path / "out", None)
    assert metrics.stat().st_mtime_ns == stamp and again["results"][0]["embedder"] == str(moved)  # reused
    renamed = moved.with_name("renamed.h5")
    moved.rename(renamed)
    run_suite(suite, [str(renamed)], tmp_path / "out", None)
    assert metrics.stat().st_mtime_ns == stamp  # renamed: still the same content, reused
    renamed.rename(moved)
    _task_h5(moved, task_file, seed=9, model="m", fingerprint="f:1")  # same path, new content
    run_suite(suite, [str(moved)], tmp_path / "out", None)
    assert len(list((tmp_path / "out" / "t").glob("*/metrics.json"))) == 2  # trained anew


# --------------------------------------------------------------------------- 6. export-fasta


def test_export_fasta_writes_the_task_proteins(tmp_path, task_file, capsys):
    import yaml

    cfg_path = tmp_path / "t.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(task_file, max_train=25, subset_seed=3)))
    out = tmp_path / "train.fasta"
    assert main(["export-fasta", "--config", str(cfg_path), "--split", "train", "--out", str(out)]) == 0
    ids = [ln[1:].split()[0] for ln in out.read_text().splitlines() if ln.startswith(">")]
    expected = load_task_data(load_task_config(cfg_path), None)[0]
    assert ids == expected.ids and len(ids) == 25
    seqs = out.read_text().splitlines()[1::2]
    assert seqs == expected.hash_sequences
    capsys.readouterr()
    assert main(["export-fasta", "--config", str(cfg_path), "--out", str(out)]) == 2  # exists: needs --overwrite
    assert "protlm: error:" in capsys.readouterr().err
    assert main(["export-fasta", "--config", str(cfg_path), "--out", str(out), "--overwrite"]) == 0
    # biotrainer 2.x's header: SET=train|val|test (or a named test set)
    sets = [ln.split("SET=")[1] for ln in out.read_text().splitlines() if ln.startswith(">")]
    assert sets.count("train") == 25 and sets.count("val") == 15 and sets.count("held_out") == 15


# --------------------------------------------------------------------------- cache: concurrency, torn parts, fingerprint


class FakeEmbedder:
    dim = 4

    def __init__(self, fingerprint: str, offset: float = 0.0):
        self._fp, self.offset, self.calls = fingerprint, offset, []

    def fingerprint(self) -> str:
        return self._fp

    def embed(self, seqs):
        self.calls.append(list(seqs))
        return [np.full((len(s), self.dim), self.offset + len(s), np.float32) for s in seqs]


def _source(cache: Path, fp: str = "fake:1", offset: float = 0.0) -> FeatureSource:
    s = FeatureSource("fake-model", -1, cache)
    s._embedder = FakeEmbedder(fp, offset)
    return s


def _writer(args):
    folder, seed = args
    cache = FeatureCache(folder)
    rng = np.random.default_rng(seed)
    for k in range(15):
        keys = [f"k{j}" for j in range(k, k + 4)]
        cache.write(keys, [np.full((3 + j % 2, 5), float(j), np.float32) for j in range(k, k + 4)])
        if rng.random() < 0.5:
            cache.index()  # a reader in between


def test_cache_is_safe_for_concurrent_writers(tmp_path):
    folder = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")  # the writers use numpy only
    with ctx.Pool(2) as pool:
        pool.map(_writer, [(folder, 0), (folder, 1)])
    index = FeatureCache(folder).index()
    assert sorted(index, key=lambda k: int(k[1:])) == [f"k{j}" for j in range(18)]
    from protlm.tasks.features import read_part_slice

    for j in range(18):
        a = read_part_slice(*index[f"k{j}"])
        assert a.shape == (3 + j % 2, 5) and (a == j).all()
    assert len(list(folder.glob("part-*"))) == 30 and not list(folder.glob(".tmp-*"))


def test_torn_or_foreign_part_is_skipped_and_redone(tmp_path, caplog):
    seqs = ["MKVL", "AAGGHH", "WWY"]
    with _source(tmp_path) as s:
        x = s.features(["a", "b", "c"], seqs)
        assert [x[i][0, 0] for i in range(3)] == [4.0, 6.0, 3.0]
        folder = s.cache.folder
    (part,) = folder.glob("part-*")
    part.write_bytes(part.read_bytes()[:-10])  # a part cut short (full disk, a copy interrupted)
    (folder / "part-zzzz.plmf").write_bytes(b"PK\x03\x04 not ours")
    with caplog.at_level(logging.WARNING, logger="protlm.tasks"), _source(tmp_path) as s:
        x = s.features(["a", "b", "c"], seqs)
        assert [x[i][0, 0] for i in range(3)] == [4.0, 6.0, 3.0]
        assert s.embedder.calls == [sorted(seqs, key=seqs.index)]  # embedded again, no crash
    assert "not a whole part" in caplog.text and not part.exists()
    with _source(tmp_path) as s:
        s.features(["a", "b", "c"], seqs)
        assert s.embedder.calls == []  # now cached


def test_a_part_whose_header_was_edited_is_refused_not_misread(tmp_path):
    """A part whose header moves rows from one protein to the next (same byte length, so the part
    still looks whole): the rows no longer match the sequences' lengths; refused, naming the cache."""
    seqs = ["MKVL", "AAGGH"]
    with _source(tmp_path) as s:
        s.features(["a", "b"], seqs)
        folder = s.cache.folder
    (part,) = folder.glob("part-*")
    data = part.read_bytes()
    assert data.count(b"[4, 5]") == 1
    part.write_bytes(data.replace(b"[4, 5]", b"[5, 4]"))
    with _source(tmp_path) as s, pytest.raises(InputError, match=r"protein 'a'.*4 residues.*damaged: delete"):
        s.features(["a", "b"], seqs)


def test_cache_is_keyed_by_fingerprint_not_by_path(tmp_path):
    """Re-pretraining into the same folder changes the weights fingerprint: no stale features."""
    with _source(tmp_path, "fam:weights-1", offset=0.0) as s:
        assert s.features(["a"], ["MKV"])[0][0, 0] == 3.0
    with _source(tmp_path, "fam:weights-2", offset=100.0) as s:
        assert s.features(["a"], ["MKV"])[0][0, 0] == 103.0 and s.embedder.calls == [["MKV"]]
    with _source(tmp_path, "fam:weights-1", offset=0.0) as s:
        assert s.features(["a"], ["MKV"])[0][0, 0] == 3.0 and s.embedder.calls == []


def test_no_cache_uses_a_temporary_folder_removed_at_close(tmp_path):
    s = _source(None)
    assert s.features(["a"], ["MKV"])[0].shape == (3, 4)
    folder = s.cache.folder
    assert folder.is_dir()
    s.close()
    assert not folder.exists()


# --------------------------------------------------------------------------- NaN / inf refused


def test_non_finite_features_are_refused_naming_the_protein(tmp_path, task_file, capsys):
    import h5py

    h5 = _task_h5(tmp_path / "nan.h5", task_file)
    bad_seq = task_file.read_text().splitlines()[2 * 7 + 1]  # p7: a training protein
    with h5py.File(h5, "a") as f:
        f[hash_key(bad_seq)][2, 1] = np.nan
    with pytest.raises(InputError, match="'p7'.*NaN or inf"):
        train(load_task_config(data=_cfg(task_file, str(h5))), tmp_path / "h")
    assert not (tmp_path / "h" / "head.json").exists()
    good = _task_h5(tmp_path / "good.h5", task_file)
    train(load_task_config(data=_cfg(task_file, str(good))), tmp_path / "head")
    with pytest.raises(InputError, match="'p7'.*NaN or inf"):
        predict(load_head(tmp_path / "head"), ["p7"], [bad_seq], embedder=str(h5))
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">p7\n{bad_seq}\n")
    code = main(["predict", "--head", str(tmp_path / "head"), "--input", str(fasta), "--output",
                 str(tmp_path / "p.csv"), "--embedder", str(h5)])
    err = capsys.readouterr().err
    assert code == 2 and "p7" in err and "Traceback" not in err and not (tmp_path / "p.csv").exists()
    with h5py.File(h5, "a") as f:
        f[hash_key(bad_seq)][2, 1] = np.inf
    code = main(["evaluate", "--head", str(tmp_path / "head"), "--file", str(task_file), "--format", "biotrainer",
                 "--split", "train", "--embedder", str(h5)])
    assert code == 2 and "'p7'" in capsys.readouterr().err


def test_netsurfp_chains_with_rare_residues_keep_the_writers_hash(tmp_path, capsys):
    """The chains of issue 16 (O or U in NetSurfP-2.0): export-fasta writes them as written, so
    their hash is the one `protlm embed --key hash` takes over the raw FASTA."""
    data = Path(os.environ.get("PROTLM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    raw_file = data / "secondary_structure" / "sequences.fasta"
    if not raw_file.is_file():
        pytest.skip("../shared/data not found: set PROTLM_DATA to the protlm benchmark data folder")
    from protlm.data.fasta import read_fasta_raw

    chains = {"1nth-A", "2xsk-A", "5ccl-A", "3u5s-A", "1kqf-A"}
    raw = {r.id: r.sequence for r in read_fasta_raw(raw_file) if r.id in chains}
    assert len(raw) == 5 and all(set(s) & set(RARE) for s in raw.values())
    out = tmp_path / "ss.fasta"
    config = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "secondary_structure.yaml"
    assert main(["export-fasta", "--config", str(config), "--data", str(data), "--split", "train",
                 "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    exported = {h[1:].split()[0]: s for h, s in zip(lines[::2], lines[1::2]) if h[1:].split()[0] in chains}
    in_train = chains & set(exported)
    assert in_train, "none of the chains is in the training split"
    for pid in in_train:
        assert hash_key(exported[pid]) == hash_key(raw[pid]), pid


# --------------------------------------------------------------------------- pooled cache for per-protein heads


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_pooled_cache_holds_one_vector_per_protein_and_reuses_per_residue_parts(tmp_path):
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list(AA), int(rng.integers(250, 350)))) for _ in range(12)]
    ids = [f"p{i}" for i in range(12)]
    s = _source(tmp_path / "a")
    s._embedder.dim = 64
    residues = s.features(ids, seqs)
    expect = pooled(residues)
    vec = s.features(ids, seqs, pool="mean")
    assert s.embedder.calls == [seqs]  # pooled from the per-residue parts already cached: no second embedding
    assert [vec[i].shape for i in range(12)] == [(1, 64)] * 12
    assert all(np.array_equal(vec[i], expect[i]) for i in range(12))

    t = _source(tmp_path / "b")  # a per-protein head alone: only the pooled cache is written
    t._embedder.dim = 64
    again = t.features(ids, seqs, pool="mean")
    assert all(np.array_equal(again[i], expect[i]) for i in range(12))
    (folder,) = (tmp_path / "b").iterdir()
    assert folder == t.pooled_cache.folder and folder != s.cache.folder
    mean_len = np.mean([len(q) for q in seqs])
    ratio = _folder_bytes(s.cache.folder) / _folder_bytes(folder)
    # ~L/2 times smaller: L float16 rows against one float32 vector (a part header is the rest)
    assert ratio > mean_len / 4, (ratio, mean_len)
    u = _source(tmp_path / "b")
    u._embedder.dim = 64
    u.features(ids, seqs, pool="mean")
    assert u.embedder.calls == []  # found in the pooled cache


def test_per_protein_head_caches_pooled_vectors_and_a_residue_head_per_residue_arrays(tmp_path):
    rng = np.random.default_rng(5)
    lines = []
    for i in range(30):
        seq = "".join(rng.choice(list(AA), 120))
        split = "train" if i < 20 else "valid" if i < 25 else "test"
        s = "SET=train VALIDATION=True" if split == "valid" else f"SET={split}"
        lines.append(f">s{i} TARGET={'pos' if seq.count('K') > 6 else 'neg'} {s}\n{seq}\n")
    data = tmp_path / "cls.fasta"
    data.write_text("".join(lines))
    src = lambda split: {"file": str(data), "format": "biotrainer", "split": split}  # noqa: E731
    sizes = {}
    for head in ("ffn", "light_attention"):
        cfg = load_task_config(data={
            "name": "pool", "protocol": "sequence_to_class", "embedder": "onehot",
            "data": {"train": src("train"), "valid": src("valid"), "test": {"t": src("test")}},
            "targets": [{"name": "k", "label": "target"}], "head": {"type": head},
            "train": {"epochs": 1, "lr": 0.01, "batch_size": 16, "bootstrap": 0}})
        train(cfg, tmp_path / head, cache_dir=tmp_path / f"cache-{head}")
        (folder,) = (tmp_path / f"cache-{head}").iterdir()
        sizes[head] = _folder_bytes(folder)
    # one float32 vector per protein against 120 float16 rows per protein (plus a header per part)
    assert sizes["light_attention"] / sizes["ffn"] > 30, sizes


def test_the_cache_stores_float16_unless_told_or_out_of_range(tmp_path, monkeypatch):
    """Issue 23 #3: the per-residue cache stores float16 (half the disk and page cache); float32 on
    request (its own folder) or for a chunk beyond float16's range."""
    with _source(tmp_path, "fake:1", offset=0.123) as s:
        x = s.features(["a", "b"], ["MKV", "MKVW"])
        assert x[0].dtype == np.float16 and abs(float(x[0][0, 0]) - 3.123) < 2e-3
        half = s.cache.folder
    with _source(tmp_path, "fake:1", offset=70000.0) as s:  # beyond ±65,504: stays float32
        s._embedder._fp = "fake:big"
        assert s.features(["a"], ["MKV"])[0].dtype == np.float32
    monkeypatch.setenv("PROTLM_CACHE_DTYPE", "float32")
    with _source(tmp_path, "fake:1", offset=0.123) as s:
        x = s.features(["a"], ["MKV"])
        assert x[0].dtype == np.float32 and x[0][0, 0] == np.float32(3.123)
        assert s.cache.folder != half and s.embedder.calls == [["MKV"]]  # a folder of its own
    for part in half.glob("part-*"):
        header, _ = FeatureCache(half).read_header(part)
        assert header["dtype"] == "float16"
    monkeypatch.setenv("PROTLM_CACHE_DTYPE", "float64")
    with pytest.raises(Exception, match="PROTLM_CACHE_DTYPE='float64'"):
        _source(tmp_path)


# --------------------------------------------------------------------------- per-protein files (issue 21 #1)


def test_per_protein_files_feed_per_protein_heads(tmp_path, task_file, capsys):
    """protlm's .per_protein.h5 and a biotrainer-style reduced file (hash keys, 1-D datasets, no
    attributes) train a per-protein head exactly as the embedder itself does (its mean-pooled
    vectors); a per-residue head is refused with one line."""
    import h5py
    import yaml

    from protlm.errors import ConfigError

    cfg_path = tmp_path / "t.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(task_file)))
    fasta, h5 = tmp_path / "all.fasta", tmp_path / "all.h5"
    assert main(["export-fasta", "--config", str(cfg_path), "--out", str(fasta)]) == 0
    assert main(["embed", "--model", "onehot", "--input", str(fasta), "--output", str(h5), "--key", "hash",
                 "--level", "protein"]) == 0
    capsys.readouterr()
    (per_protein,) = list(tmp_path.glob("all*.h5"))
    reduced = tmp_path / "reduced_embeddings_file.h5"  # biotrainer's layout: hash → D, no attributes
    with h5py.File(per_protein, "r") as src, h5py.File(reduced, "w") as dst:
        assert src.attrs["level"] == "protein"
        for key in src:
            dst.create_dataset(key, data=src[key][()])

    # a per-protein label (the first residue's state), the same proteins and splits as the task file
    lines = task_file.read_text().splitlines()
    seq_file = tmp_path / "seq.fasta"
    seq_file.write_text("".join(f"{h.split(' TARGET=')[0]} TARGET={h.split('TARGET=')[1][0]} "
                                f"{h.split('TARGET=')[1].split(' ', 1)[1]}\n{s}\n"
                                for h, s in zip(lines[::2], lines[1::2])))

    def per_protein_cfg(embedder):
        c = _cfg(seq_file, embedder)
        c.update(protocol="sequence_to_class", head={"type": "ffn"}, targets=[{"name": "first", "label": "target"}])
        return load_task_config(data=c)

    results = {}
    for name, emb in (("embedder", "onehot"), ("protlm", str(per_protein)), ("biotrainer", str(reduced))):
        results[name] = train(per_protein_cfg(emb), tmp_path / name, cache_dir=tmp_path / "cache")
        assert results[name]["proteins"]["train"] == 60
    ref = results["embedder"]["test"]
    assert results["protlm"]["test"] == ref and results["biotrainer"]["test"] == ref
    assert (tmp_path / "protlm" / "head.safetensors").read_bytes() == \
        (tmp_path / "embedder" / "head.safetensors").read_bytes()
    assert json.loads((tmp_path / "biotrainer" / "head.json").read_text())["embedder_identity"]["level"] == "protein"

    with pytest.raises(ConfigError, match="one vector per protein"):
        train(load_task_config(data=_cfg(task_file, str(reduced))), tmp_path / "residue_head")
