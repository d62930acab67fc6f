"""Model families and their conventions, detected from a Hugging Face ``config.json``.

| family   | ``model_type``  | encoder class      | text given to the tokenizer   | specials around residues | rare residues        |
|----------|-----------------|--------------------|-------------------------------|--------------------------|----------------------|
| esm      | esm             | ``EsmModel``       | ``MKT`` (no spaces)           | ``<cls>`` … ``<eos>``    | kept (ESM has B/U/Z/O tokens) |
| protbert | bert            | ``BertModel``      | ``M K T`` (space-separated)   | ``[CLS]`` … ``[SEP]``    | U Z O B → X (ProtTrans) |
| albert   | albert          | ``AlbertModel``    | ``M K T``                     | ``[CLS]`` … ``[SEP]``    | U Z O B → X          |
| prott5   | t5              | ``T5EncoderModel`` | ``M K T``                     | … ``</s>``               | U Z O B → X          |
| xlnet    | xlnet           | ``XLNetModel``     | ``M K T``                     | … ``<sep> <cls>``        | U Z O B → X          |
| causal   | gpt_neox        | ``GPTNeoXModel``   | ``MKT``                       | ``<cls>`` … ``<eos>``    | kept                 |

The rows are the ``embedding`` fields of the pretraining architectures
(:mod:`protlm.models.architectures`), which fill :data:`FAMILIES`. Residues are turned into
token ids through a lookup table built from the model's own tokenizer (one array lookup per
protein instead of a Python tokenizer call); tests check that it gives exactly what
``tokenizer(text)`` gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protlm.data.alphabet import RARE_TO_X
from protlm.errors import InputError, model_label


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    encoder_class: str
    space_separated: bool
    map_rare: bool
    max_residues: int | None = None  # hard position limit (absolute position tables), per protein

    def text(self, sequence: str) -> str:
        if self.map_rare:
            sequence = sequence.translate(RARE_TO_X)
        return " ".join(sequence) if self.space_separated else sequence


#: Conventions by ``model_type``. Each entry is the ``embedding`` of a registered pretraining
#: family (:func:`protlm.models.architectures.register_architecture` adds it), so a family's
#: pretraining and embedding sides are one spec. Importing any ``protlm.models`` module runs the
#: package's ``__init__``, which imports the architectures and so fills this table; it serves
#: every checkpoint of these model types, also those protlm did not pretrain (ESM-1b/ESM-2,
#: ProtBert, ProtT5 folders).
FAMILIES: dict[str, Family] = {}


def read_config(model: str) -> dict:
    """``config.json`` of a local folder, or of a hub id (downloaded through huggingface_hub once
    :func:`protlm.io.resources.check_hub` finds the hub reachable or the id cached)."""
    path = Path(model)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{model_label()} {model}: "
                             "not a folder (a Hugging Face model folder or hub id is expected)")
        cfg = path / "config.json"
        if not cfg.exists():
            raise InputError(f"{model_label()} {model}: "
                             "no config.json in this folder; is it a Hugging Face model folder?")
    else:
        if model.count("/") != 1 or model.startswith((".", "/")):
            raise InputError(f"{model_label()} {model}: no such folder, and not a hub id of the form owner/name")
        from protlm.io.resources import check_hub

        check_hub(model)  # offline and not cached: one line now, not huggingface_hub's retries
        try:
            from huggingface_hub import hf_hub_download

            cfg = Path(hf_hub_download(model, "config.json"))
        except Exception as exc:  # offline, unknown repo, auth
            raise InputError(f"{model_label()} {model}: no such local folder, and the hub could not provide it "
                             f"({type(exc).__name__}); download it first or check the id") from None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{model_label()} {model}: "
                         f"config.json is not valid JSON ({exc.msg}, line {exc.lineno})") from None


def detect_family(config: dict, model: str) -> Family:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise InputError(f"{model_label()} {model}: model_type {model_type!r} is not a protein LM family protlm knows "
                         f"({known})")
    family = FAMILIES[model_type]
    if model_type in ("esm",) and config.get("position_embedding_type", "absolute") == "absolute":
        family = Family(family.name, family.model_type, family.encoder_class, family.space_separated, family.map_rare,
                        max_residues=int(config.get("max_position_embeddings", 1026)) - 4)  # ESM-1b: 1,022
    if model_type in ("bert", "albert"):
        family = Family(family.name, family.model_type, family.encoder_class, family.space_separated, family.map_rare,
                        max_residues=int(config.get("max_position_embeddings", 512)) - 2)
    return family


@dataclass
class TokenLayout:
    """How a cleaned residue string becomes token ids for one loaded tokenizer."""

    lut: np.ndarray  # byte value of a residue letter → token id (-1: not in the vocabulary)
    prefix: list[int]
    suffix: list[int]
    pad_id: int

    def encode(self, sequence: str) -> np.ndarray:
        ids = self.lut[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
        return np.concatenate([np.asarray(self.prefix, dtype=np.int64), ids, np.asarray(self.suffix, dtype=np.int64)])


def token_layout(tokenizer, family: Family) -> TokenLayout:
    """Learn the residue→id table and the special tokens from the tokenizer itself."""
    letters = "ACDEFGHIKLMNPQRSTVWYX" + ("" if family.map_rare else "BZUO")
    empty = tokenizer(family.text(""))["input_ids"]
    one = tokenizer(family.text("A"))["input_ids"]
    if len(one) != len(empty) + 1:
        raise InputError("the tokenizer does not map one residue to one token; is this a protein LM?")
    k = next((i for i in range(len(empty)) if empty[i] != one[i]), len(empty))
    prefix, suffix = one[:k], one[k + 1:]
    lut = np.full(256, -1, dtype=np.int64)
    for letter in letters:
        token_ids = tokenizer(family.text(letter))["input_ids"]
        inner = token_ids[len(prefix): len(token_ids) - len(suffix)]
        if len(inner) != 1:
            raise InputError(f"the tokenizer does not map residue {letter!r} to one token; is this a protein LM?")
        lut[ord(letter)] = inner[0]
    if family.map_rare:
        for letter in "UZOB":
            lut[ord(letter)] = lut[ord("X")]
    unk = tokenizer.unk_token_id
    residue_ids = lut[[ord(c) for c in "ACDEFGHIKLMNPQRSTVWY"]]
    if unk is not None and (residue_ids == unk).sum() > 2:
        raise InputError("the tokenizer maps the standard amino acids to its unknown token: not a protein LM")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenLayout(lut=lut, prefix=list(prefix), suffix=list(suffix), pad_id=int(pad))
