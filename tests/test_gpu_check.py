"""benchmarks/gpu_check.py (issue 23, item 4) in its CPU-fallback mode: the script a lent GPU machine
runs, made correct here. Every stage runs at a tiny shape (FSDP through torchrun with gloo), reports
finite positive numbers and lands in the JSON; a failing stage is reported, the others still run,
and the exit status says so."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
STAGES = ("ceiling", "embed", "pretrain", "finetune_lora", "finetune_full", "fsdp")


def _torchrun_missing() -> str | None:
    if not torch.distributed.is_available():
        return "this torch build has no torch.distributed, so no torchrun for the FSDP stage"
    if importlib.util.find_spec("torch.distributed.run") is None:
        return "torchrun (torch.distributed.run) is not available for the FSDP stage"
    return None


pytestmark = pytest.mark.skipif(_torchrun_missing() is not None, reason=_torchrun_missing() or "")


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    # one thread, as every test process here (tests/conftest.py): on a shared 2-core machine two
    # OpenMP threads stall when the other core is busy
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out, "--cpu")
    doc = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else None
    return proc, doc, out


def _numbers(tree):
    if isinstance(tree, bool):
        return
    if isinstance(tree, (int, float)):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)


def test_every_stage_runs_and_reports_finite_positive_numbers(fallback):
    proc, doc, out = fallback
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert doc is not None and doc["exit_code"] == 0
    assert list(doc["stages"]) == list(STAGES)
    for name, stage in doc["stages"].items():
        assert stage["status"] == "ok", (name, stage.get("error"), stage.get("reason"))
        assert stage["rows"], name
        numbers = list(_numbers(stage["metrics"]))
        assert numbers, name
        assert all(math.isfinite(x) and x > 0 for x in numbers), (name, stage["metrics"])
        assert stage["seconds"] > 0
    m = {name: doc["stages"][name]["metrics"] for name in STAGES}
    assert m["ceiling"]["peak_flops"] > 1e8
    for name in ("pretrain", "fsdp"):
        assert m[name]["tokens_per_s"] > 0 and 0 < m[name]["mfu"] < 1, (name, m[name])
        assert m[name]["timed_steps"] == doc["profile"]["pretrain_steps"]
    for name in ("finetune_lora", "finetune_full"):
        assert m[name]["timed_steps"] >= 1
    # LoRA trains a small share of what full fine-tuning trains
    assert m["finetune_lora"]["trainable_parameters"] < m["finetune_full"]["trainable_parameters"] / 5
    env = doc["environment"]
    assert env["mode"] == "cpu-fallback" and env["fallback_reason"] == "--cpu given"
    assert env["torch"] == torch.__version__ and env["git"]["commit"] and env["device"]


def test_one_table_is_printed_and_written(fallback):
    proc, doc, out = fallback
    header = "| stage | status | measurement | result | MFU | peak mem MiB | s |"
    assert proc.stdout.count(header) == 1
    assert "CPU FALLBACK" in proc.stdout  # never mistaken for GPU figures
    table = proc.stdout.split(header, 1)[1]
    for name in STAGES:
        assert f"\n| {name} | ok |" in table, name
    assert header in (out / "gpu_check.md").read_text()


def test_embedding_parity_and_what_it_compared(fallback):
    from protlm.embed.precision import cpu_bf16

    _, doc, _ = fallback
    embed = doc["stages"]["embed"]
    assert embed["metrics"]["parity_cos_min"] >= 0.99
    assert embed["metrics"]["parity_cos_mean"] >= embed["metrics"]["parity_cos_min"]
    assert embed["metrics"]["protlm_fp32_vs_hf_fp32_cos_min"] >= 0.9999  # the same model, the same precision
    if cpu_bf16()[0]:  # bf16 by autocast on this CPU
        assert embed["info"]["bf16"] is True and embed["info"]["parity"].startswith("protlm bf16 vs protlm fp32")
        assert embed["metrics"]["protlm_bf16_residues_per_s"] > 0
    else:  # no bf16 instructions: fp32 against fp32, and the output says so
        assert embed["info"]["bf16"] is False and embed["info"]["parity"].startswith("fp32 vs fp32")
        assert "NO bf16" in doc["stages"]["embed"]["rows"][0]["what"]


def test_fsdp_stage_really_shards_through_torchrun(fallback):
    _, doc, _ = fallback
    fsdp = doc["stages"]["fsdp"]
    assert fsdp["info"]["backend"] == "gloo" and fsdp["info"]["world"] == 1
    assert fsdp["metrics"]["sharded_parameters"] > 0  # DTensors: FSDP2 was applied, not a plain run
    # protlm itself gives one torchrun process a process group with train.parallel fsdp
    # same config, seed and batches as the pretrain stage, fp32 on one process: the same losses
    assert fsdp["info"]["loss_max_abs_diff_vs_pretrain"] < 1e-4


def test_a_failing_stage_is_reported_and_the_others_still_run(tmp_path):
    args = ["--stages", "ceiling", "embed", "finetune_full", "--fail-stage", "embed"]
    if torch.cuda.is_available():
        args.append("--cpu")  # this test checks the failure path, not a GPU
    proc = _run(tmp_path, *args)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    if not torch.cuda.is_available():
        assert "no CUDA device" in proc.stdout and "running the CPU fallback" in proc.stdout
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["exit_code"] == 1
    assert list(doc["stages"]) == ["ceiling", "embed", "finetune_full"]
    embed = doc["stages"]["embed"]
    assert embed["status"] == "failed"
    assert embed["error"] == "InjectedFailure: deliberate failure of stage embed (--fail-stage)"
    for name in ("ceiling", "finetune_full"):  # before and after the failure
        assert doc["stages"][name]["status"] == "ok"
        assert all(math.isfinite(x) and x > 0 for x in _numbers(doc["stages"][name]["metrics"]))
    assert doc["summary"]["failed"] == {"embed": embed["error"]}
    assert "| embed | **FAILED** | InjectedFailure: deliberate failure" in proc.stdout
