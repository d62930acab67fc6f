"""The one record type every benchmark loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ProteinRecord:
    """A protein with whatever labels a data set gives it.

    - ``residue_labels``: per-residue label strings, one character per residue, keyed by task
      (e.g. ``{"dssp3": "CCHHH...", "dssp8": "CCGGH..."}``); same length as ``sequence``.
    - ``residue_masks``: per-residue 0/1 ``uint8`` arrays keyed like ``residue_labels``
      (1 = scored); a label without a mask is scored everywhere.
    - ``residue_values``: per-residue numbers (float arrays of the sequence's length, NaN = no
      value), keyed by task — the ``residue_to_value`` protocol's targets (biotrainer's
      ``TARGET=0.1;0.5;…``).
    - ``labels``: per-protein labels keyed by task (``{"location": "Nucleus",
      "membrane": "M"}``, ``{"stability": 0.93}``); a missing label is simply absent.
    - ``split``: ``"train"``, ``"valid"`` or ``"test"`` (or a named test set), if the data
      set defines one.
    """

    id: str
    sequence: str
    residue_labels: dict[str, str] = field(default_factory=dict)
    residue_masks: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, object] = field(default_factory=dict)
    residue_values: dict[str, np.ndarray] = field(default_factory=dict)
    split: str | None = None

    def __len__(self) -> int:
        return len(self.sequence)

    def mask(self, task: str) -> np.ndarray:
        """The 0/1 mask for ``task``: the stored one, or all ones."""
        m = self.residue_masks.get(task)
        return m if m is not None else np.ones(len(self.sequence), dtype=np.uint8)
