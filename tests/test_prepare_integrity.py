"""``protlm prepare`` / prepared shards against damaged, tampered or misplaced files: one clear
error line (exit 2), never a traceback, never an overwritten input, never a silently wrong run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protlm.data.alphabet import ALPHABET
from protlm.data.prepare import PrepareOptions, prepare
from protlm.data.shards import ShardedDataset
from protlm.errors import InputError
from cli_checks import cli as _cli, one_error as _one_error  # tests/cli_checks.py

CHUNK_MB = 0.001  # ~1 kB chunks: a 60-record input gives several


def _fasta(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("".join(f">p{i}\n{''.join(rng.choice(list(ALPHABET[:20]), int(rng.integers(20, 80))))}\n"
                            for i in range(n)))
    return path


def _prepare_args(src: Path, out: Path, *extra) -> list:
    return ["prepare", src, "--out", out, "--chunk-mb", CHUNK_MB, "--valid-fraction", 0.2, *extra]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    src = _fasta(folder / "in.fa")
    out = folder / "out"
    manifest = prepare(src, out, PrepareOptions(chunk_mb=CHUNK_MB, valid_fraction=0.2))
    assert manifest["chunks"] >= 3 and manifest["splits"]["valid"]["records"] > 0
    return src, out


@pytest.fixture
def copy(ref, tmp_path):
    """A private copy of the reference folder (and its input) to damage."""
    src, out = ref
    shutil.copy(src, tmp_path / "in.fa")
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "in.fa", tmp_path / "out"


def _edit_manifest(out: Path, edit) -> None:
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def _verify_and_open_refused(capsys, out: Path, *needles: str) -> None:
    code, _, err = _cli(capsys, "prepare", "--verify", "--out", out)
    _one_error(code, err, *needles)
    for split in ("train", "valid"):
        with pytest.raises(InputError):
            ShardedDataset(out, split)


# --------------------------------------------------------------------------- 1. outputs vs inputs


@pytest.mark.parametrize("where", ["manifest.json", "chunks/c000000.train.ids.txt", "parts/part-0-of-1.json"])
def test_input_inside_what_prepare_writes_is_refused(tmp_path, capsys, where):
    out = tmp_path / "o"
    src = out / where
    src.parent.mkdir(parents=True)
    _fasta(src)
    before = src.read_bytes()
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    _one_error(code, err, "input of this command")
    assert src.read_bytes() == before


def test_exclude_file_inside_what_prepare_writes_is_refused(ref, tmp_path, capsys):
    src, _ = ref
    out = tmp_path / "o"
    (out / "chunks").mkdir(parents=True)
    excl = out / "chunks" / "c000000.train.ids.txt"
    excl.write_text("p1\n")
    code, _, err = _cli(capsys, *_prepare_args(src, out, "--exclude", excl))
    _one_error(code, err, "input of this command")
    assert excl.read_text() == "p1\n"


def test_input_elsewhere_in_the_out_folder_is_fine(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    src = _fasta(out / "in.fa")
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    assert code == 0, err
    assert ShardedDataset(out, "train")


def test_foreign_manifest_in_out_is_not_overwritten(ref, tmp_path, capsys):
    src, _ = ref
    out = tmp_path / "o"
    out.mkdir()
    (out / "manifest.json").write_text('{"mine": 1}')
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    _one_error(code, err, "manifest.json is not one protlm prepare wrote")
    assert (out / "manifest.json").read_text() == '{"mine": 1}'
    code, _, err = _cli(capsys, "prepare-merge", out)
    _one_error(code, err, "manifest.json is not one protlm prepare wrote")
    assert (out / "manifest.json").read_text() == '{"mine": 1}'


def test_foreign_files_in_chunks_folder_are_refused(ref, tmp_path, capsys):
    src, _ = ref
    out = tmp_path / "o"
    (out / "chunks").mkdir(parents=True)
    (out / "chunks" / "notes.txt").write_text("mine")
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    _one_error(code, err, "did not write", "notes.txt")
    assert [p.name for p in (out / "chunks").iterdir()] == ["notes.txt"]


def test_rerun_into_its_own_folder_still_resumes(copy, capsys):
    src, out = copy
    before = (out / "manifest.json").read_bytes()
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_bytes())["splits"] == json.loads(before)["splits"]


# --------------------------------------------------------------------------- 2. token range


def test_out_of_range_tokens_are_refused_when_a_shard_is_opened(copy, capsys):
    _, out = copy
    for tok in (out / "chunks").glob("*.tokens"):
        tok.write_bytes(b"\xff" * tok.stat().st_size)
    with pytest.raises(InputError, match=r"c000000\.train\.tokens: token id 255 outside the alphabet"):
        ShardedDataset(out, "train")


def test_pretrain_on_out_of_range_tokens_is_one_error(copy, tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    _, out = copy
    for tok in (out / "chunks").glob("*.tokens"):
        tok.write_bytes(b"\xff" * tok.stat().st_size)
    config = {"model": {"arch": "esm", "preset": "tiny", "max_positions": 300},
              "data": {"shards": str(out), "valid_sequences": 4},
              "optimizer": {"name": "adamw", "lr": 3e-3, "warmup_steps": 1},
              "train": {"seed": 0, "phases": [{"steps": 2, "max_length": 64, "tokens_per_batch": 256}],
                        "log_every": 1, "eval_every": 2, "save_every": 2, "tensorboard": False}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    code, _, err = _cli(capsys, "pretrain", "--config", tmp_path / "tiny.yaml", "--shards", out,
                        "--out", tmp_path / "r", "--threads", 1)
    _one_error(code, err, ".tokens: token id 255 outside the alphabet")


# --------------------------------------------------------------------------- 3. malformed entries


@pytest.mark.parametrize("field,value,needle", [
    ("offsets", None, "is not a path"),
    ("tokens", 5, "is not a path"),
    ("tokens", "../../../etc/passwd", "outside the prepared folder"),
    ("ids", "/etc/hostname", "outside the prepared folder"),
])
def test_malformed_shard_entries_are_one_error(copy, capsys, field, value, needle):
    _, out = copy

    def edit(m):
        m["splits"]["train"]["shards"][0][field] = value

    _edit_manifest(out, edit)
    _verify_and_open_refused(capsys, out, needle)


# --------------------------------------------------------------------------- 4. tampered lists


@pytest.mark.parametrize("tamper,needle", [
    ("delete first", "not chunk 0"),
    ("duplicate first", "listed twice"),
    ("records + 100", "records is"),
    ("no valid shards", "lists 0 shards"),
    ("no valid shards, no chunk count", "records is"),
])
def test_tampered_shard_lists_are_refused(copy, capsys, tamper, needle):
    _, out = copy

    def edit(m):
        train = m["splits"]["train"]
        if tamper == "delete first":
            train["records"] -= train["shards"][0]["records"]
            del train["shards"][0]
        elif tamper == "duplicate first":
            train["records"] += train["shards"][0]["records"]
            train["shards"].insert(1, train["shards"][0])
        elif tamper == "records + 100":
            train["records"] += 100
        else:
            m["splits"]["valid"]["shards"] = []
            if "no chunk count" in tamper:
                del m["chunks"]

    _edit_manifest(out, edit)
    _verify_and_open_refused(capsys, out, needle)


# --------------------------------------------------------------------------- 5. verify's claims


def test_verify_refuses_a_shard_without_its_hash(copy, capsys):
    _, out = copy
    m = json.loads((out / "manifest.json").read_text())
    shard = m["splits"]["train"]["shards"][0]
    del shard["xxh3_128"]
    (out / "manifest.json").write_text(json.dumps(m))
    tokens = out / shard["tokens"]
    data = bytearray(tokens.read_bytes())
    data[0] = (data[0] + 1) % 20
    tokens.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "prepare", "--verify", "--out", out)
    _one_error(code, err, "records no content hash")
    assert "match the manifest" not in err


# --------------------------------------------------------------------------- 6. merge checks chunks


@pytest.fixture
def sharded(ref, tmp_path):
    src, _ = ref
    out = tmp_path / "mt"
    for i in (0, 1):
        prepare(src, out, PrepareOptions(chunk_mb=CHUNK_MB, valid_fraction=0.2), shard=f"{i}/2")
    return src, out


@pytest.mark.parametrize("damage", ["truncate", "same size"])
def test_merge_refuses_damaged_chunks(sharded, capsys, damage):
    src, out = sharded
    tokens = out / "chunks" / "c000002.train.tokens"
    data = bytearray(tokens.read_bytes())
    assert len(data) > 1
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[0] = (data[0] + 1) % 20
    tokens.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "prepare-merge", out)
    _one_error(code, err, "chunk 2's files", "rerun prepare")
    assert not (out / "manifest.json").exists()
    # the rerun of that part redoes the chunk; the merge then succeeds
    prepare(src, out, PrepareOptions(chunk_mb=CHUNK_MB, valid_fraction=0.2), shard="0/2")
    code, _, err = _cli(capsys, "prepare-merge", out)
    assert code == 0, err
    code, _, err = _cli(capsys, "prepare", "--verify", "--out", out)
    assert code == 0, err


# --------------------------------------------------------------------------- 7. damaged JSON


@pytest.mark.parametrize("content", ["{}", "[1, 2]", '{"shard": "x"}'])
def test_damaged_part_file_is_one_error(sharded, capsys, content):
    _, out = sharded
    (out / "parts" / "part-1-of-2.json").write_text(content)
    code, _, err = _cli(capsys, "prepare-merge", out)
    _one_error(code, err, "part-1-of-2.json: malformed part file")


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '{"fingerprint": 3}'])
def test_damaged_done_marker_redoes_the_chunk(copy, capsys, content):
    src, out = copy
    before = {p.name: p.read_bytes() for p in (out / "chunks").glob("c000001.*")}
    (out / "chunks" / "c000001.done.json").write_text(content)
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    assert code == 0 and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in (out / "chunks").glob("c000001.*")} == before


def test_damaged_done_marker_at_merge_is_one_error(sharded, capsys):
    _, out = sharded
    (out / "chunks" / "c000003.done.json").write_text("[1, 2]")
    code, _, err = _cli(capsys, "prepare-merge", out)
    _one_error(code, err, "c000003.done.json: damaged")


def test_non_object_manifest_is_one_error(copy, capsys):
    src, out = copy
    (out / "manifest.json").write_text("[]")
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    _one_error(code, err, "manifest.json is not one protlm prepare wrote")
    assert (out / "manifest.json").read_text() == "[]"


# --------------------------------------------------------------------------- 8. stale temporaries


def test_rerun_removes_temporaries_of_dead_processes(copy, capsys):
    src, out = copy
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = out / "chunks" / f".c000001.train.tokens.tmp{pid}"
    stale.write_bytes(b"half")
    live = out / "chunks" / f".c000002.train.tokens.tmp{os.getppid()}"  # a running process
    live.write_bytes(b"busy")
    code, _, err = _cli(capsys, *_prepare_args(src, out))
    assert code == 0, err
    assert not stale.exists() and live.exists()
