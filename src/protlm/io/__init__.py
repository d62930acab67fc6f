"""The bottom layer: files and places every other layer shares.

- :mod:`protlm.io.atomic` — atomic writes (bytes, JSON, npy/npz, folders): temp file, fsync, rename.
- :mod:`protlm.io.resources` — the benchmark data root (``PROTLM_DATA``) and the bundled files
  (committed checkpoints, recipes) found in a source checkout or in the installed package.
"""
