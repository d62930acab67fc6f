"""Training checkpoints as standard Hugging Face folders plus the state needed to resume exactly.

``OUT/checkpoints/step-0000200/`` holds ``config.json``, ``model.safetensors`` and the tokenizer
files (any ``transformers`` user can ``from_pretrained`` it), ``protlm_pretrain.yaml`` (the
config that made it), ``trainer_state.pt`` (optimizer, scheduler, every process's RNG state;
tensors and plain containers only, read back with ``torch.load(weights_only=True)``, which
never unpickles arbitrary objects) and ``trainer_state.json`` (step, tokens, data position).
A checkpoint is written into a temporary folder, fsynced and renamed into place;
``OUT/checkpoints/latest`` names the newest complete one, so a kill at any moment leaves the
previous checkpoint intact. Rotation keeps the newest ``keep_checkpoints``; the checkpoint with
the best validation loss so far is also kept as ``OUT/checkpoints/best`` (outside rotation).
A full disk during a save is one clear error naming the folder; the half-written temporary
folder is removed.

The weights are written in the canonical (hub) layout whatever ``transformers`` version saves
them (:func:`canonical_weights`): transformers 5.x writes an ESM model's LayerNorms as
``gamma``/``beta`` and its rotary ``inv_freq`` as one wildcard key
(``esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq``); the hub's ESM-2 files,
transformers 4.x, fair-esm conversion scripts and esm.cpp expect ``weight``/``bias`` and one
``inv_freq`` per layer, and transformers 5.x reads that layout too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from protlm.errors import ConfigError, InputError
from protlm.io.atomic import fsync_dir, fsync_tree
from protlm.models.folder import save_hf_model, unwrap
from protlm.models.vocab import save_tokenizer
from protlm.pretrain.distributed import DistEnv, barrier, gather_objects


def rng_state(env: DistEnv) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if env.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(env.device)
    return state


def write_hf_folder(folder: Path, model: torch.nn.Module, state_dict: dict, family: str, config_yaml: str) -> None:
    """Write a plain Hugging Face model folder (weights in safetensors with canonical names,
    tokenizer files) that transformers 4.x and 5.x both load, and that biotrainer's loader maps to
    the right model class where it can (see :func:`protlm.models.vocab.save_tokenizer`)."""

    folder = Path(folder)
    save_hf_model(model, folder, state_dict)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    save_tokenizer(family, folder, model_type=model_type)
    (folder / "protlm_pretrain.yaml").write_text(config_yaml)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, env: DistEnv, *, family: str,
                    config_yaml: str, state: dict, keep: int, name: str | None = None) -> Path | None:
    """Every process must call this (state dicts are gathered); process 0 writes.

    ``name`` (e.g. ``"best"``): write ``OUT/checkpoints/<name>`` instead of ``step-N``, without
    moving ``latest`` or rotating."""

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(unwrap(model), optimizer, options=options)
    rngs = gather_objects(rng_state(env), env)
    path = None
    if env.is_main:
        root = out / "checkpoints"
        folder = name or f"step-{step:07d}"
        tmp = root / f".{folder}.tmp"
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            write_hf_folder(tmp, model, model_sd, family, config_yaml)
            torch.save({"optimizer": optim_sd, "scheduler": scheduler.state_dict(), "rng": rngs},
                       tmp / "trainer_state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
            fsync_tree(tmp)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            why = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            last = root / "latest"
            kept = f"; {last} still names the last complete one" if last.exists() else ""
            raise InputError(f"{root}: cannot write checkpoint {folder} ({why}){kept}; free space and "
                             "rerun with --resume") from None
        path = root / folder
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        fsync_dir(root)
        if name is None:
            pointer = root / ".latest.tmp"
            with open(pointer, "w") as fh:
                fh.write(folder + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(pointer, root / "latest")
            fsync_dir(root)
            # rotation by write time, never the one just written: after a resume from an earlier
            # checkpoint (e.g. `best`) the abandoned later step folders go first, not the new one
            others = sorted((p for p in root.glob("step-*") if p.is_dir() and p != path),
                            key=lambda p: (p.stat().st_mtime_ns, p.name))  # ties (coarse clocks): by step
            for old in others[:max(len(others) - (keep - 1), 0)]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return path


def best_checkpoint(out: Path) -> tuple[Path, dict] | None:
    """``OUT/checkpoints/best`` and its trainer state (step, ``val_loss``), if there is one."""
    path = Path(out) / "checkpoints" / "best"
    try:
        return path, json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "trainer_state.json").exists():
        raise ConfigError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, env: DistEnv) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # Read the weights back through transformers itself: it maps the names it writes (ESM's
    # legacy LayerNorm gamma/beta, for example) back to the module's own parameter names.
    inner = unwrap(model)
    reference = type(inner).from_pretrained(path, attn_implementation="eager")
    model_sd = reference.state_dict()
    del reference
    trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_state_dict(inner, optimizer, model_state_dict=model_sd,
                   optim_state_dict=trainer["optimizer"], options=options)
    scheduler.load_state_dict(trainer["scheduler"])
    rngs = trainer["rng"]
    mine = rngs[env.rank] if env.rank < len(rngs) else rngs[0]
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and env.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], env.device)
    return json.loads((path / "trainer_state.json").read_text())
