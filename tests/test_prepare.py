"""``protlm prepare``: round trip, split, determinism, sharding, resume, filters, failures."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import protlm.data.fasta as fasta_mod
import protlm.data.prepare as prep
import protlm.data.shards as shards
from protlm.data.alphabet import ALPHABET
from protlm.data.prepare import LENGTH_EDGES, PrepareOptions, merge, prepare
from protlm.data.shards import ShardedDataset
from protlm.errors import ConfigError, FastaError, InputError
from protlm.io.checksums import xxh3_file

N_RECORDS = 2500
CHUNK_MB = 0.05
RARE_TO_X = str.maketrans("BOUZ", "XXXX")


# --------------------------------------------------------------------------- synthetic input


def make_records(n: int, seed: int) -> list[tuple[str, str]]:
    """(id, raw sequence) pairs; ~8% repeat an earlier sequence under another id."""
    rng = random.Random(seed)
    weights = [8] * 20 + [1, 1, 1, 1, 1]  # some X and rare residues
    out: list[tuple[str, str]] = []
    for i in range(n):
        rid = f"sp|Q{i:05d}|PROT_{i}"
        if out and rng.random() < 0.08:
            seq = rng.choice(out)[1]
        else:
            length = rng.choice([rng.randint(1, 60), rng.randint(1, 2000)])
            seq = "".join(rng.choices(ALPHABET, weights=weights, k=length))
        out.append((rid, seq))
    return out


def render(records: list[tuple[str, str]], seed: int) -> str:
    rng = random.Random(seed)
    parts = []
    for rid, seq in records:
        text = seq.lower() if rng.random() < 0.1 else seq
        if rng.random() < 0.1:
            text += "*"
        parts.append(f">{rid} synthetic protein OS=Test\n")
        parts.extend(text[j : j + 60] + "\n" for j in range(0, len(text), 60))
    return "".join(parts)


def clean(seq: str) -> str:
    return seq.upper().translate(RARE_TO_X)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    recs = make_records(N_RECORDS, seed=11)
    fasta = folder / "synthetic.fasta"
    fasta.write_text(render(recs, seed=12))
    return fasta, recs


def opts(**kw) -> PrepareOptions:
    return PrepareOptions(**{"valid_fraction": 0.1, "chunk_mb": CHUNK_MB, **kw})


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One plain single-process run that other tests compare with."""
    fasta, _ = corpus
    out = tmp_path_factory.mktemp("reference")
    manifest = prepare(fasta, out, opts())
    return out, manifest


def read_split(out: Path, split: str) -> dict[str, str]:
    ds = ShardedDataset(out, split)
    ids = ds.ids()
    assert len(ids) == len(ds)
    assert ds.lengths.tolist() == [len(ds[i]) for i in range(len(ds))]
    seqs = {}
    for i, rid in enumerate(ids):
        assert rid not in seqs
        seqs[rid] = ds.sequence(i)
    return seqs


def chunk_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "chunks").iterdir())}


def data_files(out: Path) -> dict[str, bytes]:
    """The token, offset and id files (what a trainer reads)."""
    return {
        name: data for name, data in chunk_files(out).items()
        if name.endswith((".tokens", ".offsets.npy", ".ids.txt"))
    }


def mtimes(out: Path, prefix: str = "") -> dict[str, int]:
    return {
        p.name: p.stat().st_mtime_ns
        for p in (out / "chunks").iterdir()
        if p.name.startswith(prefix) and not p.name.endswith(".merged.json")
    }


def part(out: Path, i: int = 0, n: int = 1) -> dict:
    return json.loads((out / "parts" / f"part-{i}-of-{n}.json").read_text())


def no_temp_files(out: Path) -> bool:
    # parts/.part-i-of-N.lock and parts/.merge.lock are the (empty) OS lock files, kept by design
    return not [p for p in out.rglob("*") if (p.name.startswith(".") or ".tmp" in p.name)
                and not (p.parent.name == "parts" and p.name.endswith(".lock"))]


# --------------------------------------------------------------------------- round trip


