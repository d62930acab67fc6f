"""The one loader of a Hugging Face protein LM (a local folder or a hub id).

Every part of protlm that needs an LM's weights — the embedder backend, contact prediction from
attention maps, the random-weight floor, the token-embedding map — calls :func:`load_hf_lm`. It
reads ``config.json``, detects the family (:mod:`protlm.models.families`), loads the tokenizer and
learns its token layout, and loads the encoder **from safetensors only** (a folder with only
``pytorch_model.bin`` is refused with what to do; ``trust_remote_code`` stays off). Weights that
do not fit the architecture config.json describes are refused (:func:`check_loading_info`):
transformers would fill the missing ones with random numbers and drop the extra ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protlm.errors import InputError, model_label
from protlm.models.families import Family, TokenLayout, detect_family, read_config, token_layout


#: ``random-init:PATH`` names PATH's architecture with fresh random weights: the floor that shows
#: how much of a result comes from training rather than from the architecture and the pipeline.
RANDOM_PREFIX = "random-init:"


def parse_lm_spec(spec: str) -> tuple[str, bool]:
    """``PATH`` → (PATH, False); ``random-init:PATH`` → (PATH, True)."""
    spec = str(spec)
    if spec.startswith(RANDOM_PREFIX):
        return spec[len(RANDOM_PREFIX):], True
    return spec, False


@dataclass
class LoadedLM:
    name: str  # what was asked for (``random-init:`` kept)
    source: str  # the folder or hub id
    model: object  # a transformers PreTrainedModel (the family's encoder class), eval mode
    tokenizer: object
    config: dict
    family: Family
    layout: TokenLayout

    @property
    def layers(self) -> int:
        c = self.config
        return int(c.get("num_hidden_layers") or c.get("num_layers") or c.get("n_layer") or 0)

    @property
    def heads(self) -> int:
        c = self.config
        return int(c.get("num_attention_heads") or c.get("num_heads") or c.get("n_head") or 0)

    @property
    def n_maps(self) -> int:
        return self.layers * self.heads

    @property
    def width(self) -> int:
        c = self.config
        return int(c.get("hidden_size") or c.get("d_model") or 0)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # its load report lists the LM head as unused; check_loading_info judges it


def check_safetensors(source: str, what: str | None = None) -> None:
    """Refuse a local folder without safetensors weights (protlm never unpickles weights)."""
    what = what or model_label()
    path = Path(source)
    if not path.is_dir():
        return
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("pytorch_model*.bin")) or any(path.glob("*.pt")):
        raise InputError(f"{what} {source}: holds only pickled PyTorch weights (pytorch_model.bin); protlm loads "
                         f"safetensors only. Convert once in a trusted environment: "
                         f"AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")
    raise InputError(f"{what} {source}: no *.safetensors weights in this folder")


#: Modules of an encoder class that are task heads, not part of the encoder's forward pass
#: (BERT/ALBERT/ESM's pooler, ESM's contact-prediction head): a checkpoint may lack their weights.
OPTIONAL_MODULES = ("pooler", "contact_head")


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def weight_problems(model, info: dict) -> tuple[list[str], list[str]]:
    """(missing, unexpected): the weights of ``info`` (transformers' ``output_loading_info``, after
    its own rules — tied weights, ``_keys_to_ignore_on_load_missing``/``_unexpected``, old buffer
    names — are applied) that make the loaded ``model`` untrustworthy.

    Missing: a learned parameter the checkpoint does not hold (transformers fills it with random
    numbers), outside :data:`OPTIONAL_MODULES`; a missing buffer (``position_ids``, rotary
    ``inv_freq``) is computed from config.json and is fine. Unexpected: a checkpoint tensor that
    names a module of the loaded model (``encoder.layer.3.*`` for a 3-layer model, a renamed
    weight in a layer) — the weights were written for another shape; a task head's tensors
    (``lm_head.*``, ``cls.*``, a T5 decoder, a pooler the encoder is loaded without) are fine."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    missing = [k for k in info.get("missing_keys", ()) if k in params and k.split(".")[0] not in OPTIONAL_MODULES]
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    tops = {name for name, _ in model.named_children()}
    tops |= {name for name, _ in model.named_parameters(recurse=False)}
    tops |= {name for name, _ in model.named_buffers(recurse=False)}
    buffers = {name for name, _ in model.named_buffers()}  # non-persistent ones too (computed from config.json)
    unexpected = []
    for key in info.get("unexpected_keys", ()):
        inner = key[len(prefix):] if prefix != "." and key.startswith(prefix) else key
        if inner in buffers or inner.rsplit(".", 1)[-1] in ("position_ids", "inv_freq"):
            continue  # older checkpoints saved buffers (BERT's position_ids, rotary inv_freq) that are now computed
        if inner.split(".")[0] in tops:
            unexpected.append(key)
    missing += [k if isinstance(k, str) else str(k[0]) for k in info.get("mismatched_keys", ())]  # re-initialised
    return sorted(missing), sorted(unexpected)


