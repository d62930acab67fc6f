"""A LoRA adapter folder (peft's format) as an embedder: its base model with the adapter merged.

``protlm train`` with ``finetune.method: lora`` writes the adapter into the head folder's ``lm/``
(``adapter_config.json`` + ``adapter_model.safetensors``, the format ``PeftModel.from_pretrained``
reads). Given such a folder, this backend loads the base model named by
``base_model_name_or_path`` (a local folder or hub id, through the ordinary backend of its
family), applies the adapter with peft and merges it into the weights (inference then costs what
the base model costs). The fingerprint is the base model's and the adapter weights' checksum.
"""

from __future__ import annotations

import json
from pathlib import Path

from protlm.embed.backend import Backend, folder_weights_sha256
from protlm.embed.backends.hf import HFBackend
from protlm.embed.backends.prottxl import ProtTXLBackend
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError, model_label

ADAPTER_CONFIG = "adapter_config.json"


def read_adapter_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{model_label()} {folder}: {ADAPTER_CONFIG} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("base_model_name_or_path"), str):
        raise InputError(f"{model_label()} {folder}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    if not any(folder.glob("adapter_model*.safetensors")):
        raise InputError(f"{model_label()} {folder}: no adapter_model.safetensors in this adapter folder (protlm loads "
                         f"safetensors only)")
    return cfg


def base_model(folder: Path) -> str:
    """The adapter's base model by protlm's one naming rule (:func:`protlm.io.resources.model_source`):
    a folder, a bundled checkpoint, or a hub id — which, when the hub cannot be asked and the id is
    not cached, fails at once with one line (as ``--model HUB_ID`` does) instead of
    huggingface_hub's retries."""
    from protlm.io.resources import is_hub_id, model_source

    base = read_adapter_config(folder)["base_model_name_or_path"]
    what = f"{model_label()} {folder}: the adapter's base model"
    source = model_source(base, what)
    if source == base and not Path(base).exists() and not is_hub_id(base):
        raise InputError(f"{what} {base!r} is neither a folder here, a bundled checkpoint nor a hub id")
    return source


class LoRABackend(HFBackend):
    """The base model's HF backend with a peft LoRA adapter merged into its weights."""

    def __init__(self, folder: str, options: EmbedOptions):
        from peft import PeftModel

        if options.int8:
            raise ConfigError("--int8 with a LoRA adapter: merge it first (protlm finetune-merge ADAPTER --out DIR), "
                              "then embed DIR with --int8")
        path = Path(folder)
        base = base_model(path)
        super().__init__(base, options)
        self.base_fingerprint = super().fingerprint()
        try:
            peft_model = PeftModel.from_pretrained(self.model, str(path), is_trainable=False)
        except Exception as exc:  # shapes that do not fit the base, a damaged file
            raise InputError(f"{model_label()} {folder}: "
                             f"the adapter could not be applied to {base} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        merged = peft_model.merge_and_unload()
        merged.eval()
        self.model = merged
        self.lm.model = merged
        if self.device == "cpu":
            self._cpu_model = merged
        if self._compiled is not None:  # its weight copies were taken before the merge
            from protlm.embed.packed import CompiledESM

            self._compiled = CompiledESM(merged, self._compiled.dtype)
        self.adapter_sha = folder_weights_sha256(path)
        self.base = base
        self.source = str(folder)

    def describe(self) -> dict:
        return {**super().describe(), "base_model": self.base}

    def fingerprint(self) -> str:
        return f"{self.base_fingerprint}+lora:{self.adapter_sha}"


class LoRATXLBackend(LoRABackend, ProtTXLBackend):
    """A ProtTXL base (its segment walk with memory) with the adapter merged."""


def adapter_backend(folder: str, options: EmbedOptions) -> LoRABackend:
    """The backend of an adapter folder: its base model's family decides the forward pass."""
    base = Path(base_model(Path(folder)))
    model_type = None
    if (base / "config.json").is_file():
        try:
            model_type = json.loads((base / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
    return (LoRATXLBackend if model_type == "prottxl" else LoRABackend)(folder, options)


@register(marker=ADAPTER_CONFIG, help="a LoRA adapter folder (peft's format): its base model with the adapter merged")
def _adapter(source: str, options: EmbedOptions) -> Backend:
    return adapter_backend(source, options)
