"""protlm: protein language models as installable, tested, fast software.

Layers (one sub-package each, lower layers never import higher ones):

- ``protlm.data``   — FASTA reading and cleaning, benchmark data loaders, tokenised
  pretraining shards (``protlm prepare``).
- ``protlm.cli``    — the one ``protlm`` command; parses arguments and calls library code.
"""

__version__ = "0.2.0"

from protlm.errors import ProtlmError

__all__ = ["ProtlmError", "__version__"]
