"""Batching by a token budget with length bucketing, deterministic from (seed, phase, epoch).

Sequences are sorted by their (cropped) length with random tie-breaking, cut greedily into
micro-batches whose padded size ``n × longest`` stays within the budget, and the batch order is
shuffled. Neighbouring lengths share a batch, so almost no compute goes to padding.

Which micro-batch a process trains on is a pure function of the optimizer step:
``c = step_in_phase × world × accum + rank × accum + micro``. Resuming from a step therefore
reproduces the data stream exactly, and two processes with accumulation 1 see exactly the
micro-batches that one process with accumulation 2 sees, which makes DDP testable against a
single process.
"""

from __future__ import annotations

import numpy as np


def batch_boundaries(sorted_lengths: np.ndarray, tokens_per_batch: int, max_sequences: int = 0) -> np.ndarray:
    """Start offsets of greedy batches over ascending lengths (plus the end offset)."""
    starts = [0]
    n = len(sorted_lengths)
    count = 0
    start = 0
    for j in range(n):
        count = j - start + 1
        if count * int(sorted_lengths[j]) > tokens_per_batch or (max_sequences and count > max_sequences):
            start = j
            starts.append(j)
    starts.append(n)
    return np.asarray(starts, dtype=np.int64)


class BatchPlan:
    """The micro-batches of one curriculum phase, epoch after epoch."""

    def __init__(self, lengths: np.ndarray, *, max_length: int, n_special: int, tokens_per_batch: int,
                 max_sequences: int = 0, seed: int = 0, phase: int = 0):
        if len(lengths) == 0:
            raise ValueError("no sequences to batch")
        self.padded = np.minimum(np.asarray(lengths, dtype=np.int64), max_length - n_special) + n_special
        self.tokens_per_batch = tokens_per_batch
        self.max_sequences = max_sequences
        self.seed = seed
        self.phase = phase
        self._epochs: list[list[np.ndarray]] = []
        self._ends: list[int] = []  # cumulative micro-batch counts at the end of each epoch

    def _plan_epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.phase, epoch, 0x5EED])
        order = np.lexsort((rng.random(len(self.padded)), self.padded))
        cuts = batch_boundaries(self.padded[order], self.tokens_per_batch, self.max_sequences)
        batches = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        perm = rng.permutation(len(batches))
        return [batches[k] for k in perm]

    def _ensure(self, epoch: int) -> None:
        while len(self._epochs) <= epoch:
            e = len(self._epochs)
            batches = self._plan_epoch(e)
            self._epochs.append(batches)
            self._ends.append((self._ends[-1] if self._ends else 0) + len(batches))
            if len(self._epochs) > 2:  # keep memory bounded: only the counts of old epochs matter
                self._epochs[-3] = []

    def locate(self, counter: int) -> tuple[int, int]:
        """(epoch, index in epoch) of the ``counter``-th micro-batch of the phase."""
        epoch = 0
        while True:
            self._ensure(epoch)
            if counter < self._ends[epoch]:
                start = self._ends[epoch - 1] if epoch else 0
                return epoch, counter - start
            epoch += 1

    def get(self, counter: int) -> tuple[int, int, np.ndarray]:
        epoch, index = self.locate(counter)
        if not self._epochs[epoch]:
            self._epochs[epoch] = self._plan_epoch(epoch)
        return epoch, index, self._epochs[epoch][index]

    def batches_per_epoch(self) -> int:
        self._ensure(0)
        return self._ends[0]
