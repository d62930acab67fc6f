"""protlm: protein language models as installable, tested, fast software.

Layers (one sub-package each, lower layers never import higher ones):

- ``protlm.data``     — FASTA reading and cleaning, benchmark data loaders, tokenised
  pretraining shards (``protlm prepare``).
- ``protlm.models``   — vocabularies and the papers' architectures on transformers' classes.
- ``protlm.pretrain`` — the training engine (``protlm pretrain``).
- ``protlm.embed``    — embeddings with any protein LM (``protlm embed``); ``protlm.Embedder``.
- ``protlm.cli``      — the one ``protlm`` command; parses arguments and calls library code.
"""

__version__ = "0.3.0"

from protlm.errors import ProtlmError

__all__ = ["EmbedOptions", "Embedder", "ProtlmError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import protlm` (and the CLI's start-up) should not pay for importing torch.
    if name in ("Embedder", "EmbedOptions"):
        from protlm import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'protlm' has no attribute {name!r}")
