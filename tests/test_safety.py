"""Issue 15: nothing silently wrong — path safety, shard integrity, locks, the overwrite policy,
tampered inputs and config numbers. Each test is the reproducer of one reported problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protlm.errors import ConfigError, InputError
from cli_checks import cli as _cli, one_error as _one_error  # tests/cli_checks.py

AA = "ACDEFGHIKLMNPQRSTVWY"


def _fasta(path: Path, n: int, seed: int = 0, prefix: str = "p") -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("".join(f">{prefix}{i}\n{''.join(rng.choice(list(AA), int(rng.integers(30, 120))))}\n"
                            for i in range(n)))
    return path


# --------------------------------------------------------------------------- 1. path escape


def test_safe_names_stay_inside_and_are_unique():
    from protlm.io.outputs import safe_names

    ids = ["A", "./A", "../../x", "a/../../b", "/abs/path", "..", ".", "a b", "ä", "x" * 300, "b", "sp|P1|X_Y"]
    names = safe_names(ids)
    assert names["A"] == "A" and names["sp|P1|X_Y"] != "sp|P1|X_Y"
    assert len(set(names.values())) == len(ids)  # unique
    assert len({n.lower() for n in names.values()}) == len(ids)  # also on case-insensitive file systems
    for pid, name in names.items():
        assert "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 131, (pid, name)
        assert (Path("/out") / f"{name}.npz").resolve().parent == Path("/out")
    assert safe_names(ids) == names  # deterministic
    both = safe_names(["A", "a", "B"])  # one file on macOS/Windows: both get the id's hash
    assert both["B"] == "B" and both["A"] != both["a"] and both["A"].lower() != both["a"].lower()


@pytest.fixture(scope="module")
def contact_head(tmp_path_factory) -> Path:
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import train

    sys.path.insert(0, str(Path(__file__).parent))
    from test_contacts import _tiny_set

    root = tmp_path_factory.mktemp("contacts")
    data = root / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=6)
    config = {"name": "tiny_pair", "protocol": "residue_pairs_to_class", "embedder": "onehot",
              "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None},
              "head": {"type": "pair_mlp", "hidden": 8},
              "train": {"epochs": 1, "crop": 24, "pair_budget": 2000, "seed": 0}, "evaluate": {"n_boot": 10}}
    train(build_task_config(config), root / "head", data)
    return root / "head"


def test_contacts_predict_never_writes_outside_the_folder(tmp_path, capsys, contact_head):
    """Ids `../../x`, `a/../../b`, `/abs/path` wrote outside --out; `A` and `./A` overwrote each other."""
    import shutil

    shutil.copytree(contact_head, tmp_path / "head")
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    ids = ["../../x", "a/../../b", str(tmp_path / "abs"), "A", "./A"]
    fasta = work / "in.fa"
    fasta.write_text("".join(f">{pid}\nMKTAYIAKQRQISFVKSHF{'A' * k}\n" for k, pid in enumerate(ids)))
    before = set(tmp_path.rglob("*"))
    out = work / "out"
    code, stdout, err = _cli(capsys, "contacts", "predict", "--head", tmp_path / "head", "--input", fasta,
                             "--out", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    new = set(tmp_path.rglob("*")) - before
    assert new and all(p == out or out in p.parents for p in new), sorted(map(str, new - {out}))
    npz = [Path(p["npz"]) for p in result["predictions"]]
    assert len(set(npz)) == 5 and all(p.parent == out and p.is_file() for p in npz)
    # each file holds its own protein, and predictions.json maps id -> file
    for p in result["predictions"]:
        assert len(np.load(p["npz"])["sequence"].item()) == p["length"]
    assert {p["id"] for p in result["predictions"]} == set(ids)
    # the policy: an existing output folder needs --overwrite
    code, _, err = _cli(capsys, "contacts", "predict", "--head", tmp_path / "head", "--input", fasta, "--out", out)
    _one_error(code, err, "--overwrite")


# --------------------------------------------------------------------------- 2. corrupt shards


@pytest.fixture
def prepared(tmp_path):
    from protlm.data.prepare import PrepareOptions, prepare

    src = _fasta(tmp_path / "a.fa", 300)
    out = tmp_path / "shards"
    prepare(src, out, PrepareOptions(valid_fraction=0.1, chunk_mb=0.01))
    return src, out


def test_truncated_shard_is_an_error_not_empty_sequences(prepared, capsys, caplog):
    from protlm.data.shards import ShardedDataset

    src, out = prepared
    tokens = sorted(out.glob("chunks/*.train.tokens"))[0]
    full = len(ShardedDataset(out, "train"))
    with open(tokens, "r+b") as fh:
        fh.truncate(tokens.stat().st_size - 7)
    with pytest.raises(InputError, match="truncated or altered"):
        ShardedDataset(out, "train")
    code, _, err = _cli(capsys, "prepare", "--verify", "--out", out)
    _one_error(code, err, tokens.name)
    # a rerun of prepare notices the damaged chunk and redoes it
    code, _, err = _cli(capsys, "prepare", src, "--out", out, "--chunk-mb", 0.01, "--valid-fraction", 0.1)
    assert code == 0, err
    assert "redoing it" in caplog.text
    assert len(ShardedDataset(out, "train")) == full
    code, _, err = _cli(capsys, "prepare", "--verify", "--out", out)
    assert code == 0 and "content hashes match" in err


def test_verify_catches_same_size_edits_and_merged_folders(tmp_path, capsys):
    from protlm.data.prepare import PrepareOptions, prepare

    src = tmp_path / "dup.fa"
    _fasta(src, 50)
    src.write_text(src.read_text() + src.read_text().replace(">p", ">q"))  # duplicate sequences
    out = tmp_path / "o"
    prepare(src, out, PrepareOptions(chunk_mb=0.004), dedup=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list((out / "chunks").glob("*.merged.json"))  # dedup rewrote chunks
    shard = next(s for s in manifest["splits"]["train"]["shards"] if s["residues"])
    assert set(shard["xxh3_128"]) == {"tokens", "offsets", "ids"}
    tokens = out / shard["tokens"]
    data = bytearray(tokens.read_bytes())
    data[0] = (data[0] + 1) % 20  # same size, other residue
    tokens.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "prepare", "--verify", "--out", out)
    _one_error(code, err, "content differs")
    # rerunning prepare on the finished (merged) folder does not print the old counts with rc 0
    code, _, err = _cli(capsys, "prepare", src, "--out", out, "--chunk-mb", 0.004, "--dedup")
    _one_error(code, err, "content differs")


def test_prepare_refuses_another_input_in_a_finished_folder(prepared, tmp_path, capsys):
    src, out = prepared
    other = _fasta(tmp_path / "b.fa", 40, seed=5, prefix="q")
    code, _, err = _cli(capsys, "prepare", other, "--out", out, "--chunk-mb", 0.01, "--valid-fraction", 0.1)
    _one_error(code, err, "another input", "new --out")


def test_bad_shard_files_give_one_line(prepared, capsys):
    from protlm.data.shards import ShardedDataset

    _, out = prepared
    off = sorted(out.glob("chunks/*.train.offsets.npy"))[0]
    off.write_bytes(b"garbage, not npy")
    with pytest.raises(InputError, match="not a readable offsets file"):
        ShardedDataset(out, "train")
    np.save(off, np.array([0, 5, 3], dtype=np.int64))
    with pytest.raises(InputError, match="malformed offsets"):
        ShardedDataset(out, "train")
    (out / "manifest.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="manifest"):
        ShardedDataset(out, "train")


# --------------------------------------------------------------------------- 4. concurrent prepare


def test_second_prepare_on_one_folder_stops_with_the_holder(prepared, capsys):
    from protlm.io.outputs import output_lock

    src, out = prepared
    # hold the lock from another process, as a concurrent `protlm prepare` would
    code = ("import sys, time; from protlm.io.outputs import output_lock\n"
            "with output_lock(sys.argv[1] + '/parts', 'x', name='.part-0-of-1.lock'):\n"
            "    print('held', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = _cli(capsys, "prepare", src, "--out", out, "--chunk-mb", 0.01, "--valid-fraction", 0.1)
        line = _one_error(code, err, "in use by process", str(holder.pid))
        assert "host" not in line or "on " in line
    finally:
        holder.kill()
        holder.wait()
    # released when its process dies (even by kill -9): the next run works
    code, _, err = _cli(capsys, "prepare", src, "--out", out, "--chunk-mb", 0.01, "--valid-fraction", 0.1)
    assert code == 0, err
    with output_lock(out, "t"):
        pass


# --------------------------------------------------------------------------- 6. overwrite policy


def test_overwrite_policy_unit(tmp_path):
    from protlm.io.outputs import check_output_dir, check_output_file

    inp = tmp_path / "seqs.csv"
    inp.write_text("x")
    with pytest.raises(InputError, match="also an input"):
        check_output_file(inp, inputs=[inp], overwrite=True)
    with pytest.raises(InputError, match="also an input"):
        check_output_file(tmp_path / "." / "seqs.csv", inputs=[inp], overwrite=True)
    with pytest.raises(InputError, match="--overwrite"):
        check_output_file(inp)
    assert check_output_file(inp, overwrite=True) == inp
    with pytest.raises(InputError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "m.json")
    assert not (tmp_path / "missing").exists()
    head = tmp_path / "head"
    head.mkdir()
    (head / "head.json").write_text("{}")
    with pytest.raises(InputError, match="--overwrite"):
        check_output_dir(head, marker="head.json")
    check_output_dir(tmp_path / "new" / "deeper", marker="head.json")
    assert not (tmp_path / "new").exists()  # the check leaves no empty folders behind
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(InputError, match="cannot"):
                check_output_dir(ro / "head")
        finally:
            ro.chmod(0o700)


@pytest.fixture(scope="module")
def tiny_head(tmp_path_factory):
    from protlm.tasks.build import load_task_config
    from protlm.tasks.train import train

    root = tmp_path_factory.mktemp("head")
    rng = np.random.default_rng(1)
    lines = []
    for i in range(60):
        seq = "".join(rng.choice(list(AA), 40))
        split = "train" if i < 40 else "valid" if i < 50 else "test"
        s = "SET=train VALIDATION=True" if split == "valid" else f"SET={split}"
        lines.append(f">s{i} TARGET={'pos' if seq.count('K') > 1 else 'neg'} {s}\n{seq}\n")
    data = root / "cls.fasta"
    data.write_text("".join(lines))
    src = lambda split: {"file": str(data), "format": "biotrainer", "split": split}  # noqa: E731
    cfg = load_task_config(data={
        "name": "tiny", "protocol": "sequence_to_class", "embedder": "onehot",
        "data": {"train": src("train"), "valid": src("valid"), "test": {"t": src("test")}},
        "targets": [{"name": "k", "label": "target"}], "head": {"type": "ffn"},
        "train": {"epochs": 2, "lr": 0.01, "batch_size": 16, "bootstrap": 20}})
    train(cfg, root / "head")
    fasta = root / "in.fa"
    fasta.write_text("".join(f">x{i}\n{''.join(rng.choice(list(AA), 30))}\n" for i in range(3)))
    return root / "head", data, fasta, cfg


def test_predict_and_evaluate_never_destroy_their_input(tiny_head, tmp_path, capsys):
    head, data, fasta, _ = tiny_head
    before = fasta.read_bytes()
    inp = tmp_path / "in.fa"
    inp.write_bytes(before)
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", inp, "--output", inp.with_suffix(".csv"))
    assert code == 0, err
    # --input X --output X (same file), even with --overwrite
    same = tmp_path / "seqs.csv"
    same.write_bytes(before)
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", same, "--output", same, "--overwrite")
    _one_error(code, err, "also an input")
    assert same.read_bytes() == before
    # an existing output needs --overwrite
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", inp, "--output", inp.with_suffix(".csv"))
    _one_error(code, err, "--overwrite")
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", inp, "--output", inp.with_suffix(".csv"),
                        "--overwrite")
    assert code == 0, err
    # evaluate --output onto its labelled input file
    labelled = tmp_path / "cls.fasta"
    labelled.write_bytes(data.read_bytes())
    code, _, err = _cli(capsys, "evaluate", "--head", head, "--file", labelled, "--format", "biotrainer",
                        "--output", labelled, "--overwrite")
    _one_error(code, err, "also an input")
    assert labelled.read_bytes() == data.read_bytes()
    m = tmp_path / "m.json"
    m.write_text("{}")
    code, _, err = _cli(capsys, "evaluate", "--head", head, "--file", labelled, "--format", "biotrainer",
                        "--output", m)
    _one_error(code, err, "--overwrite")
    assert m.read_text() == "{}"


def test_train_refuses_an_existing_head_before_training(tiny_head, tmp_path, capsys):
    from protlm.tasks.build import load_task_config

    head, data, _, cfg = tiny_head
    config = tmp_path / "c.yaml"
    import yaml

    config.write_text(yaml.safe_dump(cfg.as_dict()))
    stamp = (head / "head.safetensors").stat().st_mtime_ns
    code, _, err = _cli(capsys, "train", "--config", config, "--out", head, "--no-cache")
    _one_error(code, err, "--overwrite")
    assert (head / "head.safetensors").stat().st_mtime_ns == stamp
    assert load_task_config(config).name == "tiny"
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:  # an unwritable --out is found before the work, not after training
            code, _, err = _cli(capsys, "train", "--config", config, "--out", ro / "h", "--no-cache")
            _one_error(code, err, "cannot")
            assert "epoch" not in err
        finally:
            ro.chmod(0o700)


def test_merge_policy(tmp_path, capsys):
    import h5py

    a = tmp_path / "a.h5"
    with h5py.File(a, "w") as f:
        f["x"] = np.zeros((3, 2), np.float32)
    code, _, err = _cli(capsys, "merge", tmp_path / "missing" / "m.h5", a)
    _one_error(code, err, "does not exist")
    out = tmp_path / "m.h5"
    out.write_bytes(b"keep")
    code, _, err = _cli(capsys, "merge", out, a)
    _one_error(code, err, "--overwrite")
    assert out.read_bytes() == b"keep"
    code, _, err = _cli(capsys, "merge", a, a, "--overwrite")
    _one_error(code, err, "also an input")
    code, _, err = _cli(capsys, "merge", out, a, "--overwrite")
    assert code == 0, err


# --------------------------------------------------------------------------- 9. tampered heads, bootstrap


def _tampered(tiny_head, tmp_path, edit=None, weights: bytes | None = None) -> Path:
    import shutil

    head = tmp_path / "h"
    shutil.copytree(tiny_head[0], head)
    if edit is not None:
        info = json.loads((head / "head.json").read_text())
        (head / "head.json").write_text(json.dumps(edit(info)))
    if weights is not None:
        (head / "head.safetensors").write_bytes(weights)
    return head


@pytest.mark.parametrize("edit, message", [
    (lambda i: [i], "must hold a JSON object"),
    (lambda i: {**i, "dim": 10**9}, "'dim' must be an integer"),
    (lambda i: {**i, "dim": i["dim"] + 1}, "head.json describes"),
    (lambda i: {**i, "dim": "20"}, "'dim'"),
    (lambda i: {**i, "protocol_state": {**i["protocol_state"], "classes": [["a", "b", "c"]]}}, "head.json describes"),
    (lambda i: {**i, "protocol_state": {**i["protocol_state"], "classes": "ab"}}, "'classes'"),
    (lambda i: {**i, "protocol_state": ["classes"]}, "'protocol_state' must be a JSON object"),
    # a head written before protlm 0.5 (state at the top of head.json) is checked the same way
    (lambda i: {**{k: v for k, v in i.items() if k != "protocol_state"}, **i["protocol_state"],
                "classes": [["a", "b", "c"]]}, "head.json describes"),
    (lambda i: {**i, "config": {**i["config"], "head": {**i["config"]["head"], "hidden": 10**9}}}, "hidden"),
    (lambda i: {**i, "config": {**i["config"], "head": {**i["config"]["head"], "hidden": 33}}}, "head.json describes"),
])
def test_tampered_head_json_is_one_line(tiny_head, tmp_path, capsys, edit, message):
    head = _tampered(tiny_head, tmp_path, edit)
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", tiny_head[2], "--output", tmp_path / "p.csv")
    _one_error(code, err, message)


@pytest.mark.parametrize("weights", [b"", b"garbage" * 10, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx",
                                     b"\xff" * 8 + b"{}"])
def test_garbage_head_weights_are_one_line(tiny_head, tmp_path, capsys, weights):
    head = _tampered(tiny_head, tmp_path, weights=weights)
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", tiny_head[2], "--output", tmp_path / "p.csv")
    _one_error(code, err, "head.safetensors")


def test_truncated_head_weights_are_one_line(tiny_head, tmp_path, capsys):
    good = (tiny_head[0] / "head.safetensors").read_bytes()
    head = _tampered(tiny_head, tmp_path, weights=good[:-16])
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", tiny_head[2], "--output", tmp_path / "p.csv")
    _one_error(code, err, "does not fit the file")


def test_head_weights_of_the_right_shape_but_another_file_are_refused(tiny_head, tmp_path, capsys):
    """Weights replaced by others of the same names and shapes (another training run, an edit):
    head.json records the SHA-256 of the file that was trained, so they are refused."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tiny_head[0] / "head.safetensors"))
    save_file({k: -v for k, v in weights.items()}, str(tmp_path / "neg.safetensors"))
    head = _tampered(tiny_head, tmp_path, weights=(tmp_path / "neg.safetensors").read_bytes())
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", tiny_head[2], "--output", tmp_path / "p.csv")
    _one_error(code, err, "differs from the file head.json records")
    assert not (tmp_path / "p.csv").exists()
    # the same names and shapes stored as integers: refused by their type, not cast
    save_file({k: v.round().to(torch.int64) for k, v in weights.items()}, str(tmp_path / "int.safetensors"))
    head = _tampered(tiny_head, tmp_path / "i", weights=(tmp_path / "int.safetensors").read_bytes())
    code, _, err = _cli(capsys, "predict", "--head", head, "--input", tiny_head[2], "--output", tmp_path / "p.csv")
    _one_error(code, err, "is stored as I64")


