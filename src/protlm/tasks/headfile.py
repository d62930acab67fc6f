"""Reading a head folder someone else may have edited: every size is checked before anything is
allocated, and every problem is one readable line (:class:`~protlm.errors.InputError`).

``head.json`` must be a mapping with the fields :func:`protlm.tasks.train.save_head` writes;
``head.safetensors`` must be a safetensors file whose header fits the file and whose tensors have
exactly the shapes of the head ``head.json`` describes. The shapes are compared on torch's
``meta`` device (no memory), so a ``dim`` of 10⁹ is an error, not a 128 GB allocation.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from protlm.errors import InputError

MAX_DIM = 1 << 20  # no protein LM has a wider embedding
MAX_HIDDEN = 1 << 16
MAX_CLASSES = 1 << 16
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_head_json(folder: Path, name: str = "head.json") -> dict:
    path = folder / name
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"--head {folder}: {name} is not UTF-8 text") from None
    except ValueError as exc:
        raise InputError(f"--head {folder}: {name} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"--head {folder}: cannot read {name} ({exc.strerror})") from None
    if not isinstance(info, dict):
        raise InputError(f"--head {folder}: {name} must hold a JSON object, not a {type(info).__name__}")
    info = upgrade_contact_head(info)
    if not isinstance(info.get("config"), dict):
        raise InputError(f"--head {folder}: {name} field 'config' must be a dict")
    dim = info.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise InputError(f"--head {folder}: {name} field 'dim' must be an integer in [1, {MAX_DIM}], not {dim!r}")
    return info  # what decoding needs (classes, normalisation, …) the head's protocol checks (check_info)


def read_card(where: Path, name: str = "card.json") -> dict:
    """A head folder's model card (``card.json``, written for shipped predictors), or one clear
    line when it is not a JSON object with a ``files`` mapping."""
    try:
        info = json.loads((where / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where / name}: unreadable model card ({type(exc).__name__}: {exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("files", {}), dict):
        raise InputError(f"{where / name}: not a model card (a JSON object with a 'files' mapping is expected)")
    return info


def check_card_files(where: Path, info: dict) -> None:
    """The head's files are the ones its model card describes (SHA-256 digests)."""
    from protlm.io.checksums import sha256_file

    for fname, digest in info.get("files", {}).items():
        path = where / fname
        if not path.is_file() or sha256_file(path) != digest:
            raise InputError(f"predictor {where.name}: {fname} differs from the file its model card describes "
                             f"(SHA-256); the head was changed after its card was written (a shipped head: "
                             f"reinstall protlm)")


def check_label_info(info: dict, where: str) -> None:
    """The label protocols' part of head.json: ``classes`` (per target: a list of 1 to
    MAX_CLASSES labels, or null for a value target) and ``normalisation`` (two finite numbers
    per target), checked before any size is taken from them."""
    for key in ("classes", "normalisation"):
        if not isinstance(info.get(key), list):
            raise InputError(f"{where}: head.json field {key!r} must be a list")
    for k, cls in enumerate(info["classes"]):
        if cls is not None and (not isinstance(cls, list) or not 1 <= len(cls) <= MAX_CLASSES):  # None: a value target
            raise InputError(f"{where}: head.json classes[{k}] must be null or a list of 1 to {MAX_CLASSES} labels")
    for k, pair in enumerate(info["normalisation"]):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)):
            raise InputError(f"{where}: head.json normalisation[{k}] must be two finite numbers")


def upgrade_contact_head(info: dict) -> dict:
    """A contact head folder written before protlm 0.4 (its own schema: ``input_dim``, the protocol
    named ``residues_to_class``) in the one head-folder format; other head.json files unchanged.
    Its weights have the same names and shapes."""
    if info.get("protocol") != "residues_to_class" or "input_dim" not in info or "dim" in info:
        return info
    config = info.get("config")
    if not isinstance(config, dict):
        return info
    config = {**config, "protocol": "residue_pairs_to_class"}
    if isinstance(info.get("embedder"), str):
        config["embedder"] = info["embedder"]  # stored as an absolute path for an LM folder
    train = dict(config.get("train") or {})
    if isinstance(info.get("embedder_seed"), int):
        train["seed"] = info["embedder_seed"]
    config["train"] = train
    training = info.get("training") if isinstance(info.get("training"), dict) else {}
    return {**info, "protocol": "residue_pairs_to_class", "config": config, "dim": info["input_dim"],
            "history": training.get("history", [])}


def check_head_shape(folder: Path, hidden: int, kernel: int) -> None:
    if not 1 <= hidden <= MAX_HIDDEN:
        raise InputError(f"--head {folder}: head.hidden must be in [1, {MAX_HIDDEN}], not {hidden}")
    if not 0 <= kernel <= 257:
        raise InputError(f"--head {folder}: head.kernel must be in [0, 257], not {kernel}")


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, checked against the file size
    (read without loading any tensor)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 << 20):
                raise ValueError("header length beyond the end of the file")
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a safetensors file (header is not a mapping)")
    out = {}
    data_size = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(x) for x in entry["shape"]), entry["data_offsets"]
            count = math.prod(shape)
            if dtype not in DTYPE_BYTES or min(shape, default=0) < 0 or not 0 <= start <= end <= data_size \
                    or end - start != count * DTYPE_BYTES[dtype]:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: not a valid safetensors file (entry {name!r} does not fit the file)") from None
        out[name] = (dtype, shape)
    return out


def load_checked_state(path: Path, model_on_meta) -> dict:
    """The tensors of ``path`` after checking names and shapes against a model built on the
    ``meta`` device; then read with safetensors (never pickle)."""
    from safetensors.torch import load_file

    header = safetensors_header(path)
    expected = {k: tuple(v.shape) for k, v in model_on_meta.state_dict().items()}
    got = {k: shape for k, (_, shape) in header.items()}
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise InputError(f"{path}: does not match head.json (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, shape in expected.items():
        if got[k] != shape:
            raise InputError(f"{path}: tensor {k} has shape {list(got[k])}, head.json describes {list(shape)}")
    kinds = {k: v.dtype.is_floating_point for k, v in model_on_meta.state_dict().items()}
    for k, (dtype, _) in header.items():  # integer weights would be cast silently; a float counter likewise
        if dtype.startswith(("F", "BF")) != kinds[k]:
            raise InputError(f"{path}: tensor {k} is stored as {dtype}, not as the "
                             f"{'floating-point' if kinds[k] else 'integer'} values a head holds there")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise InputError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    for k, t in state.items():  # a head with NaN/inf weights predicts nothing that can be trusted
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise InputError(f"{path}: tensor {k} holds NaN or inf values (a diverged or damaged head); refusing "
                             f"to predict with it")
    return state
