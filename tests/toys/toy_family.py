"""A toy pretraining family in one file: ``toy_bert``, a BERT masked LM with ReLU feed-forward
layers and one token type (a protein is one segment), on ProtBert's vocabulary, with its own
FLOP count: protlm's shared transformer count plus the MLM head's transform (a hidden × hidden
dense layer at every token), which the shared count leaves out.

Importing this file registers the family; nothing else in protlm is changed. Its checkpoints are
ordinary ``bert`` folders, so ``transformers`` loads them and ``protlm embed`` reads them with the
``bert`` family's conventions (``embedding`` stays None: the ``bert`` architecture provides them).
"""

from __future__ import annotations

import numpy as np

from protlm.models.architectures import Architecture, ModelSpec, register_architecture, transformer_flops
from protlm.models.vocab import Vocab


def toy_config(spec: ModelSpec, vocab: Vocab):
    from transformers import BertConfig

    s = spec.resolved()
    return BertConfig(
        vocab_size=vocab.size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=s["ffn"], hidden_act="relu", type_vocab_size=1,
        hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.attention_dropout,
        max_position_embeddings=spec.max_positions, pad_token_id=vocab.pad_id,
    )


def toy_flops(lengths: np.ndarray, *, layers: int, hidden: int, ffn: int, vocab: int, **_other_families_args) -> float:
    """The shared count plus the MLM head's hidden × hidden transform at every token."""
    shared = transformer_flops(lengths, layers=layers, hidden=hidden, ffn=ffn, vocab=vocab)
    return shared + 2.0 * hidden * hidden * float(np.sum(lengths))


TOY = register_architecture(Architecture(
    name="toy_bert", family="protbert", objective="mlm",
    description="toy: BERT masked LM with ReLU feed-forward layers and one token type",
    make_config=toy_config, model_class="BertForMaskedLM", forward_flops=toy_flops,
    position_table=True,  # BERT's absolute positions: crops must fit model.max_positions
))
