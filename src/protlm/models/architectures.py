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

**One registered spec per family.** Everything protlm knows about a pretraining family is its
:class:`Architecture`: vocabulary, objective, config builder, model class, its FLOP count (the
trainer's MFU and ``flops_seen``), what the trainer reads from the built model's config for that
count, the parameters its objective never trains, whether crops are bounded by a position table,
and the conventions ``protlm embed`` reads its checkpoints with. :func:`register_architecture`
adds one (refusing a name that another definition holds), so a new family is one file that calls
it -- inside protlm, in any imported module, or in a plug-in package (:mod:`protlm.plugins`:
:func:`get_architecture` loads the ``protlm.plugins`` entry points before it answers), with no
change to the pretraining engine, which never tests an architecture's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from protlm.errors import ConfigError
from protlm.models.families import FAMILIES, Family
from protlm.models.vocab import VOCABS, Vocab

# Size presets: layers, hidden width, heads, feed-forward width. "tiny" trains in seconds on a
# laptop CPU; "small" is the ESM-2 8M shape; "base" BERT-base; "large" the ProtBert shape.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(layers=2, hidden=64, heads=4, ffn=256),
    "small": dict(layers=6, hidden=320, heads=20, ffn=1280),
    "base": dict(layers=12, hidden=768, heads=12, ffn=3072),
    "large": dict(layers=30, hidden=1024, heads=16, ffn=4096),
}


#: The objectives :func:`protlm.pretrain.objectives.make_batch` builds (kept here, not imported
#: from there: protlm.pretrain imports this module).
OBJECTIVES = ("mlm", "causal", "plm", "span")


# --------------------------------------------------------------------------- FLOP counts
#
# A family's count is ``count(lengths, *, layers, hidden, ffn, vocab, **family_args) -> float``:
# the forward FLOPs of a batch of sequences with the given real token counts (float64 array;
# padding is waste, not work). ``family_args`` are the family's own arguments, which the trainer
# reads from the built model's config (:attr:`Architecture.flop_arguments`; Transformer-XL: its
# segment length and memory). Every count takes the other families' arguments and ignores them,
# so that one call shape (a sweep over architectures that passes ``segment``/``memory``) works for
# every family, as :func:`protlm.pretrain.metrics.forward_flops` always allowed.


def _block_flops(hidden: int, ffn: int) -> int:
    """Attention projections + MLP of one layer, per token (2 FLOPs per weight)."""
    return 2 * (4 * hidden * hidden + 2 * hidden * ffn)


def transformer_flops(lengths: np.ndarray, *, layers: int, hidden: int, ffn: int, vocab: int,
                      **_other_families_args) -> float:
    """One stack of full-attention layers and an LM head at every token (BERT, ALBERT, ESM,
    GPT-NeoX): 2·weights per token plus ``4 · layers · width · L`` per token for the attention
    scores and the weighted sum."""
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens = lengths.sum()
    sq = (lengths ** 2).sum()
    block = _block_flops(hidden, ffn)
    head = 2 * hidden * vocab
    return float(tokens * (layers * block + head) + 4 * layers * hidden * sq)


def t5_flops(lengths: np.ndarray, *, layers: int, hidden: int, ffn: int, vocab: int,
             **_other_families_args) -> float:
    """Encoder layers + decoder layers (self-attention, cross-attention, MLP) over L tokens each."""
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens = lengths.sum()
    sq = (lengths ** 2).sum()
    block = _block_flops(hidden, ffn)
    head = 2 * hidden * vocab
    dec_block = 2 * (8 * hidden * hidden + 2 * hidden * ffn)
    return float(tokens * (layers * (block + dec_block) + head) + 3 * 4 * layers * hidden * sq)


def xlnet_flops(lengths: np.ndarray, *, layers: int, hidden: int, ffn: int, vocab: int,
                **_other_families_args) -> float:
    """Content stream over every token (plus the relative-position projection of the 2L
    encodings, and scores against them); the query stream (its q/o projections, MLP and
    attention) and the LM head only on the predicted tokens, 1/6 of them on average."""
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens = lengths.sum()
    sq = (lengths ** 2).sum()
    block = _block_flops(hidden, ffn)
    head = 2 * hidden * vocab
    targets = lengths / 6.0
    per_layer = (tokens * (block + 4 * hidden * hidden) + 8 * hidden * sq
                 + targets.sum() * 2 * (2 * hidden * hidden + 2 * hidden * ffn)
                 + 8 * hidden * (targets * lengths).sum())
    return float(layers * per_layer + targets.sum() * head)