def test_round_trip(corpus, reference):
    _, recs = corpus
    out, manifest = reference
    assert manifest["chunks"] > 20, "small chunk_mb must give many chunks"
    train, valid = read_split(out, "train"), read_split(out, "valid")
    assert not set(train) & set(valid)
    assert {**train, **valid} == {rid: clean(seq) for rid, seq in recs}
    # order within each split follows the file
    order = {rid: i for i, (rid, _) in enumerate(recs)}
    for split in ("train", "valid"):
        ids = ShardedDataset(out, split).ids()
        assert ids == sorted(ids, key=order.__getitem__)
    c = manifest["counts"]
    assert c["records_read"] == c["kept"] == N_RECORDS
    assert manifest["splits"]["train"]["records"] == len(train)
    assert manifest["splits"]["valid"]["records"] == len(valid)
    assert no_temp_files(out)


def test_tokens_are_alphabet_indices(reference):
    out, _ = reference
    ds = ShardedDataset(out, "train")
    tokens = np.concatenate([ds[i] for i in range(len(ds))])
    assert tokens.dtype == np.uint8
    assert tokens.max() <= ALPHABET.index("X")  # rare residues were mapped to X
    assert "".join(ALPHABET[t] for t in ds[0]) == ds.sequence(0)


def test_manifest_statistics_match_direct_computation(corpus, reference):
    _, recs = corpus
    _, manifest = reference
    lengths = np.array([len(clean(s)) for _, s in recs])
    hist, _ = np.histogram(lengths, bins=LENGTH_EDGES + [max(LENGTH_EDGES[-1] + 1, lengths.max() + 1)])
    assert manifest["lengths"]["histogram"]["counts"] == hist.tolist()
    assert manifest["lengths"]["histogram"]["edges"] == LENGTH_EDGES + ["inf"]
    assert manifest["lengths"]["min"] == lengths.min() and manifest["lengths"]["max"] == lengths.max()
    assert manifest["lengths"]["mean"] == round(float(lengths.mean()), 2)
    assert manifest["lengths"]["median"] == float(np.median(lengths))
    residues = Counter("".join(clean(s) for _, s in recs))
    got = {aa: n for aa, n in manifest["residue_counts"].items() if n}
    assert got == dict(residues)
    total = manifest["splits"]["train"]["residues"] + manifest["splits"]["valid"]["residues"]
    assert total == sum(residues.values())
    distinct = len({clean(s) for _, s in recs})
    assert manifest["counts"]["distinct_sequences"] == distinct
    assert manifest["counts"]["duplicate_sequences"] == N_RECORDS - distinct
    assert manifest["counts"]["duplicates_removed"] == 0
    assert manifest["format"] == "protlm-shards" and manifest["vocab"]["alphabet"] == list(ALPHABET)


def test_valid_fraction_close_to_requested(reference):
    _, manifest = reference
    frac = manifest["splits"]["valid"]["records"] / N_RECORDS
    assert abs(frac - 0.1) < 0.03  # ~5 standard deviations for n = 2500


def test_valid_fraction_zero(corpus, tmp_path):
    fasta, _ = corpus
    manifest = prepare(fasta, tmp_path / "o", opts(valid_fraction=0.0, chunk_mb=1.0))
    assert manifest["splits"]["valid"]["records"] == 0
    assert manifest["splits"]["train"]["records"] == N_RECORDS


# --------------------------------------------------------------------------- split by id


def test_split_depends_only_on_id(corpus, reference, tmp_path):
    _, recs = corpus
    out, _ = reference
    ref_valid = set(ShardedDataset(out, "valid").ids())
    shuffled = list(recs)
    random.Random(5).shuffle(shuffled)
    fasta = tmp_path / "shuffled.fa"
    fasta.write_text(render(shuffled, seed=99))
    out2 = tmp_path / "o"
    prepare(fasta, out2, opts(chunk_mb=0.13))
    assert set(ShardedDataset(out2, "valid").ids()) == ref_valid
    assert set(ShardedDataset(out2, "train").ids()) == set(ShardedDataset(out, "train").ids())
    # a subset of the records keeps each record's split
    sub = tmp_path / "subset.fa"
    sub.write_text(render(shuffled[:300], seed=3))
    prepare(sub, tmp_path / "o2", opts())
    assert set(ShardedDataset(tmp_path / "o2", "valid").ids()) == ref_valid & {r for r, _ in shuffled[:300]}


