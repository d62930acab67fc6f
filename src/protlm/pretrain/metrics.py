"""FLOP accounting, the machine's matmul ceiling, and the JSONL (+ TensorBoard) metrics log.

MFU follows docs/benchmarks.md and ../shared/guides/measuring.md: a forward pass costs 2 FLOPs
per weight per token of the transformer body plus ``4 · layers · width · L`` per token for the
attention scores and the weighted sum; training is 3× the forward. The body's weight count is
computed from the shape (so ALBERT's shared layers count once per use, not once per tensor), and
only real tokens count: padding is waste, not work. Each family's count (encoder-decoder T5,
XLNet's two streams, Transformer-XL's segments) is part of its registered spec in
:mod:`protlm.models.architectures`; this module only dispatches to it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from protlm.models.architectures import Architecture, get_architecture


def forward_flops(lengths: np.ndarray, *, arch: str | Architecture, layers: int, hidden: int, ffn: int,
                  vocab: int, **family_args) -> float:
    """Forward FLOPs of a batch of sequences with the given real token counts, by the
    architecture's own count (:attr:`protlm.models.architectures.Architecture.forward_flops`).

    ``family_args``: the family's own arguments (Transformer-XL: ``segment`` / ``memory``, its
    segment length and memory); other families' counts ignore them.
    """
    spec = get_architecture(arch) if isinstance(arch, str) else arch
    return float(spec.forward_flops(np.asarray(lengths, dtype=np.float64), layers=layers, hidden=hidden, ffn=ffn,
                                    vocab=vocab, **family_args))


def training_flops(lengths: np.ndarray, **shape) -> float:
    return 3.0 * forward_flops(lengths, **shape)


def measure_peak_flops(device: torch.device, seconds: float = 0.6) -> float:
    """Achieved FLOP/s of a large matmul on ``device`` (fp32 on CPU, bf16 on CUDA)."""
    if device.type == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 2048, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        reps = 10 if device.type == "cuda" else 2
        for _ in range(reps):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, reps * 2 * n ** 3 / (time.perf_counter() - t))
        if time.perf_counter() > deadline:
            return best


class MetricsLog:
    """Appends one JSON object per line; mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, folder: Path, *, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(folder) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(folder) / "tensorboard"))
            except Exception:  # TensorBoard is optional
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (after a resume the curve continues from the checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(folder: str | Path) -> list[dict]:
    path = Path(folder) / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
