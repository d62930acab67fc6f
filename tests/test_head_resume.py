"""A head on frozen features survives an interruption: its epoch-end checkpoint (OUT/train-state/)
lets ``protlm train --resume`` (and a rerun suite) continue with the uninterrupted run's weights,
and ``--finish`` end it at its best epoch so far. Long contact heads (a 2-D ResNet epoch takes
minutes) need this; heads whose epochs take less than train.checkpoint_seconds write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from protlm.tasks.build import load_task_config
from protlm.tasks.commands import train_command
from protlm.tasks.suite import run_suite
from protlm.tasks.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_tasks import _config, _random_seq, _ss_label, _write_biotrainer  # noqa: E402

PROTLM = [sys.executable, "-m", "protlm.cli.main"]


class Stop(KeyboardInterrupt):
    """Ctrl-C between two epochs (raised from the progress callback, after the epoch's value)."""


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("head_resume")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(50):
        seq = _random_seq(rng, int(rng.integers(30, 80)))
        rows.append((f"p{i}", seq, _ss_label(seq), "train" if i < 30 else "valid" if i < 40 else "test", None))
    data = _write_biotrainer(root / "ss.fasta", rows)
    cfg = _config(data, "residue_to_class", "cnn", [{"name": "q3", "label": "target", "classes": ["H", "E", "C"]}],
                  epochs=6, patience=10, batch_size=4, checkpoint_seconds=0)
    (root / "task.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _stop_after(n: int):
    def progress(kind, info):
        if kind == "epoch" and info["epoch"] == n:
            raise Stop()
    return progress


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "head.safetensors")), load_file(str(b / "head.safetensors"))
    assert set(x) == set(y)
    for key in x:
        assert torch.equal(x[key], y[key]), key


def test_interrupted_head_resumes_to_the_uninterrupted_weights(task, tmp_path):
    cfg = load_task_config(task / "task.yaml")
    whole = train(cfg, tmp_path / "whole")
    with pytest.raises(Stop):  # stopped inside epoch 4's report: epochs 1-3 are checkpointed
        train_command(cfg, tmp_path / "cut", progress=_stop_after(4))
    state = json.loads((tmp_path / "cut" / "train-state" / "state.json").read_text())
    assert state["epoch"] == 4 and len(state["history"]) == 3 and not state["done"]
    assert not (tmp_path / "cut" / "head.json").exists()
    with pytest.raises(Exception, match="--resume"):  # not started again silently
        train_command(cfg, tmp_path / "cut")
    seen = []
    resumed = train_command(cfg, tmp_path / "cut", resume=True, progress=lambda k, i: seen.append(i.get("epoch")))
    assert [e for e in seen if e is not None][0] == 4  # epochs 1-3 were not trained again
    _same_weights(tmp_path / "whole", tmp_path / "cut")
    history = json.loads((tmp_path / "cut" / "head.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert resumed["test"]["held_out"]["q3"] == whole["test"]["held_out"]["q3"]
    assert not (tmp_path / "cut" / "train-state").exists()  # removed once the head folder is whole


def test_finish_keeps_the_best_checkpointed_epoch(task, tmp_path):
    cfg = load_task_config(task / "task.yaml")
    with pytest.raises(Stop):
        train_command(cfg, tmp_path / "cut", progress=_stop_after(3))
    res = subprocess.run([*PROTLM, "train", "--config", str(task / "task.yaml"), "--out", str(tmp_path / "cut"),
                          "--finish"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-800:]
    assert "--finish" in res.stderr and "epoch   3 " not in res.stderr
    info = json.loads((tmp_path / "cut" / "head.json").read_text())
    assert info["stopped_by"] == "finished_early" and info["epochs_run"] == 2
    assert not (tmp_path / "cut" / "train-state").exists()
    none = subprocess.run([*PROTLM, "train", "--config", str(task / "task.yaml"), "--out", str(tmp_path / "new"),
                           "--resume"], capture_output=True, text=True, timeout=300)
    assert none.returncode == 2 and "no interrupted training run" in none.stderr and "Traceback" not in none.stderr


def test_an_interrupted_overwrite_keeps_the_old_head_and_resumes(task, tmp_path):
    """--overwrite on a finished head, interrupted: the old head stays until the new run ends, and
    the --resume the interruption suggests continues the new run, which then replaces it."""
    cfg = load_task_config(task / "task.yaml")
    train_command(cfg, tmp_path / "h", progress=None)
    old = (tmp_path / "h" / "head.json").read_bytes()
    with pytest.raises(Stop):
        train_command(load_task_config(task / "task.yaml", ["train.seed=7"]), tmp_path / "h", overwrite=True,
                      progress=_stop_after(3))
    assert (tmp_path / "h" / "head.json").read_bytes() == old and (tmp_path / "h" / "train-state").is_dir()
    train_command(load_task_config(task / "task.yaml", ["train.seed=7"]), tmp_path / "h", resume=True)
    new = json.loads((tmp_path / "h" / "head.json").read_text())
    assert new["config"]["train"]["seed"] == 7 and not (tmp_path / "h" / "train-state").exists()
    from protlm.errors import InputError

    with pytest.raises(InputError, match="already finished"):  # now finished: nothing to resume
        train_command(cfg, tmp_path / "h", resume=True)


def test_fast_heads_write_no_checkpoint_and_the_setting_names_nothing(task, tmp_path):
    cfg = load_task_config(task / "task.yaml", ["train.checkpoint_seconds=3600"])
    with pytest.raises(Stop):
        train_command(cfg, tmp_path / "cut", progress=_stop_after(3))
    assert not (tmp_path / "cut" / "train-state").exists()  # no epoch took an hour
    # the suite names a cell by what changes its numbers: the checkpoint interval does not
    a = run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None)
    b = run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None, overrides=["train.checkpoint_seconds=5"])
    assert len(list((tmp_path / "suite").glob("*/*/head.json"))) == 1
    assert a["results"][0]["test"] == b["results"][0]["test"]


def test_an_interrupted_suite_head_cell_continues(task, tmp_path):
    whole = tmp_path / "whole"
    train(load_task_config(task / "task.yaml"), whole)
    with pytest.raises(Stop):
        run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None, progress=_stop_after(5))
    (cell,) = list((tmp_path / "suite").glob("*/*/train-state"))
    run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None)
    _same_weights(whole, cell.parent)
    assert not cell.exists()


