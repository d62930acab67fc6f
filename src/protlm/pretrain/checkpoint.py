"""Training checkpoints as standard Hugging Face folders plus the state needed to resume exactly.

``OUT/checkpoints/step-0000200/`` holds ``config.json``, ``model.safetensors`` and the tokenizer
files (any ``transformers`` user can ``from_pretrained`` it), ``protlm_pretrain.yaml`` (the
config that made it), ``trainer_state.pt`` (optimizer, scheduler, every process's RNG state;
tensors and plain containers only, read back with ``torch.load(weights_only=True)``, which
never unpickles arbitrary objects) and ``trainer_state.json`` (step, tokens, data position),
and, written last, ``checksums.json``: the XXH3-128 of every other file, checked on resume so that
damaged weights are one "damaged checkpoint" line, not a "training diverged" a step later
(checkpoints written before it existed resume unchecked). A checkpoint is written into a temporary folder, fsynced and renamed into place;
``OUT/checkpoints/latest`` names the newest complete one, so a kill at any moment leaves the
previous checkpoint intact; it names a folder directly inside ``OUT/checkpoints`` (a
``step-NNNNNNN`` one or ``best``), never a path, so a resume never continues another run. Rotation keeps the newest ``keep_checkpoints``; the checkpoint with
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
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from protlm.errors import ConfigError, InputError
from protlm.io.atomic import fsync_dir, fsync_tree
from protlm.io.checksums import xxh3_file
from protlm.models.folder import save_hf_model, unwrap
from protlm.models.vocab import save_tokenizer
from protlm.pretrain.distributed import DistEnv, barrier, gather_objects

#: Written last into every checkpoint: ``{"xxh3_128": {file name: digest}}`` of the other files.
CHECKSUMS = "checksums.json"
#: What ``OUT/checkpoints/latest`` may name: a folder of this run's checkpoints/, never a path.
_CHECKPOINT_NAME = re.compile(r"step-\d{7}|best")


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
            write_checksums(tmp)
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


def write_checksums(folder: Path) -> None:
    """Record the digest of every file of a checkpoint folder (its last file)."""
    digests = {f.name: xxh3_file(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps({"xxh3_128": digests}, indent=2))


def verify_checkpoint(path: Path) -> None:
    """Check a checkpoint's files against the digests recorded when it was saved (an InputError
    naming the first damaged file). Checkpoints written before digests were recorded pass."""
    path = Path(path)
    listing = path / CHECKSUMS
    if not listing.exists():
        return
    hint = (f"resume from an earlier checkpoint by writing its folder name (step-NNNNNNN or best) into "
            f"{path.parent / 'latest'}, or choose another --out")
    try:
        digests = json.loads(listing.read_text())["xxh3_128"]
        if not isinstance(digests, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{listing}: damaged checkpoint (unreadable file list); {hint}") from None
    for name, digest in digests.items():
        # plain file names only: the list must not make us read (or vouch for) files elsewhere
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise InputError(f"{listing}: damaged checkpoint (a listed file is not a plain name); {hint}")
        try:
            actual = xxh3_file(path / name)
        except OSError:
            raise InputError(f"{path / name}: damaged checkpoint (the file is missing or unreadable); {hint}") from None
        if actual != digest:
            raise InputError(f"{path / name}: damaged checkpoint (its content differs from the digest recorded "
                             f"when it was saved); {hint}")


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    try:
        name = pointer.read_bytes().decode("ascii").strip()
    except OSError as exc:
        raise InputError(f"{pointer}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        name = None
    if not name:
        raise InputError(f"{pointer}: empty or damaged; write the name of the checkpoint to resume from "
                         f"(a step-NNNNNNN folder of {pointer.parent}, or best) into it")
    if not _CHECKPOINT_NAME.fullmatch(name):
        # a path (relative or absolute) would resume another run, with this run's metrics
        raise InputError(f"{pointer} names {name[:80]!r}, not a checkpoint folder of this run; it must name a "
                         f"step-NNNNNNN folder (or best) directly inside {pointer.parent}")
    path = pointer.parent / name
    if path.is_symlink():
        raise InputError(f"{pointer} names {name}, which is a link, not a checkpoint folder of this run")
    if not (path / "trainer_state.json").exists():
        raise ConfigError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def _damaged(path: Path, what: str, exc: BaseException) -> InputError:
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return InputError(f"{path}: damaged checkpoint: cannot read {what} ({why}); resume from an earlier "
                      f"checkpoint by writing its folder name into {path.parent / 'latest'}, or choose another --out")


def load_checkpoint(path: Path, model, optimizer, scheduler, env: DistEnv) -> dict:
    """Restore a checkpoint (checked with :func:`verify_checkpoint` first by the trainer); a
    missing or unreadable file is one InputError naming it, never a traceback."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for name in ("config.json", "model.safetensors", "trainer_state.pt", "trainer_state.json"):
        if not (path / name).is_file():
            raise InputError(f"{path / name}: damaged checkpoint: the file is missing; resume from an earlier "
                             f"checkpoint by writing its folder name into {path.parent / 'latest'}")
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        int(state["step"]), int(state["tokens_seen"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(path, "trainer_state.json", exc) from None
    # Read the weights back through transformers itself: it maps the names it writes (ESM's
    # legacy LayerNorm gamma/beta, for example) back to the module's own parameter names.
    inner = unwrap(model)
    try:
        reference = type(inner).from_pretrained(path, attn_implementation="eager")
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as exc:
        raise _damaged(path, "config.json and model.safetensors", exc) from None
    model_sd = reference.state_dict()
    del reference
    try:
        # weights_only: tensors and plain containers, never arbitrary unpickled objects
        trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        optim_sd, sched_sd, rngs = trainer["optimizer"], trainer["scheduler"], trainer["rng"]
    except Exception as exc:  # noqa: BLE001 - torch reports a damaged archive as several types
        raise _damaged(path, "trainer_state.pt", exc) from None
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_state_dict(inner, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options)
    scheduler.load_state_dict(sched_sd)
    mine = rngs[env.rank] if env.rank < len(rngs) else rngs[0]
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and env.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], env.device)
    return state
