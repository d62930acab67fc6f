"""protlm: protein language models as installable, tested, fast software.

Layers (one sub-package each, lower layers never import higher ones):

- ``protlm.io``       — atomic writes, the output policy and locks, checksums, resources.
- ``protlm.data``     — FASTA reading and cleaning, benchmark data loaders, tokenised
  pretraining shards (``protlm prepare``).
- ``protlm.align``    — MMseqs2 searches and profiles.
- ``protlm.models``   — vocabularies, the papers' architectures, UniRep, the one HF loader.
- ``protlm.pretrain`` — the training engine (``protlm pretrain``).
- ``protlm.embed``    — every embedder behind one runner (``protlm embed``); ``protlm.Embedder``.
- ``protlm.tasks``    — protocols, heads, the one training engine and the benchmark suite.
- ``protlm.analysis`` — projections (``protlm project``).
- ``protlm.cli``      — the one ``protlm`` command; parses arguments and calls library code.

docs/architecture.md draws the layers and how to add a model family, a protocol or a head.
"""

__version__ = "0.4.0"

from protlm.errors import ProtlmError

__all__ = ["EmbedOptions", "Embedder", "ProtlmError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import protlm` (and the CLI's start-up) should not pay for importing torch.
    if name in ("Embedder", "EmbedOptions"):
        from protlm import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'protlm' has no attribute {name!r}")
