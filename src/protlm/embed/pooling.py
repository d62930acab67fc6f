"""The one per-protein pooling of per-residue embeddings: the mean over residues, in float32.

Every place that turns an L × D array into one vector (``protlm embed --level protein``, the
runner's ``embed_proteins``, the task features' pooled cache, HDF5 files read by per-protein
heads) calls :func:`mean_vector`, so the same residues give the same bits wherever they are
pooled (a float16 cache part is summed in float32, not in float16). A backend's own pooling
(UniRep's ``h_avg``, ``fusion``, …) is the backend's, not this.
"""

from __future__ import annotations

import numpy as np


def mean_vector(residues: np.ndarray) -> np.ndarray:
    """The mean over the first axis (residues) of an L × D array, as a float32 D-vector."""
    a = np.asarray(residues)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"mean_vector: expected an L × D array with L ≥ 1, got shape {a.shape}")
    return a.mean(axis=0, dtype=np.float32)
