"""Model definitions: vocabularies of the protein LM families and the papers' architectures."""

from protlm.models.architectures import ARCHITECTURES, PRESETS, ModelSpec, build_model
from protlm.models.vocab import VOCABS, Vocab, build_tokenizer

# One rule for protlm's own transformers model families: importing protlm.models registers every
# one of them with transformers' Auto classes, so that AutoModel.from_pretrained(folder) loads any
# folder protlm writes. ProtTXL (Transformer-XL): model_type "prottxl" (AutoConfig, AutoModel,
# AutoModelForCausalLM); UniRep (mLSTM): model_type "unirep" (AutoConfig, AutoModel). A new family
# is a module here that registers itself on import, added to this line (tests/test_packaging.py
# checks that every module calling AutoConfig.register is imported).
from protlm.models import transfo_xl, unirep  # noqa: E402,F401  (registration side effects)

#: protlm's own model_type names, each registered by importing this package.
OWN_MODEL_TYPES = ("prottxl", "unirep")

__all__ = ["ARCHITECTURES", "PRESETS", "VOCABS", "ModelSpec", "Vocab", "build_model", "build_tokenizer"]
