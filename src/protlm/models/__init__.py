"""Model definitions: vocabularies of the protein LM families and the papers' architectures."""

from protlm.models.architectures import ARCHITECTURES, PRESETS, ModelSpec, build_model
from protlm.models.vocab import VOCABS, Vocab, build_tokenizer

__all__ = ["ARCHITECTURES", "PRESETS", "VOCABS", "ModelSpec", "Vocab", "build_model", "build_tokenizer"]