def test_bootstrap_option(tiny_head, tmp_path, capsys):
    head, data, _, _ = tiny_head
    code, _, err = _cli(capsys, "evaluate", "--head", head, "--file", data, "--format", "biotrainer",
                        "--split", "test", "--bootstrap", "-5")
    _one_error(code, err, "--bootstrap must be in [0, 100,000]")
    code, out, err = _cli(capsys, "evaluate", "--head", head, "--file", data, "--format", "biotrainer",
                          "--split", "test", "--bootstrap", "0", "--json")
    assert code == 0, err
    assert "nan" not in err
    acc = json.loads(out)["sets"]["cls"]["k"]["accuracy"]
    assert acc["ci95"] == [None, None] and acc["value"] is not None


# --------------------------------------------------------------------------- 10. config numbers


@pytest.mark.parametrize("written, value", [("1e-4", 1e-4), ("1E-4", 1e-4), ("1.0e-4", 1e-4), ("0.0001", 1e-4),
                                            ("3", 3.0), ("1e3", 1000.0), (".5", 0.5)])
def test_every_float_a_user_writes(tmp_path, written, value):
    from protlm.pretrain.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"optimizer:\n  lr: {written}\n")
    assert load_config(cfg).optimizer.lr == pytest.approx(value)
    assert load_config(cfg, [f"optimizer.lr={written}"]).optimizer.lr == pytest.approx(value)
    from protlm.tasks.build import build_task_config

    assert build_task_config({"protocol": "residue_pairs_to_class", "embedder": "onehot", "head": {"type": "pair_mlp"},
                              "train": {"lr": written}}).train.lr == pytest.approx(value)