def txl_flops(lengths: np.ndarray, *, layers: int, hidden: int, ffn: int, vocab: int, segment: int = 0,
              memory: int = 0, **_other_families_args) -> float:
    """Each segment's queries meet its keys and the memory (content + position scores and the
    weighted sum: 6·width per pair); the memory's inputs are projected again per segment.
    ``segment`` 0: the whole sequence is one segment."""
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens = lengths.sum()
    block = _block_flops(hidden, ffn)
    head = 2 * hidden * vocab
    seg = np.minimum(lengths, segment) if segment else lengths
    n_seg = np.ceil(lengths / np.maximum(seg, 1))
    mem = np.where(n_seg > 1, memory, 0)
    pairs = (n_seg * seg * (seg + mem)).sum()
    per_layer = tokens * block + (n_seg * mem).sum() * 2 * 3 * hidden * hidden + 6 * hidden * pairs
    return float(layers * per_layer + tokens * head)


def _no_flop_arguments(config) -> dict:
    """A family whose count needs nothing beyond the shape."""
    return {}


def _no_unused_parameters(model) -> list:
    """A family whose objective trains every parameter."""
    return []


@dataclass(frozen=True)
class Architecture:
    """One pretraining family: everything the engine needs, so that it never tests a name.

    The fields keep their order, so positional construction works as before; the ones added for
    the engine's hooks default to a plain transformer trained on every parameter.
    """

    name: str
    family: str  # the vocabulary: a name in protlm.models.vocab.VOCABS (the tokenizer saved with checkpoints)
    objective: str  # one of OBJECTIVES: mlm | causal | plm | span
    description: str
    make_config: Callable[["ModelSpec", Vocab], Any]  # (model spec, vocabulary) -> transformers config
    model_class: str  # transformers class name
    supports_activation_checkpointing: bool = True
    module: str = "transformers"  # where model_class lives (protlm's own families: their module)
    #: forward FLOPs of a batch (see "FLOP counts" above); training is 3x this
    forward_flops: Callable[..., float] = transformer_flops
    #: the family's own keyword arguments of ``forward_flops``, read from the built model's config
    flop_arguments: Callable[[Any], dict] = _no_flop_arguments
    #: parameters the pretraining forward never touches: frozen, so DDP does not wait for their gradients
    unused_parameters: Callable[[Any], list] = _no_unused_parameters
    #: absolute position embeddings of ``model.max_positions`` entries: config validation refuses
    #: longer crops (relative and rotary positions have no such bound)
    position_table: bool = False
    #: the conventions ``protlm embed`` reads checkpoints of ``embedding.model_type`` with
    #: (:data:`protlm.models.families.FAMILIES` is made of these: ``detect_family`` and
    #: ``load_hf_lm`` use them); None where another spec or protlm's own backend (ProtTXL) serves
    #: the family's model_type. The HF embedder (protlm.embed.backends.hf) takes the model types
    #: in FAMILIES when it is imported, so a model_type new to protlm reaches ``protlm embed``
    #: only when registered before that import.
    embedding: Family | None = None

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


def _txl_flop_arguments(config) -> dict:
    return {"segment": config.segment_length, "memory": config.mem_len}


def _esm_unused_parameters(model) -> list:
    """ESM's contact-prediction head (MLM never trains it)."""
    contact = getattr(getattr(model, "esm", None), "contact_head", None)
    return list(contact.parameters()) if contact is not None else []


def _xlnet_unused_parameters(model) -> list:
    """XLNet's segment-attention terms (``seg_embed``, ``r_s_bias``): used only with
    ``token_type_ids``, and a protein is one segment."""
    return [p for name, p in model.named_parameters() if name.endswith((".seg_embed", ".r_s_bias"))]


#: Registered architectures by name; add one with :func:`register_architecture`.
ARCHITECTURES: dict[str, Architecture] = {}


def _definition(arch: Architecture) -> tuple:
    """An architecture's fields with callables named by module and qualified name: the same
    definition imported twice (a module reloaded, a plug-in loaded again) compares equal, where
    the function objects would not."""
    def key(value):
        if callable(value) and hasattr(value, "__qualname__"):
            return ("callable", getattr(value, "__module__", None), value.__qualname__)
        return value
    return tuple(key(getattr(arch, f.name)) for f in fields(arch))


def _owner(arch: Architecture) -> str:
    return f"{getattr(arch.make_config, '__module__', '?')}.{getattr(arch.make_config, '__qualname__', '?')}"


