"""Atomic, durable writes: the one place protlm publishes a file or a folder.

Every write goes to a temporary name next to the target (unique per process), is fsynced, and is
renamed into place; the folder is fsynced so the rename survives a crash. Readers therefore see
either the old file or the whole new one, never half of it, and an interrupted write leaves no
``*.tmp`` behind. An ``OSError`` (a full disk, permissions) names the file the user asked for,
not the temporary one.

Also here: :func:`json_bytes` (the JSON protlm writes: NaN/inf become null, numpy scalars become
numbers) and :func:`default_mode` (safetensors creates 0600 files; protlm's files are 0644 like
everything else a user writes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["default_mode", "fsync_dir", "fsync_tree", "json_bytes", "publish_folder", "temp_name", "write_bytes",
           "write_json", "write_npy", "write_npz", "write_text", "write_with", "write_with_path"]


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path``, unique per process (``.NAME.tmpPID``)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folders themselves (before the rename that
    publishes it), so a crash right after the rename never exposes empty files."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def default_mode(path: str | os.PathLike) -> None:
    """Give a file the permissions of an ordinary new file (0666 minus the umask, i.e. 0644)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _failed(tmp: Path, path: Path, exc: BaseException) -> None:
    try:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink()
    except OSError:
        pass
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError,)) and exc.errno is not None:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def write_with(path: str | os.PathLike, write: Callable[[Any], Any]) -> Path:
    """``write(fh)`` into a binary temporary file next to ``path``; fsync; rename."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException as exc:
        _failed(tmp, path, exc)
        raise
    return path


def write_with_path(path: str | os.PathLike, write: Callable[[str], Any], *, suffix: str = "") -> Path:
    """``write(tmp_path)`` for libraries that open the file themselves (safetensors, h5py,
    matplotlib); ``suffix`` keeps an extension they need. Then fsync, normal mode, rename."""
    path = Path(path)
    tmp = temp_name(path).with_suffix(suffix) if suffix else temp_name(path)
    try:
        write(str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        default_mode(tmp)
        _publish(tmp, path)
    except BaseException as exc:
        _failed(tmp, path, exc)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    return write_with(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """JSON as protlm writes it: indented, NaN/inf → null, numpy scalars → numbers."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, np.integer, np.bool_)):
            return clean(o.item())
        return o

    return (json.dumps(clean(obj), indent=2) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_bytes(path, json_bytes(obj))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return write_with(path, lambda fh: np.save(fh, array, allow_pickle=False))


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compressed: bool = False) -> Path:
    save = np.savez_compressed if compressed else np.savez
    return write_with(path, lambda fh: save(fh, **arrays))


def publish_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Publish a finished temporary folder: fsync its files, then one rename onto ``folder``
    (which must not exist)."""
    tmp, folder = Path(tmp), Path(folder)
    try:
        fsync_tree(tmp)
        os.rename(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException as exc:
        _failed(tmp, folder, exc)
        raise
    return folder
