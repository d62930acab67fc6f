"""The papers' architectures as ``transformers`` model classes, with size presets.

Each architecture is a standard ``transformers`` class, so every checkpoint protlm writes is an
ordinary Hugging Face folder that ``AutoModel*.from_pretrained`` loads without protlm:

============  ============================  ==========  ========================================
name          transformers class            objective   paper
============  ============================  ==========  ========================================
``bert``      ``BertForMaskedLM``           mlm         ProtBert (post-LN BERT, 30-token vocab)
``albert``    ``AlbertForMaskedLM``         mlm         ProtAlbert (shared layers, factorised
                                                        embedding)
``esm``       ``EsmForMaskedLM``            mlm         pre-LayerNorm BERT as in ProteinLM /
                                                        Megatron, in its modern ESM-2 form
                                                        (pre-LN, rotary positions)
``causal``    ``GPTNeoXForCausalLM``        causal      the auto-regressive side (ProtTXL); see
                                                        docs/pretraining.md for the choice
``t5``        ``T5ForConditionalGeneration`` span       ProtT5 (span length 1, full-sequence
                                                        reconstruction; encoder alone for
                                                        embeddings)
``xlnet``     ``XLNetLMHeadModel``          plm         ProtXLNet (permutation LM, two-stream
                                                        attention, relative positions)
``txl``       ``ProtTXLForCausalLM``        causal      ProtTXL: Transformer-XL (relative
              (protlm.models.transfo_xl)                positions, segment recurrence with
                                                        memory); registered with transformers'
                                                        Auto classes when protlm.models is
                                                        imported
============  ============================  ==========  ========================================

Model code here does no I/O; :func:`build_model` returns a freshly initialised model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from protlm.errors import ConfigError
from protlm.models.vocab import VOCABS, Vocab

# Size presets: layers, hidden width, heads, feed-forward width. "tiny" trains in seconds on a
# laptop CPU; "small" is the ESM-2 8M shape; "base" BERT-base; "large" the ProtBert shape.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(layers=2, hidden=64, heads=4, ffn=256),
    "small": dict(layers=6, hidden=320, heads=20, ffn=1280),
    "base": dict(layers=12, hidden=768, heads=12, ffn=3072),
    "large": dict(layers=30, hidden=1024, heads=16, ffn=4096),
}


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # vocabulary family
    objective: str  # mlm | causal | span
    description: str
    make_config: Callable[["ModelSpec", Vocab], Any]
    model_class: str  # transformers class name
    supports_activation_checkpointing: bool = True
    module: str = "transformers"  # where model_class lives (protlm's own families: their module)

    @property
    def vocab(self) -> Vocab:
        return VOCABS[self.family]


@dataclass
class ModelSpec:
    """What the ``model:`` section of a pretraining config describes."""

    arch: str = "esm"
    preset: str = "tiny"
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    ffn: int | None = None
    embedding_size: int | None = None  # ALBERT's factorised embedding width
    max_positions: int = 1026  # absolute position tables (bert/albert); ignored by rotary models
    dropout: float = 0.0
    attention_dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # passed verbatim to the transformers config

    def resolved(self) -> dict[str, int]:
        if self.preset not in PRESETS:
            raise ConfigError(f"config model.preset: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        shape = dict(PRESETS[self.preset])
        for key in ("layers", "hidden", "heads", "ffn"):
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, int) or value <= 0:
                    raise ConfigError(f"config model.{key}: must be a positive integer, not {value!r}")
                shape[key] = value
        if shape["hidden"] % shape["heads"]:
            raise ConfigError(
                f"config model.hidden: {shape['hidden']} is not divisible by model.heads={shape['heads']}"
            )
        return shape


def _bert_config(spec: ModelSpec, vocab: Vocab):
    from transformers import BertConfig

    s = spec.resolved()
    return BertConfig(
        vocab_size=vocab.size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=s["ffn"], hidden_act="gelu",
        hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.attention_dropout,
        max_position_embeddings=spec.max_positions, type_vocab_size=2, pad_token_id=vocab.pad_id,

    )


def _albert_config(spec: ModelSpec, vocab: Vocab):
    from transformers import AlbertConfig

    s = spec.resolved()
    return AlbertConfig(
        vocab_size=vocab.size, embedding_size=spec.embedding_size or min(128, s["hidden"]),
        hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_hidden_groups=1,
        num_attention_heads=s["heads"], intermediate_size=s["ffn"], hidden_act="gelu",
        hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.attention_dropout,
        max_position_embeddings=spec.max_positions, type_vocab_size=2, pad_token_id=vocab.pad_id,
        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id,
    )


def _esm_config(spec: ModelSpec, vocab: Vocab):
    from transformers import EsmConfig

    s = spec.resolved()
    return EsmConfig(
        vocab_size=vocab.size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=s["ffn"], hidden_act="gelu",
        hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.attention_dropout,
        max_position_embeddings=spec.max_positions, position_embedding_type="rotary",
        emb_layer_norm_before=False, token_dropout=True, layer_norm_eps=1e-5,
        pad_token_id=vocab.pad_id, mask_token_id=vocab.mask_id,
    )


def _causal_config(spec: ModelSpec, vocab: Vocab):
    from transformers import GPTNeoXConfig

    s = spec.resolved()
    # Sequential residual (not GPT-J's parallel one) and full rotary: the same block layout as the
    # ESM-2 MLM model, so that MLM vs causal compares objectives rather than architectures.
    return GPTNeoXConfig(
        vocab_size=vocab.size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=s["ffn"], hidden_act="gelu",
        rotary_pct=1.0, use_parallel_residual=False, max_position_embeddings=spec.max_positions,
        hidden_dropout=spec.dropout, attention_dropout=spec.attention_dropout, layer_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id,
        pad_token_id=vocab.pad_id, use_cache=False,
    )


def _t5_config(spec: ModelSpec, vocab: Vocab):
    from transformers import T5Config

    s = spec.resolved()
    return T5Config(
        vocab_size=vocab.size, d_model=s["hidden"], d_kv=s["hidden"] // s["heads"], d_ff=s["ffn"],
        num_layers=s["layers"], num_decoder_layers=s["layers"], num_heads=s["heads"],
        dropout_rate=spec.dropout, feed_forward_proj="relu", pad_token_id=vocab.pad_id,
        eos_token_id=vocab.eos_id, decoder_start_token_id=vocab.pad_id, use_cache=False,

    )


def _xlnet_config(spec: ModelSpec, vocab: Vocab):
    from transformers import XLNetConfig

    s = spec.resolved()
    # XLNet's own layout: relative positions (no position table), untied u/v biases per layer,
    # GELU feed-forward; mem_len is XLNet's default (memory for inference; training proteins are
    # independent, so use_mems_train stays off). One dropout rate (XLNet has no separate one for
    # attention probabilities).
    return XLNetConfig(
        vocab_size=vocab.size, d_model=s["hidden"], n_layer=s["layers"], n_head=s["heads"], d_inner=s["ffn"],
        ff_activation="gelu", attn_type="bi", untie_r=True, mem_len=512, reuse_len=None, use_mems_train=False,
        bi_data=False, clamp_len=-1, same_length=False, dropout=spec.dropout, layer_norm_eps=1e-12,
        pad_token_id=vocab.pad_id, bos_token_id=vocab.id("<s>"), eos_token_id=vocab.id("</s>"),
    )


def _txl_config(spec: ModelSpec, vocab: Vocab):
    from protlm.models.transfo_xl import ProtTXLConfig

    s = spec.resolved()
    # segment_length / mem_len: the paper's tgt_len / mem_len (model.extra.segment_length, .mem_len).
    recurrence = {"segment_length": 512, "mem_len": 512}
    for key, low in (("segment_length", 1), ("mem_len", 0)):
        value = spec.extra.get(key, recurrence[key])
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"config model.extra.{key}: must be an integer >= {low}, not {value!r}")
        recurrence[key] = value
    return ProtTXLConfig(
        vocab_size=vocab.size, d_model=s["hidden"], n_layer=s["layers"], n_head=s["heads"], d_inner=s["ffn"],
        dropout=spec.dropout, dropatt=spec.attention_dropout, pad_token_id=vocab.pad_id,
        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, **recurrence,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert", "protbert", "mlm", "BERT masked LM (ProtBert)", _bert_config, "BertForMaskedLM"),
    "albert": Architecture(
        "albert", "protbert", "mlm", "ALBERT masked LM (ProtAlbert)", _albert_config, "AlbertForMaskedLM",
        supports_activation_checkpointing=False,
    ),
    "esm": Architecture(
        "esm", "esm", "mlm", "pre-LayerNorm BERT with rotary positions (ESM-2 layout)", _esm_config,
        "EsmForMaskedLM",
    ),
    "causal": Architecture(
        "causal", "esm", "causal", "causal LM, pre-LN + rotary (GPT-NeoX class)", _causal_config,
        "GPTNeoXForCausalLM",
    ),
    "t5": Architecture(
        "t5", "prott5", "span", "T5 span corruption, span length 1, full reconstruction (ProtT5)",
        _t5_config, "T5ForConditionalGeneration",
    ),
    "xlnet": Architecture(
        "xlnet", "protxlnet", "plm", "XLNet permutation LM, two-stream attention (ProtXLNet)", _xlnet_config,
        "XLNetLMHeadModel", supports_activation_checkpointing=False,
    ),
    "txl": Architecture(
        "txl", "protbert", "causal", "Transformer-XL causal LM with segment memory (ProtTXL)", _txl_config,
        "ProtTXLForCausalLM", module="protlm.models.transfo_xl",
    ),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ConfigError(f"config model.arch: unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_config(spec: ModelSpec):
    arch = get_architecture(spec.arch)
    config = arch.make_config(spec, arch.vocab)
    for key, value in spec.extra.items():  # verbatim transformers config fields, after protlm's own
        if not hasattr(config, key):
            raise ConfigError(f"config model.extra.{key}: not a field of transformers' {type(config).__name__}")
        setattr(config, key, value)
    config.architectures = [arch.model_class]
    return config


def model_class(arch: str | Architecture):
    """The model class of an architecture (a transformers class, or protlm's own)."""
    import importlib

    a = get_architecture(arch) if isinstance(arch, str) else arch
    return getattr(importlib.import_module(a.module), a.model_class)


def build_model(spec: ModelSpec, attn_implementation: str | None = "sdpa"):
    """A randomly initialised model of the spec (deterministic under ``torch.manual_seed``)."""
    arch = get_architecture(spec.arch)
    cls = model_class(arch)
    config = build_config(spec)
    try:
        return cls._from_config(config, attn_implementation=attn_implementation)
    except (ValueError, ImportError):  # a class without SDPA support falls back to eager attention
        return cls._from_config(config, attn_implementation="eager")


def count_parameters(model) -> dict[str, int]:
    """Total and non-embedding parameter counts (the N of the MFU formula)."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    embedding = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            embedding += module.weight.numel()
    return {"total": total, "non_embedding": total - embedding}


def unused_parameters(model) -> list:
    """Parameters the pretraining forward never touches: ESM's contact-prediction head, XLNet's
    segment-attention terms (``seg_embed``, ``r_s_bias``: used only with ``token_type_ids``, and
    a protein is one segment)."""
    contact = getattr(getattr(model, "esm", None), "contact_head", None)
    out = list(contact.parameters()) if contact is not None else []
    if type(model).__name__.startswith("XLNet"):
        out += [p for name, p in model.named_parameters() if name.endswith((".seg_embed", ".r_s_bias"))]
    return out
