"""Engine checks shared by the model-family test files (test_xlnet.py, test_transfo_xl.py): the
same 2-process-vs-accumulation and exact-resume checks that test_pretrain.py runs for ESM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import _torchrun, synthetic_proteins, tiny_config  # noqa: E402

from protlm.data.prepare import PrepareOptions, prepare  # noqa: E402
from protlm.pretrain.config import load_config  # noqa: E402
from protlm.pretrain.metrics import read_metrics  # noqa: E402
from protlm.pretrain.trainer import Trainer  # noqa: E402


def make_shards(folder: Path, n: int = 160) -> Path:
    fasta = folder / "train.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(synthetic_proteins(n))))
    prepare(fasta, folder / "shards", PrepareOptions(valid_fraction=0.1))
    return folder / "shards"


def family_config(shards: Path, arch: str, extra: dict | None = None, **train) -> dict:
    data = tiny_config(shards, arch, **train)
    if extra:
        data["model"]["extra"] = dict(extra)
    return data


def two_processes_match_one(shards: Path, tmp_path: Path, arch: str, extra: dict | None = None) -> None:
    """2 processes × 1 micro-batch (DDP over gloo) == 1 process × 2 accumulated micro-batches."""
    import yaml

    data = family_config(shards, arch, extra, phases=[{"steps": 3, "max_length": 96, "tokens_per_batch": 768}],
                         save_every=3, eval_every=3)
    one = json.loads(json.dumps(data))
    one["train"]["grad_accum"] = 2
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r1 = subprocess.run([sys.executable, "-m", "protlm.cli.main", "pretrain", "--config", str(tmp_path / "one.yaml"),
                         "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _torchrun(["pretrain", "--config", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "two")], 2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    l1 = [r["loss"] for r in m1 if r["kind"] == "train"]
    l2 = [r["loss"] for r in m2 if r["kind"] == "train"]
    assert len(l1) == len(l2) == 3
    assert np.allclose(l1, l2, rtol=0, atol=1e-4), (l1, l2)
    assert l1[0] != l1[-1]  # the model trained
    v1 = [r["val_ppl"] for r in m1 if r["kind"] == "valid"]
    v2 = [r["val_ppl"] for r in m2 if r["kind"] == "valid"]
    assert v1 and np.allclose(v1, v2, rtol=1e-4)
    assert next(r for r in m2 if r["kind"] == "start")["world"] == 2


def resume_matches(shards: Path, tmp_path: Path, arch: str, extra: dict | None = None) -> None:
    """Stopping after step 3 and resuming gives the uninterrupted run's losses and weights."""
    from safetensors.torch import load_file

    data = family_config(shards, arch, extra, phases=[{"steps": 3, "max_length": 64, "tokens_per_batch": 512},
                                                      {"steps": 3, "max_length": 96, "tokens_per_batch": 512}],
                         save_every=2, eval_every=3)
    data["model"]["dropout"] = 0.1  # the RNG state must be restored too
    cfg = load_config(data=data)
    Trainer(cfg, tmp_path / "full", progress=False).run()
    Trainer(cfg, tmp_path / "cut", progress=False).run(until=3)
    Trainer(load_config(data=data), tmp_path / "cut", resume=True, progress=False).run()
    full = [r["loss"] for r in read_metrics(tmp_path / "full") if r["kind"] == "train"]
    cut = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "cut") if r["kind"] == "train"]
    assert [s for s, _ in cut] == list(range(1, 7))
    assert np.allclose([l for _, l in cut], full, rtol=0, atol=1e-6)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def cli_embed_matches(folder: Path, tmp_path: Path, seqs: list[str], expected: list[np.ndarray]) -> None:
    """`protlm embed --model FOLDER` writes, per protein, what the backend returned."""
    import h5py

    from protlm.cli.main import main

    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "e.h5"
    assert main(["embed", "--model", str(folder), "--input", str(fasta), "--output", str(out), "--device", "cpu"]) == 0
    with h5py.File(out) as f:
        for i, ref in enumerate(expected):
            np.testing.assert_allclose(f[f"p{i}"][()], ref, atol=1e-5)
