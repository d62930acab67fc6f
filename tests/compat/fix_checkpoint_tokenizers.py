"""Rewrite the tokenizer files (and GPT-NeoX's 4.x config keys) of pretrained checkpoint folders
the way :func:`protlm.pretrain.checkpoint.write_hf_folder` now writes them; weights untouched.

Checkpoints written before issue 15 carry ``tokenizer_class: TokenizersBackend`` (transformers
5's name, unknown to 4.x) and, for the causal model, no ``rotary_pct``/``rotary_emb_base``.
Used once on ``checkpoints/``:

    .venv/bin/python tests/compat/fix_checkpoint_tokenizers.py checkpoints/protlm-swissprot-*

It checks that ``model.safetensors`` is byte-identical before and after.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

from protlm.models.architectures import ARCHITECTURES
from protlm.models.vocab import legacy_config_keys, save_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fix(folder: Path) -> None:
    weights = folder / "model.safetensors"
    before = sha(weights)
    arch = yaml.safe_load((folder / "protlm_pretrain.yaml").read_text())["model"]["arch"]
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    extra = legacy_config_keys(config)
    if extra:
        config_path.write_text(json.dumps({**config, **extra}, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    save_tokenizer(ARCHITECTURES[arch].vocab.family, folder, model_type=config.get("model_type"))
    assert sha(weights) == before, f"{weights} changed"
    files = sorted(p.name for p in folder.iterdir())
    print(f"{folder}: {arch}, tokenizer {json.loads((folder / 'tokenizer_config.json').read_text())['tokenizer_class']}, "
          f"config keys added {sorted(extra)}; files {files}; weights sha256 {before[:16]}… unchanged")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        fix(Path(arg))