def test_split_salt_changes_split(corpus, reference, tmp_path):
    fasta, _ = corpus
    out, _ = reference
    prepare(fasta, tmp_path / "o", opts(split_salt="other", chunk_mb=1.0))
    assert set(ShardedDataset(tmp_path / "o", "valid").ids()) != set(ShardedDataset(out, "valid").ids())


# --------------------------------------------------------------------------- determinism


def test_workers_give_identical_files(corpus, reference, tmp_path):
    fasta, _ = corpus
    out, manifest = reference
    m2 = prepare(fasta, tmp_path / "w2", opts(), workers=2)
    assert chunk_files(tmp_path / "w2") == chunk_files(out)
    assert m2["counts"] == manifest["counts"] and m2["splits"] == manifest["splits"]


def test_shards_then_merge_equal_single_run(corpus, reference, tmp_path):
    fasta, _ = corpus
    out, manifest = reference
    o = tmp_path / "sharded"
    p0 = prepare(fasta, o, opts(), shard="0/2")
    assert p0["shard"] == [0, 2] and p0["chunks"] == list(range(0, p0["total_chunks"], 2))
    assert not (o / "manifest.json").exists()
    with pytest.raises(InputError, match="1/2 not done"):
        merge(o)
    p1 = prepare(fasta, o, opts(), shard="1/2")
    assert p1["chunks"] == list(range(1, p1["total_chunks"], 2))
    assert not (o / "manifest.json").exists()
    m = merge(o)
    assert m["counts"] == manifest["counts"]
    assert m["splits"] == manifest["splits"]
    assert m["lengths"] == manifest["lengths"] and m["residue_counts"] == manifest["residue_counts"]
    assert chunk_files(o) == chunk_files(out)


def test_bad_shard_spec(corpus, tmp_path):
    fasta, _ = corpus
    for spec in ("3/2", "2/2", "-1/2", "0/0", "a/b", "1", "1/2/3"):
        with pytest.raises(ConfigError, match="--shard"):
            prepare(fasta, tmp_path / "o", opts(), shard=spec)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- reading and hashes


