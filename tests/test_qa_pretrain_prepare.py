"""QA pass over ``protlm prepare`` / ``prepare-merge`` / ``pretrain``: messy inputs found in review.

Each test is one defect seen end to end through the command line (one ``protlm: error:`` line and
exit code 2, or the right result), not the library internals.
"""

from __future__ import annotations

import bz2
import json
import random
from pathlib import Path

import pytest
import yaml

from protlm.cli.main import main

AA = "ACDEFGHIKLMNPQRSTVWY"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.strip("\n").split("\n") if ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("protlm: error: "), err
    return lines[0]


def fasta(tmp_path: Path, n: int = 60, name: str = "in.fa") -> tuple[Path, list[tuple[str, str]]]:
    rng = random.Random(0)
    recs = [(f"s{i}", "".join(rng.choice(AA) for _ in range(rng.randint(30, 90)))) for i in range(n)]
    path = tmp_path / name
    path.write_text("".join(f">{i}\n{s}\n" for i, s in recs))
    return path, recs


def kept(out: Path) -> int:
    return json.loads((out / "manifest.json").read_text())["counts"]["kept"]


# --------------------------------------------------------------------------- prepare options


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_prepare_chunk_mb_not_finite_is_one_error_line(tmp_path, capsys, value):
    src, _ = fasta(tmp_path)
    code, _, err = run_cli(capsys, "prepare", src, "--out", tmp_path / "out", "--chunk-mb", value)
    assert code == 2
    assert "chunk_mb" in one_error_line(err)
    assert not (tmp_path / "out" / "manifest.json").exists()


# --------------------------------------------------------------------------- --exclude files


def test_exclude_text_list_with_bom_excludes_its_first_id(tmp_path, capsys):
    src, _ = fasta(tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xef\xbb\xbfs1\r\ns2\r\n")  # as Windows Notepad saves it
    code, _, err = run_cli(capsys, "prepare", src, "--out", tmp_path / "out", "--exclude", ids)
    assert code == 0, err
    assert kept(tmp_path / "out") == 58


def test_exclude_fasta_with_bom_is_read_as_fasta(tmp_path, capsys):
    src, recs = fasta(tmp_path)
    # the benchmark's test set: other ids, the same sequences, wrapped at 20 residues
    wrapped = "".join(f">t{i}\n" + "\n".join(s[k:k + 20] for k in range(0, len(s), 20)) + "\n"
                      for i, (_, s) in enumerate(recs[:10]))
    ex = tmp_path / "test_set.fa"
    ex.write_bytes(b"\xef\xbb\xbf" + wrapped.encode())
    code, _, err = run_cli(capsys, "prepare", src, "--out", tmp_path / "out", "--exclude", ex)
    assert code == 0, err
    assert kept(tmp_path / "out") == 50


@pytest.mark.parametrize("content", [bz2.compress(b"s1\ns2\n"), bytes(range(256)) * 4],
                         ids=["bzip2", "binary"])
def test_exclude_binary_file_is_refused_not_ignored(tmp_path, capsys, content):
    src, _ = fasta(tmp_path)
    ex = tmp_path / "ids.bin"
    ex.write_bytes(content)
    code, _, err = run_cli(capsys, "prepare", src, "--out", tmp_path / "out", "--exclude", ex)
    assert code == 2
    line = one_error_line(err)
    assert str(ex) in line and "--exclude" in line
    assert not (tmp_path / "out" / "manifest.json").exists()


# --------------------------------------------------------------------------- re-sharding


def test_prepare_folder_resharded_with_another_n_still_merges(tmp_path, capsys):
    src, _ = fasta(tmp_path, n=300)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_cli(capsys, "prepare", src, "--out", ref, "--chunk-mb", "0.003")[0] == 0
    common = ("--chunk-mb", "0.003")
    # a first attempt over 3 machines, abandoned after one part; then 2 machines
    assert run_cli(capsys, "prepare", src, "--out", out, "--shard", "0/3", *common)[0] == 0
    assert run_cli(capsys, "prepare", src, "--out", out, "--shard", "0/2", *common)[0] == 0
    code, _, err = run_cli(capsys, "prepare-merge", out)
    assert code == 2
    assert "1/2" in one_error_line(err)  # still incomplete: named, not merged
    assert run_cli(capsys, "prepare", src, "--out", out, "--shard", "1/2", *common)[0] == 0
    code, _, err = run_cli(capsys, "prepare-merge", out)
    assert code == 0, err
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (ref, out))
    assert a["splits"] == b["splits"] and a["counts"] == b["counts"]
    assert run_cli(capsys, "prepare", "--verify", "--out", out)[0] == 0


def test_plain_prepare_finishes_a_folder_left_with_parts(tmp_path, capsys):
    src, _ = fasta(tmp_path, n=300)
    out = tmp_path / "out"
    assert run_cli(capsys, "prepare", src, "--out", out, "--chunk-mb", "0.003", "--shard", "0/2")[0] == 0
    code, _, err = run_cli(capsys, "prepare", src, "--out", out, "--chunk-mb", "0.003")
    assert code == 0, err
    assert kept(out) == 300


