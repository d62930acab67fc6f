"""Fine-tuning survives kill -9 and SIGTERM: ``protlm train --resume`` gives the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from protlm.models.architectures import ModelSpec, build_model
from protlm.models.vocab import build_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from test_tasks import _config, _random_seq, _ss_label, _write_biotrainer  # noqa: E402

PROTLM = [sys.executable, "-m", "protlm.cli.main"]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft_resume")
    torch.manual_seed(0)
    lm = root / "esm"
    build_model(ModelSpec(arch="esm", preset="tiny")).save_pretrained(lm)
    build_tokenizer("esm").save_pretrained(lm)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        seq = _random_seq(rng, int(rng.integers(30, 90)))
        rows.append((f"p{i}", seq, _ss_label(seq), "train" if i < 40 else "valid" if i < 50 else "test", None))
    data = _write_biotrainer(root / "ss.fasta", rows)
    cfg = _config(data, "residue_to_class", "cnn", [{"name": "q3", "label": "target", "classes": ["H", "E", "C"]}],
                  epochs=4, patience=10, batch_size=4, max_residues=40)
    cfg["embedder"] = str(lm)
    cfg["finetune"] = {"method": "full", "lr": 1e-3, "checkpoint_steps": 1, "warmup_steps": 3}
    (root / "task.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _train(root: Path, out: str, *extra: str, wait: bool = True):
    cmd = [*PROTLM, "train", "--config", str(root / "task.yaml"), "--out", str(root / out), "--threads", "1", *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {f: load_file(str(folder / f)) for f in ("lm/model.safetensors", "head.safetensors")}


def _interrupt(root: Path, out: str, sig: int) -> subprocess.Popen:
    """Start a run and send ``sig`` once its checkpoint is inside the second epoch (mid-epoch)."""
    proc = _train(root, out, wait=False)
    state = root / out / "train-state" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            text = state.read_text()
        except OSError:
            text = ""
        if '"epoch": 2' in text and '"batch": 0' not in text:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {proc.stderr.read()[-500:]}")
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    return proc


def test_kill9_then_resume_gives_the_uninterrupted_weights(task):
    whole = _train(task, "whole")
    assert whole.returncode == 0, whole.stderr[-800:]
    proc = _interrupt(task, "killed", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (task / "killed" / "head.json").exists()
    refused = _train(task, "killed")  # without --resume the interrupted run is not silently started again
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    resumed = _train(task, "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-800:]
    # the resumed run starts inside epoch 2: epoch 1 is not trained (or reported) again
    assert "epoch   1 " not in resumed.stderr and "epoch   2 " in resumed.stderr
    a, b = _weights(task / "whole"), _weights(task / "killed")
    for name in a:
        assert set(a[name]) == set(b[name])
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert not (task / "killed" / "train-state").exists()  # removed once the head folder is whole
    again = _train(task, "killed", "--resume")
    assert again.returncode == 2 and "already finished" in again.stderr


def test_sigterm_keeps_the_checkpoint_and_exits_143(task):
    proc = _interrupt(task, "termed", signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr.read()[-500:]
    assert (task / "termed" / "train-state" / "state.json").is_file()
    assert not (task / "termed" / "train-state.tmp").exists()


def test_resume_with_other_settings_is_refused(task, tmp_path):
    proc = _interrupt(task, "changed", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    cfg = yaml.safe_load((task / "task.yaml").read_text())
    cfg["finetune"]["lr"] = 5e-4
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*PROTLM, "train", "--config", str(other), "--out", str(task / "changed"), "--resume"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "another config" in res.stderr and "Traceback" not in res.stderr


def test_two_process_ddp_equals_one_process_accumulating_two_batches(task, tmp_path):
    """torchrun with 2 processes (gloo) and one batch per process per step gives the weights of one
    process accumulating two batches per step (dropout off: it is the only thing that differs)."""
    cfg = yaml.safe_load((task / "task.yaml").read_text())
    cfg["head"] = {"type": "cnn", "dropout": 0.0}
    cfg["embedder"] = {"name": cfg["embedder"], "device": "cpu"}
    cfg["train"]["epochs"] = 2
    cfg["finetune"] = {"method": "lora", "lr": 1e-3, "lora_dropout": 0.0, "warmup_steps": 2}
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump({**cfg, "finetune": {**cfg["finetune"], "batches_per_step": 2}}))
    two.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = subprocess.run([*PROTLM, "train", "--config", str(one), "--out", str(tmp_path / "A"), "--threads", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert a.returncode == 0, a.stderr[-800:]
    b = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "protlm.cli.main", "train", "--config", str(two), "--out", str(tmp_path / "B"), "--threads",
                        "1"], capture_output=True, text=True, timeout=300, env=env)
    assert b.returncode == 0, b.stderr[-800:]
    assert b.stderr.count("epoch   1 ") == 1  # process 0 reports, once
    from safetensors.torch import load_file

    for name in ("lm/adapter_model.safetensors", "head.safetensors"):
        x, y = load_file(str(tmp_path / "A" / name)), load_file(str(tmp_path / "B" / name))
        assert set(x) == set(y)
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=1e-6)
    moved = load_file(str(tmp_path / "B" / "lm" / "adapter_model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in moved.items() if "lora_B" in k)  # the adapters trained


def test_an_interrupted_suite_cell_continues_where_it_stopped(task, tmp_path):
    """`protlm benchmark` run again after a SIGTERM continues the fine-tuning cell from its
    checkpoint and ends with the weights of `protlm train` uninterrupted."""
    whole = _train(task, "suite_whole")
    assert whole.returncode == 0, whole.stderr[-800:]
    out = tmp_path / "suite"
    cmd = [*PROTLM, "benchmark", "--suite", str(task / "task.yaml"), "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        states = list(out.glob("*/*/train-state/state.json"))
        text = states[0].read_text() if states else ""
        if '"epoch": 2' in text and '"batch": 0' not in text:
            break
        assert proc.poll() is None, proc.stderr.read()[-500:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-800:]
    assert "continuing the interrupted training run" in again.stderr
    (cell,) = [p for p in out.glob("*/*") if (p / "head.json").is_file()]
    a, b = _weights(task / "suite_whole"), _weights(cell)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_finish_ends_an_interrupted_run_at_its_last_finished_epoch(task):
    import json

    proc = _interrupt(task, "finished", signal.SIGKILL)  # killed inside epoch 2
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((task / "finished" / "train-state" / "state.json").read_text())
    assert len(state["history"]) == 1 and state["best_epoch"] == 1
    import shutil

    shutil.copytree(task / "finished" / "train-state", task / "finished-state-copy")
    done = _train(task, "finished", "--finish")
    assert done.returncode == 0, done.stderr[-800:]
    assert "--finish" in done.stderr and "epoch   2 " not in done.stderr  # nothing more was trained
    info = json.loads((task / "finished" / "head.json").read_text())
    assert info["stopped_by"] == "finished_early" and info["epochs_run"] == 1 and info["best_epoch"] == 1
    assert info["cut_short"] is True  # its best epoch is its last: flagged as probably under-trained
    assert not (task / "finished" / "train-state").exists()
    # the kept head is epoch 1's best: the checkpoint's "best" tensors, not the mid-epoch-2 weights
    from safetensors.torch import load_file

    saved = load_file(str(task / "finished-state-copy" / "state.safetensors"))
    head = load_file(str(task / "finished" / "head.safetensors"))
    best = {k[len("best.head."):]: v for k, v in saved.items() if k.startswith("best.head.")}
    now = {k[len("model.head."):]: v for k, v in saved.items() if k.startswith("model.head.")}
    assert best and set(best) == set(head)
    assert all(torch.equal(best[k], head[k]) for k in head)
    assert any(not torch.equal(now[k], head[k]) for k in head)  # training in epoch 2 had moved them
    metrics = json.loads((task / "finished" / "metrics.json").read_text())
    assert metrics["test"]["held_out"]["q3"]["accuracy"]["value"] > 0
    again = _train(task, "finished", "--finish")
    assert again.returncode == 2 and "already finished" in again.stderr
    none = _train(task, "never_started", "--finish")
    assert none.returncode == 2 and "no interrupted training run" in none.stderr