def test_small_reads_and_gzip_give_identical_chunks(corpus, reference, tmp_path, monkeypatch):
    # reads of 97 bytes: records, and the '\n>' where a chunk is cut, span the reader's pieces
    fasta, _ = corpus
    out, manifest = reference
    gz = tmp_path / "in.fasta.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 97)
    for src in (fasta, gz):
        seen: list[int] = []
        o = tmp_path / f"out-{src.name}"
        m = prepare(src, o, opts(), progress=seen.append)
        assert chunk_files(o) == chunk_files(out)
        assert m["splits"] == manifest["splits"]
        assert sum(seen) == src.stat().st_size  # progress counts the bytes of the file read
        assert part(o)["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_block_cuts_do_not_depend_on_how_the_input_arrives(corpus):
    # the input in pieces cut at random places (a '\n>' split between two pieces included)
    # gives the blocks of the whole text in one piece
    fasta, _ = corpus
    data = fasta.read_bytes()[:60_000]
    rng = random.Random(4)
    newline_cuts = [i + 1 for i in range(len(data) - 1) if data[i : i + 2] == b"\n>"]
    for target in (1, 50, 997, 20_000, 10**6):
        whole = list(fasta_mod.cut_record_blocks([data], "x", target))
        assert b"".join(b for b, _ in whole) == data
        for _ in range(5):
            at = sorted(set(rng.sample(range(1, len(data)), 40) + rng.sample(newline_cuts, 10)))
            pieces = [data[a:b] for a, b in zip([0] + at, at + [len(data)])]
            assert list(fasta_mod.cut_record_blocks(pieces, "x", target)) == whole, target


def test_recorded_hashes_are_the_files_hashes(reference):
    # the hashes are computed from the bytes as they are written, not read back
    out, manifest = reference
    for k in range(manifest["chunks"]):
        done = json.loads((out / "chunks" / f"{prep.chunk_name(k)}.done.json").read_text())
        assert list(done["files"]) == prep.chunk_file_names(k)
        assert done["files"] == {n: xxh3_file(out / "chunks" / n) for n in prep.chunk_file_names(k)}
    assert prep.verify(out)["hashes_checked"]


def test_manifest_hashes_of_chunks_rewritten_by_merge(corpus, tmp_path):
    fasta, _ = corpus
    m = prepare(fasta, tmp_path / "o", opts(), dedup=True)
    assert m["counts"]["duplicates_removed"] > 0
    assert list((tmp_path / "o" / "chunks").glob("*.merged.json"))
    prep.verify(tmp_path / "o")  # the manifest names the rewritten files' hashes, not the first ones


def test_truncated_gzip_is_one_clear_error(corpus, tmp_path):
    fasta, _ = corpus
    data = gzip.compress(fasta.read_bytes())
    gz = tmp_path / "in.fasta.gz"
    gz.write_bytes(data[: len(data) // 2])
    threads = threading.active_count()
    with pytest.raises(FastaError, match="truncated gzip"):
        prepare(gz, tmp_path / "o", opts())
    assert threading.active_count() == threads  # the reader thread has stopped
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert no_temp_files(tmp_path / "o")


def test_read_ahead_raises_the_producers_error_and_stops_its_thread():
    def failing():
        yield 1
        yield 2
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for x in fasta_mod.read_ahead(failing(), depth=1):
            got.append(x)
    assert got == [1, 2]

    closed = []

    def endless():
        try:
            yield from itertools.count()
        finally:
            closed.append(True)

    threads = threading.active_count()
    ahead = fasta_mod.read_ahead(endless(), depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert closed == [True] and threading.active_count() == threads


def test_shards_module_does_not_import_prepare():
    # the format is defined by the reader; prepare imports it (no import circle)
    code = "import sys, protlm.data.shards; sys.exit('protlm.data.prepare' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert (prep.FORMAT, prep.FORMAT_VERSION, prep.SPLITS) == (shards.FORMAT, shards.FORMAT_VERSION, shards.SPLITS)


# --------------------------------------------------------------------------- resume


def test_resume_reuses_chunks_and_redoes_only_missing(corpus, tmp_path, monkeypatch):
    fasta, _ = corpus
    out = tmp_path / "o"
    m1 = prepare(fasta, out, opts())
    total = m1["chunks"]
    before = mtimes(out)
    files = chunk_files(out)

    calls: list[int] = []
    real = prep.process_chunk

    def spy(job, *a, **kw):
        calls.append(job.index)
        return real(job, *a, **kw)

    monkeypatch.setattr(prep, "process_chunk", spy)
    m2 = prepare(fasta, out, opts())
    assert calls == []
    assert part(out)["chunks_reused"] == total == part(out)["total_chunks"]
    assert mtimes(out) == before
    assert m2["counts"] == m1["counts"] and m2["splits"] == m1["splits"]

    (out / "chunks" / "c000003.done.json").unlink()
    m3 = prepare(fasta, out, opts())
    assert calls == [3]
    assert part(out)["chunks_reused"] == total - 1
    after = mtimes(out)
    for name, t in before.items():
        if not name.startswith("c000003."):
            assert after[name] == t, name
    assert (out / "chunks" / "c000003.done.json").exists()
    assert chunk_files(out) == files
    assert m3["counts"] == m1["counts"]


def test_resume_redoes_a_chunk_whose_input_changed(tmp_path, monkeypatch):
    recs = make_records(300, seed=21)
    fasta = tmp_path / "in.fa"
    fasta.write_text(render(recs, seed=1))
    out = tmp_path / "o"
    prepare(fasta, out, opts(chunk_mb=0.02))
    total = part(out)["total_chunks"]
    # change one residue of the last record: only the last chunk's content differs
    rid, seq = recs[-1]
    recs[-1] = (rid, ("W" if seq[0] != "W" else "A") + seq[1:])
    fasta.write_text(render(recs, seed=1))
    calls: list[int] = []
    real = prep.process_chunk
    monkeypatch.setattr(prep, "process_chunk", lambda job, *a: calls.append(job.index) or real(job, *a))
    prepare(fasta, out, opts(chunk_mb=0.02))
    assert calls == [total - 1]
    seqs = {**read_split(out, "train"), **read_split(out, "valid")}
    assert seqs[rid] == clean(recs[-1][1])


def test_other_options_into_same_folder(corpus, tmp_path):
    fasta, _ = corpus
    out = tmp_path / "o"
    prepare(fasta, out, opts(chunk_mb=1.0))
    for changed in (dict(valid_fraction=0.2), dict(min_length=5), dict(rare="keep"), dict(chunk_mb=2.0)):
        with pytest.raises(ConfigError, match="other options"):
            prepare(fasta, out, opts(**{"chunk_mb": 1.0, **changed}))
    exclude = tmp_path / "ex.txt"
    exclude.write_text("sp|Q00001|PROT_1\n")
    with pytest.raises(ConfigError, match="other options"):
        prepare(fasta, out, opts(chunk_mb=1.0), exclude=[exclude])
    prepare(fasta, out, opts(chunk_mb=1.0))  # the same options still resume


# --------------------------------------------------------------------------- interruption


def test_failure_in_third_chunk_leaves_no_partial_files(corpus, reference, tmp_path, monkeypatch):
    fasta, _ = corpus
    ref_out, ref_manifest = reference
    out = tmp_path / "o"
    real_write = prep._SplitWriter.write

    def failing_write(self, tokens, lengths, ids):
        real_write(self, tokens, lengths, ids)  # something reaches the temp files first
        if self.final["tokens"].name.startswith("c000002."):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep._SplitWriter, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        prepare(fasta, out, opts())
    assert not (out / "manifest.json").exists()
    names = sorted(p.name for p in (out / "chunks").iterdir())
    assert not [n for n in names if n.startswith("c000002.")], names
    assert no_temp_files(out)
    assert "c000001.done.json" in names and "c000000.done.json" in names

    monkeypatch.setattr(prep._SplitWriter, "write", real_write)
    manifest = prepare(fasta, out, opts())
    assert part(out)["chunks_reused"] == 2
    assert manifest["counts"] == ref_manifest["counts"]
    assert chunk_files(out) == chunk_files(ref_out)


def test_process_chunk_failure_then_rerun(corpus, reference, tmp_path, monkeypatch):
    fasta, _ = corpus
    ref_out, ref_manifest = reference
    out = tmp_path / "o"
    real = prep.process_chunk
    calls: list[int] = []

    def flaky(job, *a, **kw):
        calls.append(job.index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, *a, **kw)

    monkeypatch.setattr(prep, "process_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(fasta, out, opts())
    assert calls == [0, 1, 2]
    assert not (out / "manifest.json").exists()
    assert not list((out / "chunks").glob("c000002.*"))
    assert no_temp_files(out)

    monkeypatch.setattr(prep, "process_chunk", real)
    manifest = prepare(fasta, out, opts())
    assert part(out)["chunks_reused"] == 2
    assert manifest["counts"] == ref_manifest["counts"]
    assert chunk_files(out) == chunk_files(ref_out)


def test_interrupt_from_progress_callback(corpus, reference, tmp_path, monkeypatch):
    fasta, _ = corpus
    ref_out, ref_manifest = reference
    out = tmp_path / "o"
    monkeypatch.setattr(fasta_mod, "READ_SIZE", 1 << 16)  # many progress calls
    seen = []

    def progress(n):
        seen.append(n)
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(fasta, out, opts(), progress=progress)
    assert not (out / "manifest.json").exists()
    assert no_temp_files(out)
    done = sorted((out / "chunks").glob("*.done.json"))
    assert 0 < len(done) < ref_manifest["chunks"]

    seen.clear()
    manifest = prepare(fasta, out, opts(), progress=seen.append)
    assert sum(seen) == fasta.stat().st_size  # progress counts every byte once
    assert part(out)["chunks_reused"] == len(done)
    assert manifest["counts"] == ref_manifest["counts"]
    assert chunk_files(out) == chunk_files(ref_out)


# --------------------------------------------------------------------------- filters


def test_exclude_fasta_and_id_list(corpus, tmp_path):
    fasta, recs = corpus
    rng = random.Random(8)
    by_fasta = rng.sample(recs, 40)
    by_id = [r for r in rng.sample(recs, 40) if r not in by_fasta]
    ex_fa = tmp_path / "test_set.fasta"
    ex_fa.write_text("".join(f">{rid}\n{seq.lower()}\n" for rid, seq in by_fasta))
    ex_ids = tmp_path / "ids.txt"
    ex_ids.write_text("\n".join(rid for rid, _ in by_id) + "\n\n")
    manifest = prepare(fasta, tmp_path / "o", opts(chunk_mb=0.5), exclude=[ex_fa, ex_ids])

    gone_seqs = {clean(s) for _, s in by_fasta}  # a FASTA excludes ids and sequences
    gone_ids = {r for r, _ in by_fasta} | {r for r, _ in by_id}
    expected = {r: clean(s) for r, s in recs if r not in gone_ids and clean(s) not in gone_seqs}
    got = {**read_split(tmp_path / "o", "train"), **read_split(tmp_path / "o", "valid")}
    assert got == expected
    assert manifest["counts"]["excluded"] == N_RECORDS - len(expected)
    assert manifest["counts"]["kept"] == len(expected)
    assert manifest["exclude"]["ids"] == len({r for r, _ in by_fasta} | {r for r, _ in by_id})


def test_exclude_text_sequences(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKVL\n>b\nACDE\n>c\nmkvl*\n>d\nWWWW\n")
    ex = tmp_path / "seqs.txt"
    ex.write_text("MKVL\nd\n")
    m = prepare(fasta, tmp_path / "o", opts(valid_fraction=0.0), exclude=[ex])
    assert ShardedDataset(tmp_path / "o", "train").ids() == ["b"]
    assert m["counts"]["excluded"] == 3


def test_exclude_missing_file(corpus, tmp_path):
    fasta, _ = corpus
    with pytest.raises(InputError, match="--exclude"):
        prepare(fasta, tmp_path / "o", opts(), exclude=[tmp_path / "nope.txt"])


def test_length_filters(corpus, tmp_path):
    fasta, recs = corpus
    manifest = prepare(fasta, tmp_path / "o", opts(min_length=30, max_length=1500, chunk_mb=0.5))
    lengths = [len(clean(s)) for _, s in recs]
    assert manifest["counts"]["too_short"] == sum(n < 30 for n in lengths)
    assert manifest["counts"]["too_long"] == sum(n > 1500 for n in lengths)
    assert manifest["counts"]["too_short"] > 0 and manifest["counts"]["too_long"] > 0
    expected = {r: clean(s) for r, s in recs if 30 <= len(clean(s)) <= 1500}
    got = {**read_split(tmp_path / "o", "train"), **read_split(tmp_path / "o", "valid")}
    assert got == expected
    assert manifest["counts"]["kept"] == len(expected)
    assert manifest["lengths"]["min"] >= 30 and manifest["lengths"]["max"] <= 1500


def test_dedup_keeps_first_occurrence(corpus, tmp_path):
    fasta, recs = corpus
    manifest = prepare(fasta, tmp_path / "o", opts(), dedup=True)
    first: dict[str, str] = {}
    for rid, seq in recs:
        first.setdefault(clean(seq), rid)
    expected = {rid: s for s, rid in first.items()}
    got = {**read_split(tmp_path / "o", "train"), **read_split(tmp_path / "o", "valid")}
    assert got == expected
    c = manifest["counts"]
    assert c["duplicates_removed"] == c["duplicate_sequences"] == N_RECORDS - len(expected) > 50
    assert c["kept"] == len(expected) == c["distinct_sequences"]
    assert manifest["splits"]["train"]["records"] + manifest["splits"]["valid"]["records"] == len(expected)
    lengths = np.array([len(s) for s in expected.values()])
    assert manifest["lengths"]["max"] == lengths.max()
    assert sum(manifest["lengths"]["histogram"]["counts"]) == len(expected)


def test_skip_invalid(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKVL\n>b\nAC1E\n>c\nAC*D\n>d\nWW**\n>e\n>f\nKK\n")
    with pytest.raises(InputError, match=r"in.fa:4: record 'b'"):
        prepare(fasta, tmp_path / "o", opts())
    m = prepare(fasta, tmp_path / "o2", opts(skip_invalid=True, valid_fraction=0.0))
    assert ShardedDataset(tmp_path / "o2", "train").ids() == ["a", "d", "f"]
    assert m["counts"]["skipped_invalid"] == 3
    assert m["counts"]["records_read"] == 3
    assert len(m["skipped_messages"]) == 3


# --------------------------------------------------------------------------- duplicate ids


def dup_id_fasta(tmp_path: Path) -> Path:
    # P1 again at line 7, in another chunk (each record is its own chunk at this chunk size)
    fasta = tmp_path / "dup.fa"
    fasta.write_text(">P1\nMKVL\n>P2\nACDE\n>P3\nWW\n>P1 again\nKKKK\n>P4\nAA\n")
    return fasta


def test_duplicate_ids_are_an_error_at_merge(tmp_path):
    fasta = dup_id_fasta(tmp_path)
    out = tmp_path / "o"
    with pytest.raises(InputError) as info:
        prepare(fasta, out, opts(chunk_mb=0.000001, valid_fraction=0.5))
    msg = str(info.value)
    assert f"{fasta}:7: duplicate id 'P1'" in msg and "line 1" in msg
    assert "--rename-duplicates" in msg and "\n" not in msg
    assert not (out / "manifest.json").exists()
    # every chunk was done: rerunning with --rename-duplicates only redoes the merge
    m = prepare(fasta, out, opts(chunk_mb=0.000001, valid_fraction=0.5), rename_duplicates=True)
    assert part(out)["chunks_reused"] == part(out)["total_chunks"] == 5
    got = {**read_split(out, "train"), **read_split(out, "valid")}
    assert got == {"P1": "MKVL", "P2": "ACDE", "P3": "WW", "P1_2": "KKKK", "P4": "AA"}
    assert m["counts"]["duplicate_ids_renamed"] == 1


def test_duplicate_ids_in_one_chunk(tmp_path):
    fasta = dup_id_fasta(tmp_path)
    with pytest.raises(InputError, match="dup.fa:7: .*line 1"):
        prepare(fasta, tmp_path / "o", opts())
    m = prepare(fasta, tmp_path / "o2", opts(valid_fraction=0.0), rename_duplicates=True)
    assert ShardedDataset(tmp_path / "o2", "train").ids() == ["P1", "P2", "P3", "P1_2", "P4"]
    assert m["counts"]["duplicate_ids_renamed"] == 1


def test_prepare_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        prepare(tmp_path / "nope.fa", tmp_path / "o")
    (tmp_path / "in.fa").write_text(">a\nAC\n")
    with pytest.raises(ConfigError, match="workers"):
        prepare(tmp_path / "in.fa", tmp_path / "o", workers=0)
    with pytest.raises(InputError, match="no prepared parts"):
        merge(tmp_path / "empty")
    for bad in (dict(valid_fraction=1.0), dict(min_length=0), dict(min_length=5, max_length=4),
                dict(chunk_mb=0), dict(rare="drop")):
        with pytest.raises(ConfigError):
            PrepareOptions(**bad)


# --------------------------------------------------------------------------- the real data

DATA = Path(os.environ.get("PROTLM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SWISSPROT = DATA / "pretraining" / "swissprot_2014_01_go_annotated.fasta.gz"


@pytest.mark.data
@pytest.mark.skipif(not SWISSPROT.is_file(), reason="../shared/data not found: set PROTLM_DATA")
def test_swissprot_full(tmp_path):
    m = prepare(SWISSPROT, tmp_path / "sp", PrepareOptions(), workers=2)
    c = m["counts"]
    assert c["records_read"] == 516371
    assert c["distinct_sequences"] == 435059
    assert m["lengths"]["max"] == 35213
    assert m["splits"]["train"]["residues"] + m["splits"]["valid"]["residues"] == 186717374
    assert c["skipped_invalid"] == 0 and c["kept"] == 516371
    assert abs(m["splits"]["valid"]["records"] / 516371 - 0.01) < 0.001


@pytest.mark.parametrize("dedup", [False, True])
def test_many_duplicate_ids_renamed_like_read_fasta(tmp_path, dedup):
    rng = random.Random(31)
    recs = make_records(600, seed=30)
    ids = [rid for rid, _ in recs]
    for i in range(1, len(recs)):
        if rng.random() < 0.15:
            ids[i] = ids[rng.randrange(i)]  # reuse an earlier id (maybe several times)
    recs = list(zip(ids, (s for _, s in recs)))
    fasta = tmp_path / "dups.fa"
    fasta.write_text(render(recs, seed=2))
    expected = [(r.id, r.sequence) for r in fasta_mod.read_fasta(fasta, rename_duplicates=True)]
    n_renamed = len(recs) - len(set(ids))
    assert n_renamed > 50
    out = tmp_path / "o"
    with pytest.raises(InputError, match="duplicate id"):
        prepare(fasta, out, opts(valid_fraction=0.4, chunk_mb=0.03), dedup=dedup)
    m = prepare(fasta, out, opts(valid_fraction=0.4, chunk_mb=0.03), dedup=dedup, rename_duplicates=True)
    if dedup:
        seen: set[str] = set()
        expected = [(r, s) for r, s in expected if not (s in seen or seen.add(s))]
    got = {**read_split(out, "train"), **read_split(out, "valid")}
    assert got == dict(expected)
    assert m["counts"]["duplicate_ids_renamed"] == n_renamed
    assert m["counts"]["kept"] == len(expected)
    # merging again gives the same result (the rewrite is not applied twice)
    m2 = merge(out, dedup=dedup, rename_duplicates=True)
    assert m2["counts"] == m["counts"]
    assert {**read_split(out, "train"), **read_split(out, "valid")} == got


def test_odd_ids_stay_aligned_with_records(tmp_path):
    # bytes that str.splitlines() would split on, and an id that is not UTF-8
    fasta = tmp_path / "odd.fa"
    fasta.write_bytes(b">A\x1cB x\nAC\n>C\xe2\x80\xa8D\nDE\n>E\x85F\nFF\n>G\xe9H\nGG\n>I|J.K\nKK\n")
    prepare(fasta, tmp_path / "o", opts(valid_fraction=0.0))
    ds = ShardedDataset(tmp_path / "o", "train")
    ids = ds.ids()
    assert len(ids) == len(ds) == 5
    # prepare keeps ids as bytes (duplicates are found on bytes); read_fasta, whose ids become
    # text in outputs, refuses a header that is not UTF-8 rather than decode it lossily
    utf8 = tmp_path / "utf8.fa"
    utf8.write_bytes(fasta.read_bytes().replace(b">G\xe9H\nGG\n", b"").replace(b">E\x85F\nFF\n", b""))
    assert [i for i in ids if "\ufffd" not in i] == [r.id for r in fasta_mod.read_fasta(utf8)]
    with pytest.raises(fasta_mod.FastaError, match="not UTF-8"):
        list(fasta_mod.read_fasta(fasta))
    assert ids[:2] == ["A\x1cB", "C\u2028D"] and ids[4] == "I|J.K"
    assert [ds.sequence(i) for i in range(5)] == ["AC", "DE", "FF", "GG", "KK"]