# --------------------------------------------------------------------------- pretrain config


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_pretrain_seed_out_of_range_is_a_config_error_before_the_run(tmp_path, capsys, seed):
    src, _ = fasta(tmp_path, n=80)
    shards = tmp_path / "shards"
    assert run_cli(capsys, "prepare", src, "--out", shards)[0] == 0
    cfg = tiny_run_config(tmp_path, shards)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "pretrain", "--config", cfg, "--out", out, f"train.seed={seed}")
    assert code == 2
    assert "train.seed" in one_error_line(err)
    # nothing written: the same --out takes a corrected run
    assert not (out / "metrics.jsonl").exists()


def tiny_run_config(tmp_path: Path, shards: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"arch": "esm", "preset": "tiny", "max_positions": 300},
        "data": {"shards": str(shards), "valid_sequences": 4},
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"phases": [{"steps": 2, "max_length": 96, "tokens_per_batch": 1024}], "peak_flops": 1e11,
                  "tensorboard": False, "log_every": 1, "eval_every": 2, "save_every": 2},
    }))
    return cfg


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_pretrain_out_that_is_a_file_names_the_option(tmp_path, capsys, where):
    src, _ = fasta(tmp_path, n=80)
    shards = tmp_path / "shards"
    assert run_cli(capsys, "prepare", src, "--out", shards)[0] == 0
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    out = target if where == "file" else target / "run"
    code, _, err = run_cli(capsys, "pretrain", "--config", tiny_run_config(tmp_path, shards), "--out", out)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"protlm: error: --out {out}: ")
    assert ("is a file" if where == "file" else "cannot create") in line
    assert target.read_text() == "keep me\n"


def test_pretrain_without_validation_sequences_says_so(tmp_path, capsys, caplog):
    src, _ = fasta(tmp_path, n=40)
    shards = tmp_path / "shards"
    assert run_cli(capsys, "prepare", src, "--out", shards, "--valid-fraction", "0")[0] == 0
    code, out, err = run_cli(capsys, "pretrain", "--config", tiny_run_config(tmp_path, shards),
                             "--out", tmp_path / "run")
    assert code == 0, err
    assert "validation perplexity" not in out
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("has no validation sequences" in m and "data.valid_sequences" in m for m in warned), warned


def test_manifest_with_another_alphabet_is_refused(tmp_path, capsys):
    src, _ = fasta(tmp_path, n=80)
    shards = tmp_path / "shards"
    assert run_cli(capsys, "prepare", src, "--out", shards)[0] == 0
    m = json.loads((shards / "manifest.json").read_text())
    m["vocab"]["alphabet"] = list("ARNDCQEGHILKMFPSTWYVXBZUO")  # another tool's order: other residues per id
    (shards / "manifest.json").write_text(json.dumps(m))
    code, _, err = run_cli(capsys, "prepare", "--verify", "--out", shards)
    assert code == 2 and "alphabet" in one_error_line(err)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "pretrain", "--config", tiny_run_config(tmp_path, shards), "--out", out)
    assert code == 2 and "alphabet" in one_error_line(err)
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("command", ["prepare", "verify", "prepare-merge", "pretrain"])
def test_empty_out_is_refused_not_the_current_folder(tmp_path, capsys, monkeypatch, command):
    src, _ = fasta(tmp_path, n=40)
    shards = tmp_path / "shards"
    assert run_cli(capsys, "prepare", src, "--out", shards)[0] == 0
    cfg = tiny_run_config(tmp_path, shards)
    work = tmp_path / "cwd"
    (work / "parts").mkdir(parents=True)  # the current folder holds a part run's leftovers ...
    for p in (shards / "parts").glob("part-*.json"):
        (work / "parts" / p.name).write_bytes(p.read_bytes())
    monkeypatch.chdir(work)
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    argv = {"prepare": ("prepare", src, "--out", ""), "verify": ("prepare", "--verify", "--out", ""),
            "prepare-merge": ("prepare-merge", ""), "pretrain": ("pretrain", "--config", cfg, "--out", "")}[command]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "is empty" in one_error_line(err)
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before  # ... and nothing was written there


def test_exclude_folder_is_named_as_a_folder(tmp_path, capsys):
    src, _ = fasta(tmp_path, n=10)
    (tmp_path / "lists").mkdir()
    code, _, err = run_cli(capsys, "prepare", src, "--out", tmp_path / "o", "--exclude", tmp_path / "lists")
    assert code == 2 and "is a folder" in one_error_line(err)


def test_summary_counts_the_records_skip_invalid_skipped(tmp_path, capsys):
    src = tmp_path / "in.fa"
    src.write_text(">a\nMKTAYIAKQR\n>b\nMKX1\n>c\nMKLLVAGHR\n")
    code, _, err = run_cli(capsys, "prepare", src, "--out", tmp_path / "o", "--skip-invalid")
    assert code == 0
    assert "prepared 2 of 3 records" in err and "skipped 1" in err