def check_loading_info(model, info: dict, source: str, what: str | None = None) -> None:
    """Refuse a checkpoint whose weights do not fit the architecture config.json describes
    (:func:`weight_problems`): transformers would run it with random weights where they are
    missing, or drop weights that belong to the model."""
    what = what or model_label()
    missing, unexpected = weight_problems(model, info)
    if not missing and not unexpected:
        return
    name = type(model).__name__
    needed = {n for n, _ in model.named_parameters(remove_duplicate=False) if n.split(".")[0] not in OPTIONAL_MODULES}
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(needed)} weights are missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors in the file do not belong to it ({_names(unexpected)})")
    hint = ("; the file holds none of its weights under the names it expects: is config.json's model_type right?"
            if needed and needed <= set(missing) else "; the weights were saved for another shape or are damaged")
    raise InputError(f"{what} {source}: the weights do not fit the {name} that config.json describes: "
                     f"{'; '.join(parts)}{hint}")


def load_hf_lm(spec: str, *, dtype=None, attention: str = "sdpa", seed: int = 0, what: str | None = None,
               family: Family | None = None, model_class=None) -> LoadedLM:
    """Load the encoder (the family's encoder class) of a folder or hub id, in eval mode on the CPU.

    ``attention``: "sdpa" (fast, falls back to eager for classes without it) or "eager" (needed for
    attention maps). ``random-init:PATH``: PATH's architecture with random weights (torch seed
    ``seed``). ``family`` and ``model_class`` are for families protlm defines itself (a backend
    file passes its own, e.g. ProtTXL), instead of detecting them from config.json.
    """
    what = what or model_label()
    import torch
    import transformers

    _quiet_transformers()
    source, random_init = parse_lm_spec(spec)
    config = read_config(source)
    family = family or detect_family(config, source)
    if not random_init:
        check_safetensors(source, what)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        raise InputError(f"{what} {source}: the tokenizer could not be loaded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    layout = token_layout(tokenizer, family)
    cls = model_class or getattr(transformers, family.encoder_class)
    extra = {"add_pooling_layer": False} if family.model_type in ("esm", "bert", "albert") else {}
    dtype = dtype or torch.float32
    try:
        if random_init:
            cfg = transformers.AutoConfig.from_pretrained(source, trust_remote_code=False)
            torch.manual_seed(seed)
            attn = {"attn_implementation": "eager"} if attention == "eager" else {}
            model = cls._from_config(cfg, dtype=dtype, **attn, **extra)
        else:
            kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False, output_loading_info=True,
                          **extra)
            try:
                model, info = cls.from_pretrained(source, attn_implementation=attention, **kwargs)
            except (ValueError, ImportError):  # a class without SDPA
                model, info = cls.from_pretrained(source, attn_implementation="eager", **kwargs)
    except OSError as exc:
        raise InputError(f"{what} {source}: the weights could not be loaded "
                         f"({str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:  # corrupt safetensors, shape mismatch with config.json
        raise InputError(f"{what} {source}: the weights could not be loaded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not random_init:
        check_loading_info(model, info, source, what)
    model.eval()
    return LoadedLM(name=str(spec), source=source, model=model, tokenizer=tokenizer, config=config, family=family, layout=layout)


#: The language-model head of each family protlm reads logits from: (transformers class holding
#: encoder + head, the head's attribute in it). Applied to the encoder's last hidden state it gives
#: the model's token scores at every position (masked-LM scores for the bidirectional families,
#: next-token scores for the causal one). T5 has no per-position LM head on its encoder.
LM_HEADS = {
    "esm": ("EsmForMaskedLM", "lm_head"),
    "bert": ("BertForMaskedLM", "cls"),
    "albert": ("AlbertForMaskedLM", "predictions"),
    "gpt_neox": ("GPTNeoXForCausalLM", "lm_head"),
    "xlnet": ("XLNetLMHeadModel", "lm_loss"),
}


def load_lm_head(spec: str, family: Family, *, dtype=None, seed: int = 0, what: str | None = None):
    """The LM head of a folder (safetensors; tied output weights tied as transformers ties them), in
    eval mode on the CPU. A folder whose weights hold no head (an encoder saved alone) is refused:
    transformers would fill it with random numbers."""
    what = what or model_label()
    import torch
    import transformers

    from protlm.errors import ConfigError

    if family.model_type not in LM_HEADS:
        raise ConfigError(f"{family.name}: this family has no per-residue LM head protlm reads logits from "
                          f"(offered for {', '.join(sorted(LM_HEADS))} and UniRep)")
    cls_name, attr = LM_HEADS[family.model_type]
    cls = getattr(transformers, cls_name)
    source, random_init = parse_lm_spec(spec)
    dtype = dtype or torch.float32
    try:
        if random_init:
            torch.manual_seed(seed)
            full = cls._from_config(transformers.AutoConfig.from_pretrained(source, trust_remote_code=False),
                                    dtype=dtype)
            missing = []
        else:
            full, info = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, trust_remote_code=False,
                                             output_loading_info=True)
            missing = [k for k in info.get("missing_keys", []) if k.split(".")[0] == attr]
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {source}: the LM head could not be loaded "
                         f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    if missing:
        raise InputError(f"{what} {source}: the folder's weights hold no LM head ({', '.join(sorted(missing)[:3])} "
                         f"missing): logits need the model saved with its head ({cls_name})")
    head = getattr(full, attr)
    head.eval()
    return head