def register_architecture(arch: Architecture) -> Architecture:
    """Register a pretraining family under ``arch.name`` and return it.

    A name held by another definition is refused with a ValueError (so neither a plug-in nor a
    second module silently replaces a family whose checkpoints exist); registering the same
    definition again -- the same fields, its functions from the same module, as when a module is
    imported twice -- is allowed, as :func:`protlm.tasks.protocols.register_protocol` allows its
    own class again. ``arch.embedding`` registers its conventions under its ``model_type`` in
    :data:`protlm.models.families.FAMILIES`, refused likewise when another family holds it.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"register_architecture takes an Architecture, not {type(arch).__name__}")
    if not arch.name or not isinstance(arch.name, str):
        raise ValueError("an architecture needs a name")
    if arch.family not in VOCABS:
        raise ValueError(f"architecture {arch.name!r}: unknown vocabulary {arch.family!r}; "
                         f"choose one of {sorted(VOCABS)}")
    if arch.objective not in OBJECTIVES:
        raise ValueError(f"architecture {arch.name!r}: unknown objective {arch.objective!r}; "
                         f"choose one of {OBJECTIVES}")
    for hook in ("make_config", "forward_flops", "flop_arguments", "unused_parameters"):
        if not callable(getattr(arch, hook)):
            raise ValueError(f"architecture {arch.name!r}: {hook} must be callable")
    old = ARCHITECTURES.get(arch.name)
    if old is not None and _definition(old) != _definition(arch):
        raise ValueError(f"architecture {arch.name!r} is registered already (by {_owner(old)}); choose another name")
    if arch.embedding is not None:
        emb = arch.embedding
        if emb.space_separated != arch.vocab.space_separated:
            raise ValueError(f"architecture {arch.name!r}: embedding.space_separated={emb.space_separated} but its "
                             f"{arch.family!r} tokenizer expects space_separated={arch.vocab.space_separated}")
        holder = next((a for a in ARCHITECTURES.values() if a.name != arch.name and a.embedding is not None
                       and a.embedding.model_type == emb.model_type), None)
        if holder is not None:
            raise ValueError(f"architecture {arch.name!r}: model_type {emb.model_type!r} has embedding conventions "
                             f"already (architecture {holder.name!r}, by {_owner(holder)}); leave embedding None "
                             f"to embed with those")
    if old is not None and old.embedding is not None:
        FAMILIES.pop(old.embedding.model_type, None)
    ARCHITECTURES[arch.name] = arch
    if arch.embedding is not None:
        FAMILIES[arch.embedding.model_type] = arch.embedding
    return arch


for _arch in (
    Architecture(
        "bert", "protbert", "mlm", "BERT masked LM (ProtBert)", _bert_config, "BertForMaskedLM",
        position_table=True, embedding=Family("protbert", "bert", "BertModel", True, True),
    ),
    Architecture(
        "albert", "protbert", "mlm", "ALBERT masked LM (ProtAlbert)", _albert_config, "AlbertForMaskedLM",
        supports_activation_checkpointing=False, position_table=True,
        embedding=Family("albert", "albert", "AlbertModel", True, True),
    ),
    Architecture(
        "esm", "esm", "mlm", "pre-LayerNorm BERT with rotary positions (ESM-2 layout)", _esm_config,
        "EsmForMaskedLM", unused_parameters=_esm_unused_parameters,
        embedding=Family("esm", "esm", "EsmModel", False, False),  # ESM-1b/ESM-2 folders too
    ),
    Architecture(
        "causal", "esm", "causal", "causal LM, pre-LN + rotary (GPT-NeoX class)", _causal_config,
        "GPTNeoXForCausalLM", embedding=Family("causal", "gpt_neox", "GPTNeoXModel", False, False),
    ),
    Architecture(
        "t5", "prott5", "span", "T5 span corruption, span length 1, full reconstruction (ProtT5)",
        _t5_config, "T5ForConditionalGeneration", forward_flops=t5_flops,
        embedding=Family("prott5", "t5", "T5EncoderModel", True, True),  # the ProtT5 encoder
    ),
    Architecture(
        "xlnet", "protxlnet", "plm", "XLNet permutation LM, two-stream attention (ProtXLNet)", _xlnet_config,
        "XLNetLMHeadModel", supports_activation_checkpointing=False, forward_flops=xlnet_flops,
        unused_parameters=_xlnet_unused_parameters, embedding=Family("xlnet", "xlnet", "XLNetModel", True, True),
    ),
    Architecture(
        "txl", "protbert", "causal", "Transformer-XL causal LM with segment memory (ProtTXL)", _txl_config,
        "ProtTXLForCausalLM", module="protlm.models.transfo_xl", forward_flops=txl_flops,
        flop_arguments=_txl_flop_arguments,  # model_type prottxl: protlm.embed.backends.prottxl
    ),
):
    register_architecture(_arch)
del _arch


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name`` (plug-ins' included: their entry points are loaded first)."""
    from protlm.plugins import hint, load_plugins

    load_plugins()
    if name not in ARCHITECTURES:
        raise ConfigError(f"config model.arch: unknown architecture {name!r}; choose one of "
                          f"{sorted(ARCHITECTURES)}{hint()}")
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
