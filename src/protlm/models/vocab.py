"""Token vocabularies of the protein LM families, and the bridge from prepared shards to them.

Prepared shards store residues as indices into :data:`protlm.data.alphabet.ALPHABET`. A model
family has its own vocabulary; :meth:`Vocab.residue_lut` maps shard indices to model token ids
with one array lookup, so training never goes through a Python tokenizer.

The layouts are the public ones, so that checkpoints interoperate:

* ``esm`` — ESM-1b/ESM-2 (33 tokens, ``<cls> seq <eos>``, no spaces between residues);
* ``protbert`` — ProtBert/ProtBert-BFD/ProtAlbert (30 tokens, ``[CLS] seq [SEP]``, residues
  separated by spaces in text);
* ``prott5`` — ProtT5 (28 tokens + 100 sentinels ``<extra_id_N>``, ``seq </s>``, residues
  separated by spaces in text);
* ``protxlnet`` — ProtXLNet: XLNet's special tokens (``<pad> <unk> <s> </s> <cls> <sep> <mask>``)
  and ProtBert's 25 residues, ``seq <sep> <cls>`` (XLNet puts its classification token last),
  residues separated by spaces in text. The special-token names and the ``seq <sep> <cls>``
  layout are XLNet's; the ids are protlm's own (the published ProtXLNet ships a SentencePiece
  model that is not available offline), and the tokenizer is saved with every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from protlm.data.alphabet import ALPHABET

ESM_TOKENS = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>"
).split()
PROTBERT_TOKENS = "[PAD] [UNK] [CLS] [SEP] [MASK] L A G V E S I K R D T P N Q F Y M H C W X U B Z O".split()
PROTXLNET_TOKENS = "<pad> <unk> <s> </s> <cls> <sep> <mask>".split() + PROTBERT_TOKENS[5:]
PROTT5_RESIDUES = "A L G V S R E D T I P K F Q N Y M H W C X B O U Z".split()
PROTT5_TOKENS = ["<pad>", "</s>", "<unk>"] + ["\u2581" + r for r in PROTT5_RESIDUES] + [
    f"<extra_id_{i}>" for i in range(99, -1, -1)
]


@dataclass(frozen=True)
class Vocab:
    """One family's vocabulary and special-token conventions."""

    family: str
    tokens: tuple[str, ...]
    pad: str
    unk: str
    mask: str | None
    bos: str | None  # token put before the residues (CLS), if any
    eos: str | None  # token put after the residues (EOS/SEP), if any
    residue_prefix: str = ""  # prefix of residue tokens in the vocabulary (ProtT5's "▁")
    space_separated: bool = False  # text form the family's tokenizer expects
    tail: tuple[str, ...] = ()  # tokens after ``eos`` (XLNet's final ``<cls>``)

    @cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def id(self, token: str) -> int:
        return self.index[token]

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return self.id(self.pad)

    @property
    def mask_id(self) -> int:
        if self.mask is None:
            raise ValueError(f"the {self.family} vocabulary has no mask token")
        return self.id(self.mask)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos is None else self.id(self.bos)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos is None else self.id(self.eos)

    @property
    def n_special(self) -> int:
        return int(self.bos is not None) + int(self.eos is not None) + len(self.tail)

    @property
    def tail_ids(self) -> list[int]:
        return [self.id(t) for t in self.tail]

    @property
    def special_ids(self) -> set[int]:
        """Ids of the tokens ``encode`` puts around the residues."""
        return {i for i in (self.bos_id, self.eos_id) if i is not None} | set(self.tail_ids)

    @cached_property
    def residue_lut(self) -> np.ndarray:
        """``lut[i]`` is the token id of ``ALPHABET[i]`` (int64, indexable by uint8 shards)."""
        return np.array([self.id(self.residue_prefix + r) for r in ALPHABET], dtype=np.int64)

    @cached_property
    def residue_ids(self) -> np.ndarray:
        """Token ids of the 20 standard amino acids (the replacement pool of BERT masking)."""
        return self.residue_lut[:20].copy()

    def encode(self, sequence: str) -> list[int]:
        """Token ids of a cleaned sequence with the family's special tokens (reference path)."""
        ids = [self.id(self.residue_prefix + r) for r in sequence]
        if self.bos is not None:
            ids.insert(0, self.bos_id)
        if self.eos is not None:
            ids.append(self.eos_id)
        ids.extend(self.tail_ids)
        return ids


VOCABS: dict[str, Vocab] = {
    "esm": Vocab("esm", tuple(ESM_TOKENS), pad="<pad>", unk="<unk>", mask="<mask>", bos="<cls>", eos="<eos>"),
    "protbert": Vocab(
        "protbert", tuple(PROTBERT_TOKENS), pad="[PAD]", unk="[UNK]", mask="[MASK]", bos="[CLS]", eos="[SEP]",
        space_separated=True,
    ),
    "prott5": Vocab(
        "prott5", tuple(PROTT5_TOKENS), pad="<pad>", unk="<unk>", mask="<extra_id_0>", bos=None, eos="</s>",
        residue_prefix="\u2581", space_separated=True,
    ),
    "protxlnet": Vocab(
        "protxlnet", tuple(PROTXLNET_TOKENS), pad="<pad>", unk="<unk>", mask="<mask>", bos=None, eos="<sep>",
        space_separated=True, tail=("<cls>",),
    ),
}


