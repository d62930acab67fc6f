"""Data only: the shipped predictors' head folders (``<name>-<embedder>/``: head.json,
head.safetensors, metrics.json, card.json, MODEL_CARD.md), installed as package data; read them
through :mod:`protlm.predictors`."""
