"""Helpers for the tests that drive the CLI: run a command in-process, check that it failed with
one `protlm: error:` line (exit 2, no traceback), and a tiny task for `protlm train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from protlm.cli.main import main

AA = "ACDEFGHIKLMNPQRSTVWY"


def cli(capsys, *args) -> tuple[int, str, str]:
    """``protlm ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(code: int, err: str, *needles: str) -> str:
    """The one error line of a refused command (progress and warning lines may precede it; never a
    traceback), holding every needle; returned."""
    lines = [line for line in err.splitlines() if line.startswith("protlm: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def tiny_task(folder: Path, embedder: str = "onehot", epochs: int = 2) -> Path:
    """Writes ``folder/task.fasta`` and ``folder/task.yaml``; returns the config's path."""
    rng = np.random.default_rng(0)
    data = folder / "task.fasta"
    data.write_text("".join(f">s{i} TARGET={'ab'[i % 2]} SET={('train', 'valid', 'test')[i % 3]}\n"
                            f"{''.join(rng.choice(list(AA), 30))}\n" for i in range(12)))
    src = lambda split: {"file": str(data), "format": "biotrainer", "split": split}  # noqa: E731
    config = {"name": "t", "protocol": "sequence_to_class", "embedder": embedder,
              "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
              "targets": [{"name": "c", "label": "target", "classes": ["a", "b"]}], "head": {"type": "ffn"},
              "train": {"epochs": epochs, "bootstrap": 20}}
    (folder / "task.yaml").write_text(yaml.safe_dump(config))
    return folder / "task.yaml"