def build_tokenizer(family: str):
    """A ``transformers`` tokenizer of the family's public layout (what ``save_pretrained`` writes
    next to a checkpoint, and what ``AutoTokenizer.from_pretrained`` loads back)."""

    vocab = VOCABS[family]
    if family == "esm":
        # A fast (tokenizers) tokenizer with ESM-2's ids: one token per character, <cls> … <eos>.
        # Saved as tokenizer.json; it gives exactly EsmTokenizer's ids (tests compare them).
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(vocab.index), unk_token=vocab.unk))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.post_processor = processors.TemplateProcessing(
            single="<cls> $A <eos>", pair="<cls> $A <eos> $B <eos>",
            special_tokens=[("<cls>", vocab.bos_id), ("<eos>", vocab.eos_id)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, cls_token="<cls>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
            mask_token="<mask>", model_max_length=100_000,
        )
    if family == "protbert":
        from transformers import BertTokenizer

        return BertTokenizer(vocab=dict(vocab.index), do_lower_case=False, model_max_length=100_000)
    if family == "prott5":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(vocab.index), unk_token=vocab.unk))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab.eos_id)]
        )
        sentinels = [t for t in vocab.tokens if t.startswith("<extra_id_")]
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
            additional_special_tokens=sentinels, model_max_length=100_000,
        )
    if family == "protxlnet":
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(vocab.index), unk_token=vocab.unk))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(
            single="$A <sep> <cls>", pair="$A <sep> $B <sep> <cls>",
            special_tokens=[("<sep>", vocab.eos_id), ("<cls>", vocab.id("<cls>"))],
        )
        # XLNet pads on the left (its <cls> is the last token); attention masks make either side exact.
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
            cls_token="<cls>", sep_token="<sep>", mask_token="<mask>", padding_side="left",
            model_max_length=100_000,
        )
    raise KeyError(family)


#: ``tokenizer_class`` that transformers 5 writes for a fast tokenizer; 4.x does not know it.
_V5_FAST_CLASS = "TokenizersBackend"


def esm_vocab_txt(family: str = "esm") -> str:
    """``vocab.txt`` of a family's vocabulary, one token per line in id order (what
    ``EsmTokenizer`` reads), generated from :data:`VOCABS`."""
    return "".join(t + "\n" for t in VOCABS[family].tokens)


def build_esm_tokenizer(folder):
    """An ``EsmTokenizer`` on the ESM vocabulary, its ``vocab.txt`` written into ``folder``."""
    from pathlib import Path

    from transformers import EsmTokenizer

    vocab_file = Path(folder) / "vocab.txt"
    vocab_file.write_text(esm_vocab_txt())
    return EsmTokenizer(vocab_file=str(vocab_file), model_max_length=100_000)


def save_tokenizer(family: str, folder, model_type: str | None = None) -> None:
    """Save the family's tokenizer next to a checkpoint so that transformers 4.x and 5.x load it,
    and tools that pick the model class from the tokenizer class pick the right one.

    biotrainer 2.1.1 (``biotrainer/embedding/services/embedding_service_factory.py``,
    ``_determine_tokenizer_and_model``) loads a local folder with ``AutoTokenizer`` and chooses
    by the tokenizer's class name: ``t5`` → T5EncoderModel, ``esm`` → EsmModel, ``bert`` →
    BertForMaskedLM, anything else → T5EncoderModel. So:

    * an ESM model (``model_type == "esm"``): ``EsmTokenizer`` + ``vocab.txt`` (generated from
      :data:`VOCABS`; the same ids as the fast tokenizer, tests compare them) → biotrainer's
      EsmModel;
    * every other fast tokenizer (the causal model on the ESM vocabulary, ProtT5, XLNet):
      ``tokenizer.json`` labelled ``PreTrainedTokenizerFast`` (transformers 5 would write
      ``TokenizersBackend``, which 4.x cannot load). Never ``EsmTokenizer`` for a non-ESM model:
      biotrainer would then build a random EsmModel from a GPT-NeoX config;
    * ProtBert/ALBERT: ``BertTokenizer`` (loads in both).

    ``model_type`` is the checkpoint's ``config.json`` ``model_type``; without it an ``esm``
    family vocabulary is saved the fast way (it may belong to a causal model).
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if family == "esm" and model_type == "esm":
        for stale in ("tokenizer.json",):
            (folder / stale).unlink(missing_ok=True)
        build_esm_tokenizer(folder).save_pretrained(folder)
    else:
        build_tokenizer(family).save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    changed = False
    if config.get("tokenizer_class") == _V5_FAST_CLASS:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    if isinstance(config.get("extra_special_tokens"), list):
        # 5.x writes ProtT5's sentinels as a list under extra_special_tokens; 4.x expects a dict
        # there and fails; both read the list under additional_special_tokens
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
        changed = True
    if changed:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def legacy_config_keys(config: dict) -> dict:
    """Keys that transformers 4.x reads for a model whose 5.x config holds them elsewhere:
    GPT-NeoX's ``rotary_pct``/``rotary_emb_base`` (5.x: ``rope_parameters``). Without them 4.57
    assumes rotary_pct 0.25 and computes different outputs."""
    extra = {}
    if config.get("model_type") == "gpt_neox":
        rope = config.get("rope_parameters") or {}
        extra["rotary_pct"] = float(rope.get("partial_rotary_factor", config.get("rotary_pct", 1.0)))
        extra["rotary_emb_base"] = float(rope.get("rope_theta", config.get("rotary_emb_base", 10000.0)))
    return extra
