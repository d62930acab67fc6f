"""One way to name an embedder: ``load_embedder(spec)`` for LMs and the baseline embedders.

``spec`` is what users pass as ``--model`` (or ``embedder:`` in a task config):

- a Hugging Face model folder or hub id → :class:`~protlm.embed.embedder.Embedder`;
- the name of a baseline embedder (see :data:`BASELINES`).

Every embedder returned here has ``name`` (str), ``dim`` (int), ``embed(seqs)`` (a list of
L × D float32 arrays, in input order) and ``embed_proteins(seqs)`` (N × D float32, the mean
over residues).
"""

from __future__ import annotations

from typing import Callable

from protlm.embed.embedder import EmbedOptions, Embedder

#: Baseline embedder name → factory ``f(options) -> embedder``; filled by protlm.embed.baselines.
BASELINES: dict[str, Callable[[EmbedOptions | None], object]] = {}


def load_embedder(spec: str, options: EmbedOptions | None = None):
    """The embedder named by ``spec`` (a baseline name, or an LM folder / hub id)."""
    factory = BASELINES.get(str(spec))
    if factory is not None:
        return factory(options)
    emb = Embedder(str(spec), options)
    emb.name = str(spec)
    return emb
