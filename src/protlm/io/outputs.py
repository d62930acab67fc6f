"""Where commands write: one overwrite policy, safe file names from ids, locks, durable renames.

The policy every command follows (``protlm train``, ``evaluate``, ``predict``, ``merge``,
``contacts predict``, ...):

* an existing output is refused unless ``--overwrite`` is given;
* an output is never one of the command's inputs (not even with ``--overwrite``);
* the output location is checked (folder exists or can be made, is writable) *before* the work
  starts, so a long run never ends in "permission denied".

File names made from protein ids (``contacts predict`` writes ``OUT/<name>.npz``) go through
:func:`safe_names`: they always stay inside the output folder and are unique.

Every error here is a :class:`~protlm.errors.InputError` (one ``protlm: error:`` line, exit 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from protlm.errors import InputError

__all__ = ["check_apart", "check_not_input", "check_output_file", "check_output_dir", "output_lock",
           "probe_writable", "safe_names"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@,-]")
MAX_NAME = 120


def safe_names(ids: Iterable[str]) -> dict[str, str]:
    """A file-name stem for every id: inside the folder, unique, readable when the id allows.

    The mapping: an id made only of ``A-Z a-z 0-9 . _ + = @ , -`` (not starting with a dot, at
    most 120 characters) is its own name. Any other id — with ``/``, ``\\``, spaces, ``..``,
    non-ASCII, a leading dot, too long — gets its unsafe characters replaced by ``_`` and
    ``~`` plus the first 10 hex digits of the SHA-256 of the id appended, so two ids never share
    a name (``A`` stays ``A``; ``./A`` becomes ``._A`` → ``_A~<hash>``; ``../../x`` becomes
    ``_.._x~<hash>``). Names that would differ only in letter case (one file on macOS and
    Windows) also get the hash.
    """
    ids = list(ids)
    out: dict[str, str] = {}
    for pid in ids:
        base = _UNSAFE.sub("_", pid)
        base = re.sub(r"^\.+", "_", base)[:MAX_NAME] or "_"
        if base != pid:
            base = f"{base}~{_digest(pid)}"
        out[pid] = base
    # case-insensitive file systems: names equal up to case get the hash too
    seen: dict[str, list[str]] = {}
    for pid, name in out.items():
        seen.setdefault(name.lower(), []).append(pid)
    for pids in seen.values():
        if len(pids) > 1:
            for pid in pids:
                if "~" not in out[pid]:  # hashed names hold a "~"; safe ids never do
                    out[pid] = f"{out[pid]}~{_digest(pid)}"
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def probe_writable(folder: Path, what: str, keep: bool = True) -> None:
    """Check a file can be created in ``folder`` (made with its parents if needed; with
    ``keep=False`` the folders made for the check are removed again)."""
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{what} {folder}: exists and is not a folder") from None
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot create the folder ({exc.strerror})") from None
    probe = folder / f".protlm-write-test.{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot write there ({exc.strerror})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
        if not keep:
            for p in made:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break


def check_not_input(path: str | os.PathLike, inputs: Iterable, option: str = "--output") -> None:
    """Refuse an output that is one of the command's inputs (by path, or the same file)."""
    for inp in inputs:
        if inp is not None and _same(Path(path), Path(inp)):
            raise InputError(f"{option} {path}: is also an input of this command; write the output somewhere else")


def check_apart(out: str | os.PathLike, folders: Iterable, option: str = "--out", holds: bool = False,
                what: str = "") -> None:
    """An output must not be, or lie inside, a folder the command reads (a head, a model folder,
    prepared data): writing there changes what is read (a model's weights digest, a head's
    metrics). ``holds``: an output folder whose files are replaced must not hold one of them (or an
    input file) either. ``what``: how the message names the folder ("the head folder ")."""
    target = Path(out).resolve()
    for folder in folders:
        if folder is None or not Path(folder).exists() or (not holds and not Path(folder).is_dir()):
            continue
        read = Path(folder).resolve()
        if read.is_dir() and (target == read or target.is_relative_to(read)):
            raise InputError(f"{option} {out}: is inside {what}{folder}, which this command reads; write the output "
                             f"somewhere else")
        if holds and read.is_relative_to(target):
            raise InputError(f"{option} {out}: holds {what}{folder}, which this command reads, and would be "
                             f"replaced; write the output somewhere else")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable = (),
                      option: str = "--output", create_parent: bool = False) -> Path:
    """Check an output file before the work starts (see the module docstring)."""
    path = Path(path)
    check_not_input(path, inputs, option)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{option} {path}: exists; pass --overwrite to replace it")
    parent = path.parent
    if not parent.is_dir() and not create_parent:
        raise InputError(f"{option} {path}: the folder {parent} does not exist")
    probe_writable(parent, option)
    return path


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable = (),
                     option: str = "--out", marker: str | None = None) -> Path:
    """Check an output folder: refused when it already holds output (``marker``, or any file when
    ``marker`` is None) unless ``overwrite``; never an input folder; made and writable."""
    path = Path(path)
    check_not_input(path, inputs, option)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder")
    if path.is_dir() and not overwrite:
        held = (path / marker).exists() if marker else any(path.iterdir())
        if held:
            raise InputError(f"{option} {path}: already holds output; pass --overwrite to replace it "
                             "or choose another folder")
    probe_writable(path, option, keep=False)
    return path


@contextmanager
def output_lock(target: str | os.PathLike, what: str = "output", name: str | None = None, beside: bool = False):
    """Hold a lock while a command writes ``target``: ``.<file>.lock`` next to a file, or
    ``.protlm.lock`` (or ``name``) inside a folder (``beside``: ``.<folder>.lock`` next to it, for a
    folder whose contents are a model that others copy whole). A second command on the same output stops at
    once with one line naming the process (pid, host) that holds it. The lock is an OS file lock
    (the ``filelock`` package): it is released when its process ends, even by ``kill -9``."""
    from filelock import FileLock, Timeout

    target = Path(target)
    if target.is_dir() and not beside:
        lock_path = target / (name or ".protlm.lock")
    else:
        lock_path = target.with_name(name or f".{target.name}.lock")
    info_path = lock_path.with_name(lock_path.name + ".holder")
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        _lock_creatable(target, lock_path)  # filelock reports a lock file it cannot open as held
        try:
            holder = json.loads(info_path.read_text())
            who = f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
        except (OSError, ValueError):
            who = "another process"
        raise InputError(f"{target}: {what} is in use by {who}; wait for it to finish "
                         f"(if that process is gone, the lock {lock_path} is released automatically)") from None
    except OSError as exc:
        raise _lock_error(target, lock_path, exc) from None
    try:
        try:
            info_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        except OSError:
            pass
        yield lock_path
    finally:
        try:
            info_path.unlink()
        except OSError:
            pass
        lock.release()


def _lock_error(target: Path, lock_path: Path, exc: OSError) -> InputError:
    folder = lock_path.parent
    if folder.exists() and not folder.is_dir():
        return InputError(f"{target}: cannot write there ({folder} exists and is not a folder)")
    return InputError(f"{target}: cannot write there (its lock file {lock_path}: {exc.strerror or exc})")


def _lock_creatable(target: Path, lock_path: Path) -> None:
    """Raise the real reason when the lock file cannot be opened at all (no such folder, a
    read-only or special file system); return when it can, i.e. another process holds it."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _lock_error(target, lock_path, exc) from None
    os.close(fd)
