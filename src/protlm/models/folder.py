"""How protlm writes a model as a Hugging Face folder, in the canonical layout every client reads.

transformers 5.x saves LayerNorm weights as ``gamma``/``beta`` and ESM's rotary ``inv_freq`` buffer
as one wildcard key (``esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq``); the hub's
ESM-2 files, transformers 4.x, fair-esm's conversion and esm.cpp expect ``weight``/``bias`` and one
key per layer. :func:`save_hf_model` is the one way protlm writes model weights (pretraining
checkpoints, fine-tuned LMs): ``save_pretrained`` (safetensors), then the canonical names, file
modes and the config keys transformers 4.x needs (docs/interop.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from protlm.errors import ConfigError
from protlm.io.atomic import default_mode, write_text, write_with_path
from protlm.models.vocab import legacy_config_keys


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


#: transformers 5.x's save-time names → the canonical ones (LayerNorm ``weight``/``bias``).
_LEGACY_NORM = re.compile(r"(LayerNorm|layer_norm|layernorm)\.(gamma|beta)$")
_WILDCARD_LAYER = ".layer.*."


def canonical_key(key: str, config: dict) -> list[str]:
    """The canonical name(s) of one saved weight key: ``…LayerNorm.gamma`` → ``…LayerNorm.weight``
    (``beta`` → ``bias``); a ``.layer.*.`` wildcard key → one key per layer (``num_hidden_layers``)."""
    key = _LEGACY_NORM.sub(lambda m: f"{m.group(1)}.{'weight' if m.group(2) == 'gamma' else 'bias'}", key)
    if _WILDCARD_LAYER in key:
        layers = int(config.get("num_hidden_layers") or 0)
        if layers <= 0:
            raise ConfigError(f"weight key {key!r} names every layer, but config.json has no num_hidden_layers")
        return [key.replace(_WILDCARD_LAYER, f".layer.{i}.") for i in range(layers)]
    return [key]


def canonical_weights(folder: Path) -> bool:
    """Rewrite ``folder``'s safetensors weights (and the shard index, if any) with canonical key
    names (:func:`canonical_key`); tensors are unchanged (a wildcard key's tensor is copied to
    every layer). Returns whether anything changed. Each file is replaced atomically."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    changed = False
    renames: dict[str, list[str]] = {}
    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(str(weights), "pt") as fh:
            keys = list(fh.keys())
            names = {k: canonical_key(k, config) for k in keys}
            if all(v == [k] for k, v in names.items()):
                continue
            metadata = fh.metadata() or {}
            tensors = {}
            for k in keys:
                t = fh.get_tensor(k)
                for i, name in enumerate(names[k]):
                    tensors[name] = t if i == 0 else t.clone()
        if len(tensors) != sum(len(v) for v in names.values()):
            raise ConfigError(f"{weights}: two saved weights map to the same canonical name")
        write_with_path(weights, lambda tmp, t=tensors, m=metadata: save_file(t, tmp, metadata={"format": "pt", **m}))
        renames.update(names)
        changed = True
    index = folder / "model.safetensors.index.json"
    if renames and index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {new: shard for key, shard in data["weight_map"].items()
                              for new in renames.get(key, [key])}
        write_text(index, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return changed


def save_hf_model(model: torch.nn.Module, folder: Path, state_dict: dict | None = None) -> None:
    """``save_pretrained`` (safetensors) + canonical weight names (:func:`canonical_weights`) +
    the config keys transformers 4.x needs (:func:`protlm.models.vocab.legacy_config_keys`):
    the one way protlm writes a model's weights as a Hugging Face folder."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    unwrap(model).save_pretrained(folder, safe_serialization=True, **kwargs)
    canonical_weights(folder)
    for weights in folder.glob("*.safetensors"):
        default_mode(weights)  # safetensors writes 0600; every other file is 0644
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    extra = legacy_config_keys(config)
    if extra:
        config_path.write_text(json.dumps({**config, **extra}, indent=2, sort_keys=True) + "\n")
