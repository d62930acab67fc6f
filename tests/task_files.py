"""A tiny task for tests that need `protlm train` to get as far as its embedder: a biotrainer FASTA
of 12 random proteins in two classes and a sequence-classification config beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

AA = "ACDEFGHIKLMNPQRSTVWY"


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
