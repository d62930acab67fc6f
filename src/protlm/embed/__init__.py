"""Embedding: any protein LM or baseline → per-residue / per-protein vectors, HDF5.

- :mod:`protlm.embed.backend` — what a model family must provide (the ``Backend`` interface).
- :mod:`protlm.embed.backends` — one file per family (HF LMs, baselines, …), self-registering.
- :mod:`protlm.embed.registry` — names / model types → backends.
- :mod:`protlm.embed.spec` — an embedder spec: name + :class:`EmbedOptions`.
- :mod:`protlm.embed.runner` — the one batch runner, :class:`Embedder` (``protlm.Embedder``).
- :mod:`protlm.embed.pipeline` / :mod:`protlm.embed.store` — ``protlm embed``: FASTA → HDF5.
"""

from protlm.embed.runner import Embedder, EmbedStats, load_embedder
from protlm.embed.spec import EmbedderSpec, EmbedOptions, parse_spec

__all__ = ["EmbedOptions", "Embedder", "EmbedderSpec", "EmbedStats", "load_embedder", "parse_spec", "embed_fasta"]


def __getattr__(name: str):
    if name == "embed_fasta":  # the pipeline pulls in HDF5; load it when asked for
        from protlm.embed.pipeline import embed_fasta

        return embed_fasta
    raise AttributeError(name)