def test_a_checkpoint_in_the_old_folder_name_is_resumed(task, tmp_path):
    cfg = load_task_config(task / "task.yaml")
    with pytest.raises(Stop):
        train_command(cfg, tmp_path / "cut", progress=_stop_after(4))
    (tmp_path / "cut" / "train-state").rename(tmp_path / "cut" / "finetune-state")  # as earlier versions wrote it
    train(cfg, tmp_path / "whole")
    train_command(cfg, tmp_path / "cut", resume=True)
    _same_weights(tmp_path / "whole", tmp_path / "cut")
    assert not (tmp_path / "cut" / "finetune-state").exists() and not (tmp_path / "cut" / "train-state").exists()


def test_ctrl_c_names_the_checkpoint_and_how_to_continue(task, tmp_path):
    """SIGINT during a long head's training: one line naming the kept checkpoint and --resume/--finish."""
    import os
    import signal
    import time

    cfg = yaml.safe_load((task / "task.yaml").read_text())
    cfg["train"]["epochs"] = 10000  # long enough to be interrupted
    cfg["train"]["patience"] = 10000
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "long"
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default. A test run started in the
    # background of a non-interactive shell (`pytest … &`) inherits SIGINT ignored, and Python keeps
    # an inherited ignore (no KeyboardInterrupt): the child gets the terminal's default back.
    proc = subprocess.Popen([*PROTLM, "train", "--config", str(tmp_path / "long.yaml"), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not (out / "train-state" / "state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-500:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-500:]
    assert "Traceback" not in err and "train-state" in err and "--resume" in err and "--finish" in err
    assert (out / "train-state" / "state.json").is_file() and not (out / "head.json").exists()


def test_a_resume_on_a_rewritten_training_file_is_refused(task, tmp_path):
    """A label file rewritten in place between the interruption and --resume: the run would go on
    with other labels under the old run's name, so it is refused (one message, exit 2)."""
    cfg = yaml.safe_load((task / "task.yaml").read_text())
    data = tmp_path / "ss.fasta"
    data.write_bytes(Path(cfg["data"]["train"]["file"]).read_bytes())
    for src in (cfg["data"]["train"], cfg["data"]["valid"], cfg["data"]["test"]["held_out"]):
        src["file"] = str(data)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(Stop):
        train_command(load_task_config(tmp_path / "task.yaml"), tmp_path / "cut", progress=_stop_after(3))
    state = json.loads((tmp_path / "cut" / "train-state" / "state.json").read_text())
    assert state["files"]  # the training file's content digest is in the checkpoint
    text = data.read_text()
    first = text.index("TARGET=") + len("TARGET=")  # the first protein's first residue gets another class
    data.write_text(text[:first] + ("C" if text[first] != "C" else "H") + text[first + 1:])
    assert data.read_text() != text
    res = subprocess.run([*PROTLM, "train", "--config", str(tmp_path / "task.yaml"), "--out", str(tmp_path / "cut"),
                          "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "rewritten" in res.stderr and "Traceback" not in res.stderr, res.stderr[-800:]
    assert (tmp_path / "cut" / "train-state" / "state.json").is_file()  # the checkpoint is kept
    data.write_text(text)  # the old file back: the run continues
    train_command(load_task_config(tmp_path / "task.yaml"), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "head.json").is_file()


def test_a_suite_cell_another_process_holds_is_not_trained_twice(task, tmp_path):
    """Two `protlm benchmark` runs on one output folder (a cell per core): one that reaches a cell
    the other holds stops with one line naming that process, and the cell is left as it was."""
    from protlm.errors import InputError

    run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None)
    (cell,) = [p for p in (tmp_path / "suite").glob("*/*") if p.is_dir()]
    (cell / "metrics.json").unlink()  # as if the cell were still being trained by the other process
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom protlm.io.outputs import output_lock\n"
                               "with output_lock(sys.argv[1], 'x', beside=True):\n"
                               "    print('held', flush=True)\n    time.sleep(120)", str(cell)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"in use by process {holder.pid}"):
            run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None)
        assert not (cell / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    run_suite(task / "task.yaml", ["onehot"], tmp_path / "suite", None)  # released with its process
    assert (cell / "metrics.json").is_file()
