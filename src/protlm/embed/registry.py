"""One way to name an embedder: ``load_embedder(spec)`` for LMs and the baseline embedders.

``spec`` is what users pass as ``--model`` (or ``embedder:`` in a task config):

- the name of a baseline embedder (see :data:`BASELINES`: ``onehot``, ``blosum62``, ``kmer``);
- a k-mer model folder (``config.json`` with ``model_type: protlm_kmer``, written by
  ``protlm kmer-train``) → :class:`~protlm.embed.baselines.KmerEmbedder`;
- a Hugging Face model folder or hub id → :class:`~protlm.embed.embedder.Embedder`.

Every embedder returned here has ``name`` (str), ``dim`` (int), ``embed(seqs)`` (a list of
L × D float32 arrays, in input order) and ``embed_proteins(seqs)`` (N × D float32, the mean
over residues), plus what ``protlm embed`` uses: ``iter_embed``, ``stats`` and ``family``
(``.name``, ``.model_type``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from protlm.embed.baselines import FACTORIES, is_kmer_folder, load_kmer_folder
from protlm.embed.embedder import EmbedOptions, Embedder
from protlm.errors import InputError

#: Baseline embedder name → factory ``f(options) -> embedder`` (defined in protlm.embed.baselines).
BASELINES: dict[str, Callable[[EmbedOptions | None], object]] = dict(FACTORIES)


def load_embedder(spec: str, options: EmbedOptions | None = None):
    """The embedder named by ``spec`` (a baseline name, a k-mer folder, or an LM folder / hub id)."""
    spec = str(spec)
    factory = BASELINES.get(spec)
    if factory is not None:
        return factory(options)
    if is_kmer_folder(spec):
        return load_kmer_folder(spec, options)
    if not Path(spec).exists() and "/" not in spec:
        raise InputError(f"--model {spec}: not a baseline embedder ({', '.join(BASELINES)}), no such folder, "
                         f"and not a hub id of the form owner/name")
    emb = Embedder(spec, options)
    emb.name = spec
    return emb