@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
def test_inf_and_nan_are_refused(tmp_path, written):
    from protlm.pretrain.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"optimizer:\n  lr: {written}\n")
    with pytest.raises(ConfigError, match="optimizer.lr: must be a finite number"):
        load_config(cfg)


def test_empty_and_non_utf8_config_files(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    code, _, err = _cli(capsys, "pretrain", "--config", empty, "--out", tmp_path / "run")
    _one_error(code, err, "holds no settings")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# caf\xe9\noptimizer: {lr: 0.001}\n".encode("latin-1"))
    code, _, err = _cli(capsys, "pretrain", "--config", latin, "--out", tmp_path / "run")
    _one_error(code, err, "not UTF-8", "line 1")
    code, _, err = _cli(capsys, "train", "--config", latin)
    _one_error(code, err, "not UTF-8")


# --------------------------------------------------------------------------- 9. npz inputs


@pytest.mark.parametrize("content", ["object", "notzip", "badzip", "npy"])
def test_bad_npz_files_are_one_line(tmp_path, capsys, content):
    from protlm.tasks.contacts.data import load_chains

    path = tmp_path / "coords_ca_cb.npz"
    if content == "object":
        with open(path, "wb") as fh:
            np.savez(fh, seq=np.array([{"a": 1}], dtype=object))
    elif content == "notzip":
        path.write_text("just text, not an archive")
    elif content == "badzip":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    else:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))
    with pytest.raises(InputError, match="not a readable npz file"):
        load_chains(path, "train")
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    code, _, err = _cli(capsys, "contacts", "predict", "--head", tmp_path, "--input", fasta, "--out", tmp_path / "o",
                        "--truth", path)
    assert code == 2 and "Traceback" not in err


