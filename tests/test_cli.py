"""The ``protlm`` command line end to end: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from protlm.cli.main import main

GOOD = ">P1 first\nMKV\nLA\n>P2\nACDE*\n"


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *parts: str) -> str:
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("protlm: error: "), line
    for part in parts:
        assert part in line, (part, line)
    return line


def _truncated_gzip() -> bytes:
    rng = random.Random(0)
    text = "".join(f">P{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(300))}\n" for i in range(100))
    return gzip.compress(text.encode())[:-20]


def _binary() -> bytes:
    rng = random.Random(1)
    return b"\x89PNG\x00" + bytes(rng.randrange(256) for _ in range(2000))


# name, file content (None: do not create), parts the error line must contain (FILE = the path)
BAD_INPUTS = [
    ("invalid_J", ">P1\nAC\n>P2\nMKJV\n", ["FILE:4:", "'P2'", "'J'", "column 3"]),
    ("invalid_digit", ">P1\nAC\n>P2\nMK1V\n", ["FILE:4:", "'P2'", "'1'"]),
    ("invalid_hash", ">P1\nA#C\n", ["FILE:2:", "'P1'", "'#'"]),
    ("inner_stop", ">P1\nAC\n>P2\nMK*V\n", ["FILE:4:", "'P2'", "'*'"]),
    ("no_header", "MKV\n>P1\nAC\n", ["FILE:1:", "header"]),
    ("empty_record", ">P1\n>P2\nAC\n", ["FILE:1:", "'P1'", "empty sequence"]),
    ("empty_last_record", ">P1\nAC\n>P2", ["FILE:3:", "'P2'", "empty sequence"]),
    ("no_id", ">P1\nAC\n>\nAC\n", ["FILE:3:", "no id"]),
    ("blank_id", ">P1\nAC\n>   \nAC\n", ["FILE:3:", "no id"]),
    ("duplicate_id", ">P1\nAC\n>P2\nAC\n>P1\nDE\n", ["FILE:5:", "'P1'", "line 1", "--rename-duplicates"]),
    ("binary", _binary(), ["FILE", "binary"]),
    ("empty", b"", ["FILE", "empty"]),
    ("blank_lines_only", "\n\n  \n", ["FILE", "no FASTA records"]),
    ("truncated_gz", _truncated_gzip(), ["FILE", "gzip"]),
    ("missing", None, ["FILE", "no such file"]),
    ("directory", "DIR", ["FILE", "directory"]),
]


def make_input(tmp_path: Path, name: str, content) -> Path:
    p = tmp_path / f"{name}.fa"
    if content is None:
        return p
    if content == "DIR":
        p.mkdir()
        return p
    return write(p, content)


@pytest.mark.parametrize("name, content, parts", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_inspect_bad_input_is_one_error_line(tmp_path, capsys, name, content, parts):
    p = make_input(tmp_path, name, content)
    code, out, err = run_cli(capsys, "inspect", p)
    assert code == 2
    assert out == ""
    assert_one_error_line(err, *[x.replace("FILE", str(p)) for x in parts])


PREPARE_BAD = [
    ("invalid_J", ">P1\nAC\n>P2\nMKJV\n", ["FILE:4:", "'P2'", "'J'"]),
    ("inner_stop", ">P1\nAC\n>P2\nMK*V\n", ["FILE:4:", "'P2'", "'*'"]),
    ("no_header", "MKV\n>P1\nAC\n", ["FILE:1:", "header"]),
    ("empty_record", ">P1\n>P2\nAC\n", ["FILE:1:", "'P1'", "empty sequence"]),
    ("no_id", ">P1\nAC\n>\nAC\n", ["FILE:3:", "no id"]),
    # found in the merge step; the message names the file and both lines
    ("duplicate_id", ">P1\nAC\n>P2\nAC\n>P1\nDE\n", ["FILE:5:", "'P1'", "line 1", "--rename-duplicates"]),
    ("binary", _binary(), ["FILE", "binary"]),
    ("empty", b"", ["FILE", "empty"]),
    ("blank_lines_only", "\n\n  \n", ["FILE", "no FASTA records"]),
    ("truncated_gz", _truncated_gzip(), ["FILE", "gzip"]),
    ("directory", "DIR", ["FILE", "directory"]),
]


@pytest.mark.parametrize("name, content, parts", PREPARE_BAD, ids=[c[0] for c in PREPARE_BAD])
def test_prepare_bad_input_exits_2_without_manifest(tmp_path, capsys, name, content, parts):
    p = make_input(tmp_path, name, content)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "prepare", p, "--out", out_dir, "--valid-fraction", "0.1",
                             "--chunk-mb", "0.00001")
    assert code == 2
    assert out == ""
    assert_one_error_line(err, *[x.replace("FILE", str(p)) for x in parts])
    assert not (out_dir / "manifest.json").exists()
    if (out_dir / "chunks").exists():
        leftovers = [f.name for f in (out_dir / "chunks").iterdir()]
        assert not [f for f in leftovers if f.startswith(".")], leftovers


def test_prepare_missing_input(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prepare", tmp_path / "nope.fa", "--out", tmp_path / "o")
    assert code == 2
    assert_one_error_line(err, str(tmp_path / "nope.fa"), "no such file")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_error_through_a_real_process_has_no_traceback(tmp_path):
    p = write(tmp_path / "bad.fa", ">P1\nAC\n>P2\nMKJV\n")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "protlm.cli.main", "inspect", str(p)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, f"{p}:4:", "'P2'", "'J'")


@pytest.mark.parametrize("torchrun", [False, True])
def test_process_end_keeps_output_exit_code_and_exit_handlers(tmp_path, torchrun):
    """Under torchrun the CLI ends with os._exit once the command returned (the gloo group outlives
    destroy_process_group); what it printed, its exit code and the exit handlers must survive that."""
    good, bad = write(tmp_path / "good.fa", GOOD), write(tmp_path / "bad.fa", ">P1\nAC\n>P2\nMKJV\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")}
    if torchrun:
        env["TORCHELASTIC_RUN_ID"] = "test"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import atexit, sys; atexit.register(lambda: print('exit handler ran', file=sys.stderr)); "
            "from protlm.cli.main import run; run(sys.argv[1:])")
    ok = subprocess.run([sys.executable, "-c", code, "inspect", str(good), "--json"], capture_output=True, text=True,
                        env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["records"] == 2  # the whole JSON document, flushed
    assert ok.stderr.rstrip().endswith("exit handler ran")
    failed = subprocess.run([sys.executable, "-c", code, "inspect", str(bad)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert failed.returncode == 2
    assert_one_error_line(failed.stderr.replace("exit handler ran\n", ""), f"{bad}:4:", "'J'")
    assert "exit handler ran" in failed.stderr


@pytest.mark.parametrize("argv", [
    ["embed", "--model", "onehot", "--input", "{fa}", "--out", ""],
    ["predict", "--input", "{fa}", "--output", " "],
    ["kmer-train", "{fa}", "--out=", "--dim", "4"],
    ["project", "--embeddings", "e.h5", "--labels", "l.csv", "--out", ""],
])
def test_an_empty_out_is_refused_before_anything_runs(argv, tmp_path, capsys, monkeypatch):
    """--out "$OUT" with OUT unset must not mean the current folder (or a default)."""
    fa = write(tmp_path / "in.fa", GOOD)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run_cli(capsys, *[a.replace("{fa}", str(fa)) for a in argv])
    flag = next(a.split("=")[0] for a in argv if a.startswith(("--out", "--output")))
    assert code == 2 and out == ""
    assert_one_error_line(err, f"{flag} is empty")
    assert list(work.iterdir()) == []


def test_inspect_good_file(tmp_path, capsys):
    p = write(tmp_path / "good.fa", GOOD)
    code, out, err = run_cli(capsys, "inspect", p, "--json")
    assert code == 0
    res = json.loads(out)
    assert res["records"] == 2 and res["residues"] == 9
    assert res["length"]["min"] == 4 and res["length"]["max"] == 5
    assert res["length"]["longest_id"] == "P1"
    assert res["skipped_invalid"] == 0 and res["renamed_duplicates"] == 0
    assert "2 records" in err and "error" not in err


def test_inspect_rare_keep(tmp_path, capsys):
    p = write(tmp_path / "rare.fa", ">P1\nABOUZ\n")
    _, out, _ = run_cli(capsys, "inspect", p, "--json")
    assert json.loads(out)["composition"] == {"A": 0.2, "X": 0.8}
    _, out, _ = run_cli(capsys, "inspect", p, "--json", "--rare", "keep")
    assert set(json.loads(out)["composition"]) == set("ABOUZ")


def test_inspect_skip_invalid(tmp_path, capsys):
    p = write(tmp_path / "mixed.fa", ">P1\nMKV\n>P2\nMJV\n>P3\nAC\n>P4\n>P5\nA*C\n")
    code, _, err = run_cli(capsys, "inspect", p)
    assert code == 2
    assert_one_error_line(err, f"{p}:4:", "'J'")
    code, out, err = run_cli(capsys, "inspect", p, "--skip-invalid", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["records"] == 2 and res["skipped_invalid"] == 3
    assert len(res["skipped_messages"]) == 3
    assert "Traceback" not in err


def test_inspect_rename_duplicates(tmp_path, capsys):
    p = write(tmp_path / "dup.fa", ">P1\nMKV\n>P1\nAC\n>P1\nDE\n")
    code, out, _ = run_cli(capsys, "inspect", p, "--rename-duplicates", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["records"] == 3 and res["renamed_duplicates"] == 2


def test_prepare_skip_invalid_and_rename_duplicates(tmp_path, capsys):
    p = write(tmp_path / "mixed.fa", ">P1\nMKV\n>P2\nMJV\n>P1\nAC\n>P4\nAAA\n")
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, "prepare", p, "--out", out_dir, "--skip-invalid")
    assert code == 2
    assert_one_error_line(err, "duplicate id 'P1'", "--rename-duplicates")
    assert not (out_dir / "manifest.json").exists()
    code, out, _ = run_cli(capsys, "prepare", p, "--out", out_dir, "--skip-invalid",
                           "--rename-duplicates", "--json")
    assert code == 0
    man = json.loads(out)
    assert man["counts"]["skipped_invalid"] == 1
    assert man["counts"]["duplicate_ids_renamed"] == 1
    assert man["counts"]["kept"] == 3
    assert (out_dir / "manifest.json").exists()


def test_prepare_options_are_checked(tmp_path, capsys):
    p = write(tmp_path / "good.fa", GOOD)
    for argv, parts in [
        (["--shard", "3/2"], ["--shard 3/2", "0 <= i < N"]),
        (["--shard", "x"], ["--shard", "i/N"]),
        (["--shard", "0/0"], ["--shard 0/0"]),
        (["--workers", "0"], ["--workers"]),
        (["--valid-fraction", "1.5"], ["valid_fraction"]),
        (["--min-length", "0"], ["min_length"]),
        (["--min-length", "10", "--max-length", "5"], ["max_length"]),
        (["--chunk-mb", "0"], ["chunk_mb"]),
        (["--exclude", str(tmp_path / "none.txt")], ["none.txt", "--exclude"]),
    ]:
        out_dir = tmp_path / "o"
        code, _, err = run_cli(capsys, "prepare", p, "--out", out_dir, *argv)
        assert code == 2, argv
        assert_one_error_line(err, *parts)
        assert not (out_dir / "manifest.json").exists()


def test_prepare_shard_and_merge(tmp_path, capsys):
    p = write(tmp_path / "good.fa", "".join(f">P{i}\n{'ACDEFGHIK' * (i + 1)}\n" for i in range(200)))
    single, parted = tmp_path / "single", tmp_path / "parted"
    code, out, _ = run_cli(capsys, "prepare", p, "--out", single, "--chunk-mb", "0.002", "--json")
    assert code == 0
    ref = json.loads(out)
    assert ref["chunks"] > 2
    code, _, err = run_cli(capsys, "prepare", p, "--out", parted, "--chunk-mb", "0.002", "--shard", "0/2")
    assert code == 0 and "part 0/2 done" in err
    code, _, err = run_cli(capsys, "prepare-merge", parted)
    assert code == 2
    assert_one_error_line(err, "1/2 not done")
    code, _, _ = run_cli(capsys, "prepare", p, "--out", parted, "--chunk-mb", "0.002", "--shard", "1/2")
    assert code == 0
    code, out, _ = run_cli(capsys, "prepare-merge", parted, "--json")
    assert code == 0
    man = json.loads(out)
    assert man["counts"] == ref["counts"] and man["chunks"] == ref["chunks"]


def test_prepare_merge_on_empty_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prepare-merge", tmp_path)
    assert code == 2
    assert_one_error_line(err, str(tmp_path), "no prepared parts")


def test_prepare_into_folder_with_other_options(tmp_path, capsys):
    p = write(tmp_path / "good.fa", GOOD)
    out_dir = tmp_path / "o"
    assert run_cli(capsys, "prepare", p, "--out", out_dir)[0] == 0
    code, _, err = run_cli(capsys, "prepare", p, "--out", out_dir, "--valid-fraction", "0.5")
    assert code == 2
    assert_one_error_line(err, str(out_dir), "other options")


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "inspect", "prepare", "prepare-merge", "datasets"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["demo", "inspect", "prepare", "prepare-merge", "datasets"])
def test_subcommand_help_exits_0(capsys, cmd):
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    assert "usage: protlm " + cmd in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("protlm ")


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and "usage: protlm" in err


def test_unknown_option_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["inspect", "x.fa", "--no-such-option"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_demo(tmp_path, capsys):
    """The whole main job at reduced size: statistics, shards, a few pretraining steps, embeddings
    with the committed checkpoint, t-SNE/UMAP and token maps with silhouettes."""
    out_dir = tmp_path / "demo"
    code, out, err = run_cli(capsys, "demo", "--out", out_dir, "--json", "--pretrain-steps", "4",
                             "--max-proteins", "80")
    assert code == 0, err
    report = json.loads((out_dir / "demo_report.json").read_text())
    assert report["statistics"]["records"] == 2100
    assert json.loads(out)["statistics"]["records"] == 2100
    shards = report["shards"]
    assert shards["train"]["records"] + shards["valid"]["records"] == 2100
    assert shards["valid"]["records"] > 0
    assert Path(shards["manifest"]).is_file()
    pt = report["pretrain"]
    assert pt["steps"] == 4 and (Path(pt["model"]) / "model.safetensors").is_file()
    proj = report["projection"]["proteins"]
    assert proj["counts"]["projected"] == 80 and proj["counts"]["dim"] == 96
    assert set(proj["silhouette"]) == {"length_quartile", "net_charge"}
    for path in proj["outputs"]["png"] + proj["outputs"]["html"] + [report["projection"]["tokens"]["outputs"]["png"]]:
        assert Path(path).stat().st_size > 1000
    import h5py

    with h5py.File(report["projection"]["embeddings"]) as f:
        assert len(f.keys()) == 80 and f.attrs["level"] == "protein"
    assert "protlm demo" in err and "silhouette" in err and "Traceback" not in err
    # the published LM runs beside the checkpoint when its weights are installed (make test installs them)
    try:
        from protlm.models.unirep_weights import find_npz

        find_npz(64)
    except Exception:
        assert "unirep64" in report["language_models_missing"]
    else:
        uni = report["projection_unirep"]
        assert uni["model"] == "unirep64" and uni["proteins"]["counts"]["dim"] == 64
        with h5py.File(uni["embeddings"]) as f:
            assert len(f.keys()) == 80 and f.attrs["family"] == "unirep"
        assert "unirep64" in err


def test_demo_and_datasets_with_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "no-data"
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "d", "--data", missing)
    assert code == 2
    assert_one_error_line(err, str(missing), "no such folder")
    code, _, err = run_cli(capsys, "datasets", "--data", missing)
    assert code == 2
    assert_one_error_line(err, str(missing), "no such folder")


def test_inspect_gzipped_file_named_fa(tmp_path, capsys):
    p = write(tmp_path / "packed.fa", gzip.compress(GOOD.encode()) + gzip.compress(b">P3\nWW\n"))
    code, out, _ = run_cli(capsys, "inspect", p, "--json")
    assert code == 0
    assert json.loads(out)["records"] == 3


def test_inspect_utf8_bom_is_ignored(tmp_path, capsys):
    p = write(tmp_path / "bom.fa", b"\xef\xbb\xbf>P1 x\nMKV\n")
    code, out, _ = run_cli(capsys, "inspect", p, "--json")
    assert code == 0
    assert json.loads(out)["records"] == 1


def test_progress_is_logged_with_rate_and_eta_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    import protlm.io.progress as common

    now = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    bar = common.LogProgress(1000, "embed", "res", every=30)
    now[0] = 31.0
    bar.update(250)  # a line
    now[0] = 62.0
    bar.update(250)  # a line
    now[0] = 70.0
    bar.close()  # the final line
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("protlm: embed: 250/1,000 res (25%)") and "res/s" in lines[0] and "left" in lines[0]
    assert lines[1].startswith("protlm: embed: 500/1,000 res (50%)") and "done in" in lines[-1]
    quiet = common.LogProgress(10, "x", "res", every=30)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_suite_progress_gives_each_task_and_set_its_own_bar(capsys, monkeypatch):
    """A benchmark's second (task, embedder) does not report into the first one's bar (whose total,
    count and rate belong to another set)."""
    import protlm.io.progress as common
    from protlm.cli.tasks import _progress

    now = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(common.sys.stderr, "isatty", lambda: False, raising=False)
    cb, close = _progress()
    cb("task", {"task": "loc", "embedder": "a"})
    cb("embed", {"set": "train", "done": 0, "total": 1000})
    now[0] = 31.0
    cb("embed", {"set": "train", "done": 500, "total": 1000})
    cb("task", {"task": "contacts", "embedder": "a"})
    cb("embed", {"set": "train", "done": 0, "total": 40})
    now[0] = 62.0
    cb("embed", {"set": "train", "done": 20, "total": 40})
    now[0] = 93.0
    cb("embed", {"set": "train", "done": 40, "total": 40})
    close()
    err = capsys.readouterr().err
    assert "/1,000 res" in err.split("contacts with a")[0]
    after = err.split("contacts with a")[1]
    assert "1,000" not in after and "40/40 res (100%)" in after


def test_progress_a_person_can_trust(capsys, monkeypatch):
    """Issue 24 #19: a set's end line gives its own rate and time (not the time until the whole
    task closes); a small set gets one line; head training prints each epoch's time and at most
    how long is left to the epoch cap."""
    import protlm.io.progress as common
    from protlm.cli.tasks import _progress

    now = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(common.sys.stderr, "isatty", lambda: False, raising=False)
    cb, close = _progress()
    cb("embed", {"set": "train", "done": 0, "total": 900})
    now[0] = 2.0
    cb("embed", {"set": "train", "done": 900, "total": 900})  # done after 2 s: 450 res/s
    now[0] = 3600.0  # the task goes on (training) for an hour before the bars are closed
    cb("epoch", {"epoch": 1, "train_loss": 0.5, "valid_loss": 0.4, "key": "valid_loss", "seconds": 12.0,
                 "elapsed": 12.0, "cap": 11, "first": 1})
    cb("epoch", {"epoch": 11, "train_loss": 0.5, "valid_loss": 0.4, "key": "valid_loss", "seconds": 12.0,
                 "elapsed": 132.0, "cap": 11, "first": 1})
    close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "protlm: embed train: 900/900 res (100%), 450 res/s (done in 2s)", err
    # a set counted at once (found in the cache): no rate out of a zero time
    bar = common.LogProgress(22_542, "embed valid", "res", summary=True)
    bar.n = 22_542
    bar.close()
    assert capsys.readouterr().err == "protlm: embed valid: 22,542/22,542 res (100%) (done in 0s)\n"
    assert "(12s; at most 2m00s left, to epoch 11)" in err[1]
    assert err[2].endswith("(12s)") and len(err) == 3
    # with early stopping's state: the best epoch, the patience used, and fewest-to-most time left
    cb, close = _progress()
    cb("epoch", {"epoch": 4, "train_loss": 0.5, "valid_loss": 0.4, "key": "valid_spearman", "seconds": 60.0,
                 "elapsed": 240.0, "cap": 1000, "first": 1, "best_epoch": 2, "waited": 2, "patience": 10})
    close()
    line = capsys.readouterr().err.splitlines()[0]
    assert "valid spearman 0.4000" in line
    assert line.endswith("(1m00s; best epoch 2, 2/10 without a better value; 8m00s to 16h36m left)"), line


def test_a_long_library_loop_logs_progress_off_a_terminal(capsys, monkeypatch):
    """Scoring a contact head on 522 chains took half an hour with no line in the log: library loops
    report through protlm.io.progress (log lines off a terminal), except where the caller reports."""
    import protlm.io.progress as progress

    now = [0.0]

    def tick():
        now[0] += 31.0
        return now[0]

    monkeypatch.setattr(progress.time, "monotonic", tick)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert list(progress.progress_iter([1, 2, 3], "contact maps", unit="chains")) == [1, 2, 3]
    err = capsys.readouterr().err
    assert "protlm: contact maps: 1/3 chains (33%)" in err and "(done in" in err
    assert list(progress.progress_iter(iter([1, 2]), "epoch", terminal_only=True)) == [1, 2]
    assert capsys.readouterr().err == ""


def test_a_resumed_runs_time_left_counts_every_epoch(capsys):
    """After a resume the history's elapsed time covers the epochs run before it: per epoch = elapsed / epoch."""
    from protlm.cli.tasks import _progress

    cb, close = _progress()
    cb("epoch", {"epoch": 11, "train_loss": 0.5, "valid_loss": 0.4, "key": "valid_loss", "seconds": 60.0,
                 "elapsed": 660.0, "cap": 21, "first": 11})
    close()
    assert "(1m00s; at most 10m00s left, to epoch 21)" in capsys.readouterr().err
