"""Model definitions: vocabularies of the protein LM families and the papers' architectures."""

from protlm.models.architectures import ARCHITECTURES, PRESETS, ModelSpec, build_model
from protlm.models.vocab import VOCABS, Vocab, build_tokenizer

# ProtTXL (Transformer-XL) is protlm's own transformers model: importing it registers
# model_type "prottxl" with AutoConfig / AutoModel / AutoModelForCausalLM.
from protlm.models import transfo_xl  # noqa: E402,F401  (registration side effect)

__all__ = ["ARCHITECTURES", "PRESETS", "VOCABS", "ModelSpec", "Vocab", "build_model", "build_tokenizer"]