# --------------------------------------------------------------------------- 12. messages and leftovers


def test_non_utf8_ids_are_an_error_not_false_duplicates(tmp_path):
    from protlm.data.fasta import FastaError, read_fasta

    path = tmp_path / "latin.fa"
    path.write_bytes(b">caf\xe9\nMKV\n>caf\xe8\nMKL\n")  # two ids that a lossy decode makes equal
    with pytest.raises(FastaError) as err:
        list(read_fasta(path))
    msg = str(err.value)
    assert "not UTF-8" in msg and ":1:" in msg and "duplicate" not in msg
    ok = tmp_path / "utf8.fa"
    ok.write_bytes(">caf\u00e9\nMKV\n>caf\u00e8\nMKL\n".encode())
    assert [r.id for r in read_fasta(ok)] == ["caf\u00e9", "caf\u00e8"]


def test_cr_only_line_endings_are_named(tmp_path, capsys):
    path = tmp_path / "mac.fa"
    path.write_bytes(b">a\rMKV\r>b\rMKL\r")
    code, _, err = _cli(capsys, "inspect", path)
    _one_error(code, err, "carriage return")
    crlf = tmp_path / "dos.fa"
    crlf.write_bytes(b">a\r\nMKV\r\n>b\r\nMKL\r\n")
    code, _, err = _cli(capsys, "inspect", crlf)
    assert code == 0, err


