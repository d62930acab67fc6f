"""SIGTERM (a scheduler's stop, ``kill``) is handled like Ctrl-C: the command stops with exit 143,
its lock and temporary files are cleaned up, finished parts are kept, and ``--resume`` finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

AA = "ACDEFGHIKLMNPQRSTVWY"


def test_sigterm_stops_embed_cleanly_and_resume_finishes(tmp_path):
    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    model = tmp_path / "esm"
    torch.manual_seed(0)
    build_model(ModelSpec(arch="esm", preset="tiny")).save_pretrained(model)
    build_tokenizer("esm").save_pretrained(model)
    rng = np.random.default_rng(0)
    n = 3000
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">p{i}\n{''.join(rng.choice(list(AA), size=int(rng.integers(200, 400))))}\n"
                             for i in range(n)))
    out = tmp_path / "out.h5"
    protlm = [sys.executable, "-m", "protlm.cli.main"]
    cmd = [*protlm, "embed", "--model", str(model), "--input", str(fasta), "--output", str(out), "--threads", "1",
           "--max-sequences", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    err = tmp_path / "err.txt"
    with err.open("w") as fh:
        proc = subprocess.Popen(cmd, stderr=fh, stdout=subprocess.DEVNULL, env=env)
        parts = Path(str(out) + ".parts")
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list(parts.glob("*.npz"))) < 2:
            time.sleep(0.2)
        assert proc.poll() is None, "embedding finished before it could be stopped: give it more proteins"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = err.read_text()
    assert rc == 143, text
    assert "protlm: terminated; finished work is kept; rerun the same command with --resume" in text
    assert "Traceback" not in text
    assert not out.exists()
    assert list(parts.glob("*.npz"))  # finished batches kept
    assert not list(tmp_path.glob(".out.h5.lock.holder"))  # the lock's cleanup ran
    assert not [p for p in parts.iterdir() if p.name.startswith(".")]  # no temporary part left

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as f:
        assert len(f.keys()) == n