def test_crlf_split_between_blocks_is_not_mistaken_for_cr_only():
    from protlm.data.fasta import FastaError, _check_not_binary

    _check_not_binary("x.fa.gz", b">a desc\r")  # a first gzip block that ends inside a CRLF
    _check_not_binary("x.fa", b">a desc\r\nMKV\r\n")
    with pytest.raises(FastaError, match="carriage return"):
        _check_not_binary("x.fa", b">a\rMKV\r")


def test_full_disk_names_the_file_leaves_no_tmp_and_exits_2(tmp_path, monkeypatch, capsys):
    import protlm.data.prepare as prep
    from protlm.io.atomic import write_bytes

    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep.os, "fsync", full)
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as err:
        write_bytes(target, b"x" * 100)
    assert err.value.filename == str(target) and "No space left" in err.value.strerror
    assert list(tmp_path.iterdir()) == []  # no .metrics.json.tmpPID left behind
    monkeypatch.setattr(prep.os, "fsync", real_fsync)
    # the CLI prints the path and exits 2 (an error of the environment, not a crash)
    src = _fasta(tmp_path / "a.fa", 20)
    monkeypatch.setattr(prep.os, "fsync", full)
    code, _, err = _cli(capsys, "prepare", src, "--out", tmp_path / "o")
    line = _one_error(code, err, "No space left on device")
    assert str(tmp_path / "o") in line
    monkeypatch.setattr(prep.os, "fsync", real_fsync)
    assert not [p for p in (tmp_path / "o").rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("command, needle", [(["embed", "--model", "onehot", "--input", "x", "--output", "y"], "--resume"),
                                             (["pretrain", "--config", "x"], "--resume"),
                                             (["prepare", "x", "--out", "y"], "rerun the same command"),
                                             (["predict", "--head", "h", "--input", "x", "--output", "y.csv"],
                                              "atomically")])
def test_ctrl_c_says_how_to_continue(monkeypatch, capsys, command, needle):
    import protlm.cli.main as cli

    parser = cli.build_parser()
    args = parser.parse_args(command)

    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", interrupted, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    assert cli.main(command) == 130
    assert needle in capsys.readouterr().err


def test_weights_files_are_0644(tiny_head):
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for f in tiny_head[0].iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


@pytest.mark.parametrize("edit, weights, message", [
    (lambda m: [m], None, "JSON object"),
    (lambda m: {**m, "dim": 10**9}, None, "'dim'"),
    (lambda m: {**m, "dim": m["dim"] + 1}, None, "head.json describes"),
    (lambda m: {**m, "config": {**m["config"], "head": {**m["config"]["head"], "hidden": 10**8}}}, None,
     "head.hidden must be in"),
    (None, b"garbage", "head.safetensors"),
])
def test_tampered_contact_head_is_one_line(contact_head, tmp_path, capsys, edit, weights, message):
    import shutil

    head = tmp_path / "h"
    shutil.copytree(contact_head, head)
    if edit is not None:
        (head / "head.json").write_text(json.dumps(edit(json.loads((head / "head.json").read_text()))))
    if weights is not None:
        (head / "head.safetensors").write_bytes(weights)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHF\n")
    code, _, err = _cli(capsys, "contacts", "predict", "--head", head, "--input", fasta, "--out", tmp_path / "o")
    _one_error(code, err, message)


# --------------------------------------------------------------------------- issue 24 #12, #19


def test_a_head_reads_only_the_data_files_it_was_trained_with(tiny_head, tmp_path, capsys):
    """A tampered head.json's test file is refused before it is read, and nothing of it is echoed;
    a test file changed since training is refused, not scored as if it were the same set."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret-line\nmore\n")

    def elsewhere(info):
        info["config"]["data"]["test"]["t"].update(file=str(secret), format="csv")
        return info

    head = _tampered(tiny_head, tmp_path, elsewhere)
    code, out, err = _cli(capsys, "evaluate", "--head", head)
    line = _one_error(code, err, "names a file the head was not trained with")
    assert "secret-line" not in err + out
    # the same file, changed after training
    import shutil

    head2 = tmp_path / "h2"
    shutil.copytree(tiny_head[0], head2)
    data = tmp_path / "cls.fasta"
    data.write_text(tiny_head[1].read_text())
    info = json.loads((head2 / "head.json").read_text())
    for src in [*info["config"]["data"]["train"], info["config"]["data"]["valid"],
                *info["config"]["data"]["test"].values()]:
        src["file"] = str(data)
    info["data_files"] = {str(data.resolve()): info["data_files"][str(tiny_head[1].resolve())]}
    (head2 / "head.json").write_text(json.dumps(info))
    code, out, err = _cli(capsys, "evaluate", "--head", head2)
    assert code == 0, err  # unchanged: scored
    data.write_text(data.read_text().replace("TARGET=pos", "TARGET=neg", 3))
    code, _, err = _cli(capsys, "evaluate", "--head", head2)
    _one_error(code, err, "changed since the head was trained")
    code, _, err = _cli(capsys, "evaluate", "--head", head2, "--file", data, "--format", "biotrainer")
    assert code == 0, err  # as a new set, on request
    assert line


def test_a_csv_header_that_is_not_column_names_is_not_echoed(tmp_path):
    from protlm.data.benchmarks import load_seq_label_csv

    path = tmp_path / "x.csv"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(InputError) as e:
        load_seq_label_csv(path, "t")
    assert "root:x" not in str(e.value) and "does not read as column names" in str(e.value)
    path.write_text("sequence_,value\nMKV,1\n")
    with pytest.raises(InputError, match="columns sequence_, value"):
        load_seq_label_csv(path, "t")


def test_relative_data_paths_are_read_from_the_configs_folder(tmp_path, monkeypatch, caplog):
    """biotrainer's rule: a config run from another working directory finds its data."""
    from protlm.tasks.build import load_task_config

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "d.fasta").write_text(">a TARGET=x SET=train\nMKV\n")
    (folder / "task.yaml").write_text(
        "name: t\nprotocol: sequence_to_class\nembedder: onehot\n"
        "data: {train: {file: d.fasta, format: biotrainer, split: train}, "
        "valid: {file: ./d.fasta, format: biotrainer, split: valid}, test: {own: {file: sub/../d.fasta, format: biotrainer}}}\n"
        "targets: [{name: c, label: target}]\nhead: {type: logreg}\n")
    (folder / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_task_config(folder / "task.yaml")
    assert Path(cfg.data.train[0].file) == folder / "d.fasta"
    assert Path(cfg.data.valid.file).resolve() == folder / "d.fasta"
    assert Path(cfg.data.test["own"].file).resolve() == folder / "d.fasta"
    # an override is the user's, from the working directory
    (tmp_path / "mine.fasta").write_text(">b TARGET=y SET=train\nMKW\n")
    cfg = load_task_config(folder / "task.yaml", ["data.valid.file=mine.fasta"])
    assert cfg.data.valid.file == "mine.fasta"
    # protlm 0.4's rule still finds a file only in the working directory, with a warning
    (folder / "task.yaml").write_text((folder / "task.yaml").read_text().replace("file: d.fasta", "file: cwd.fasta"))
    (tmp_path / "cwd.fasta").write_text(">c TARGET=x SET=train\nMKV\n")
    cfg = load_task_config(folder / "task.yaml")
    assert Path(cfg.data.train[0].file) == tmp_path / "cwd.fasta"
    assert "not beside the config" in caplog.text


@pytest.mark.parametrize("command, hint", [
    (["embed", "--model", "onehot", "--output", "{tmp}/o.h5"], "(rename them in the file)"),
    (["inspect"], "use --rename-duplicates to keep both"),
])
def test_a_duplicate_id_suggests_only_a_flag_the_command_takes(tmp_path, capsys, command, hint):
    """Issue 24 #18: embed/predict/evaluate suggested --rename-duplicates, which they do not accept."""
    fasta = tmp_path / "dup.fa"
    fasta.write_text(">a\nMKV\n>a\nMKW\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    args = args[:1] + (["--input", str(fasta)] if args[0] == "embed" else [str(fasta)]) + args[1:]
    code, _, err = _cli(capsys, *args)
    line = _one_error(code, err, "duplicate id 'a'", hint)
    assert ("--rename-duplicates" in line) == ("--rename-duplicates" in hint)


def test_a_full_disk_in_the_embedding_cache_names_the_cache(tiny_head, tmp_path, monkeypatch, capsys):
    """Issue 24 #18/#19: "No space left on device" named no path for the caches; the default
    cache is the user's cache folder ($XDG_CACHE_HOME), not the working directory."""
    import protlm.tasks.features as features
    from protlm.cli.common import default_feature_cache

    monkeypatch.delenv("PROTLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_feature_cache() == str(tmp_path / "xdg" / "protlm" / "features")
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path / "mine"))
    assert default_feature_cache() == str(tmp_path / "mine")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features.os, "fsync", full)
    cache = tmp_path / "cache"
    code, _, err = _cli(capsys, "predict", "--head", tiny_head[0], "--input", tiny_head[2], "--output",
                        tmp_path / "p.csv", "--cache", cache)
    line = _one_error(code, err, "No space left on device", f"embedding cache {cache}")
    assert line and not [p for p in cache.rglob("*") if p.is_file()]  # no temporary part left


def test_an_unknown_model_is_named_by_the_option_the_user_typed(capsys, tmp_path):
    """The same unknown name, given three ways: each message names it as the user gave it
    (`--model` to embed, `--embedder` to train, the config's `embedder` field), never a flag
    the command does not have."""
    from cli_checks import tiny_task

    fasta = _fasta(tmp_path / "in.fa", 3)
    code, _, err = _cli(capsys, "embed", "--model", "no-such-lm", "--input", str(fasta),
                        "--output", str(tmp_path / "e.h5"))
    _one_error(code, err, "protlm: error: --model no-such-lm: not an embedder name")
    config = tiny_task(tmp_path)
    code, _, err = _cli(capsys, "train", "--config", str(config), "--embedder", "no-such-lm",
                        "--out", str(tmp_path / "t"))
    _one_error(code, err, "protlm: error: --embedder no-such-lm: not an embedder name")
    config = tiny_task(tmp_path, embedder="no-such-lm")
    code, _, err = _cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "u"))
    _one_error(code, err, "protlm: error: embedder no-such-lm: not an embedder name")
