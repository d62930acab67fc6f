"""Where protlm finds the benchmark data, its own bundled files, and models by name.

- The data root: ``--data`` when given, else ``$PROTLM_DATA``, else ``../shared/data`` (relative to
  the working directory). One function, :func:`data_root`, so every command agrees.
- Bundled files (the committed checkpoints in ``checkpoints/``, the recipes in ``configs/``): in a
  source checkout they sit at the repository root next to ``src/``; an installed wheel carries
  them as package data in ``protlm/_bundled/`` (``[tool.setuptools.package-data]`` in
  ``pyproject.toml``), so they are found however protlm was installed (a venv, ``--user``,
  ``--target``). :func:`bundled` looks in both, the checkout first.
- Names, one rule everywhere (``--model``, a recipe's ``embedder``, ``--suite``): a path that exists
  relative to the working directory wins; else a bundled file (``checkpoints/NAME`` or just
  ``NAME`` for a committed checkpoint, ``configs/...`` for the recipes); else, for models only, a
  Hugging Face hub id ``owner/name``. :func:`model_source` applies it to models and checks, before
  anything slow is imported, that the hub can be asked at all (:func:`check_hub`): offline, a
  name that is neither here nor bundled nor cached fails at once with one line, instead of
  huggingface_hub's retries (about 30 s).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from pathlib import Path, PurePath

from protlm.errors import InputError, model_label

DEFAULT_DATA = "../shared/data"

#: The folder of the installed package that holds the bundled files (package data).
BUNDLE = "_bundled"
#: The top-level folders of the repository that are bundled (what :func:`resolve_path` maps).
BUNDLED_TOPS = ("checkpoints", "configs")
#: How long :func:`check_hub` waits for a TCP connection to the hub (or the HTTPS proxy).
HUB_TIMEOUT_S = 3.0


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: ``explicit``, else ``$PROTLM_DATA``, else ``../shared/data``."""
    if explicit not in (None, ""):
        return Path(explicit)
    return Path(os.environ.get("PROTLM_DATA") or DEFAULT_DATA)


def _roots() -> list[Path]:
    """Where bundled files live: the source checkout (when protlm runs from one), then the package data."""
    package = Path(__file__).resolve().parents[1]  # …/protlm
    checkout = package.parents[1]  # src/protlm → the repository root
    in_checkout = package.parent.name == "src" and (checkout / "pyproject.toml").is_file()
    return ([checkout] if in_checkout else []) + [package / BUNDLE]


def bundled(*parts: str, must_exist: bool = True) -> Path:
    """A bundled file or folder, e.g. ``bundled("checkpoints", "protlm-kmer3-swissprot")``."""
    for root in _roots():
        path = root.joinpath(*parts)
        if path.exists():
            return path
    if must_exist:
        raise InputError(f"{Path(*parts)}: not found in this protlm installation (looked in "
                         f"{', '.join(str(r) for r in _roots())}); reinstall protlm or run from a source checkout")
    return _roots()[-1].joinpath(*parts)


def checkpoint_folder(name: str) -> Path:
    """A committed checkpoint folder by name (may not exist: callers say what to do then)."""
    return bundled("checkpoints", name, must_exist=False)


def _relative_parts(name: str | os.PathLike) -> tuple[str, ...] | None:
    """The parts of a plain relative name (no ``..``, not absolute, no ``~``), else None."""
    text = str(name).replace("\\", "/").strip()
    if not text or text.startswith(("/", "~")) or PurePath(text).is_absolute():
        return None
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def bundled_checkpoint(name: str) -> Path | None:
    """The bundled checkpoint folder named ``checkpoints/NAME`` or ``NAME`` (e.g.
    ``protlm-swissprot-masked-xs``, ``architectures-xs/esm``), or None."""
    parts = _relative_parts(name)
    if parts and parts[0] == "checkpoints":
        parts = parts[1:]
    if not parts:
        return None
    for root in _roots():
        path = root.joinpath("checkpoints", *parts)
        if (path / "config.json").is_file():
            return path
    return None


def bundled_checkpoint_names() -> list[str]:
    """Names of the bundled checkpoints (folders with a ``config.json``), for messages."""
    names: set[str] = set()
    for root in _roots():
        base = root / "checkpoints"
        if base.is_dir():
            names.update(p.parent.relative_to(base).as_posix() for p in base.glob("**/config.json"))
    return sorted(names)


def resolve_path(name: str | os.PathLike) -> Path:
    """A file or folder named as the repository names it (``configs/benchmarks``,
    ``checkpoints/NAME``): the path under the working directory when it exists, else the bundled
    one, else ``name`` unchanged (the caller says what is missing)."""
    path = Path(name)
    if path.exists():
        return path
    parts = _relative_parts(name)
    if parts and parts[0] in BUNDLED_TOPS:
        for root in _roots():
            candidate = root.joinpath(*parts)
            if candidate.exists():
                return candidate
    return path


def is_hub_id(name: str) -> bool:
    """``owner/name``: the form of a Hugging Face hub id (what is tried after folders and bundled names)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and ":" not in name and "\\" not in name


def model_source(name: str, what: str | None = None) -> str:
    """What a model name means, by the one rule: a path that exists (relative to the working
    directory) is returned as given; else a bundled checkpoint's folder; else the name itself, and
    when that is a hub id, :func:`check_hub` first makes sure the hub can be asked (one line, at
    once, when it cannot). Names that are neither (``onehot``, a typo) come back unchanged."""
    what = what or model_label()
    name = str(name)
    if Path(name).exists():
        return name
    found = bundled_checkpoint(name)
    if found is not None:
        return str(found)
    if is_hub_id(name):
        check_hub(name, what)
    return name


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    constants = sys.modules.get("huggingface_hub.constants")  # set by a caller in this process
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _cached(model: str) -> bool:
    """Whether the hub cache holds ``model``'s config.json (so it loads without the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # an old or absent huggingface_hub, an unreadable cache: treat as not cached
        return False


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int, timeout: float) -> bool:
    """A TCP connection to ``host:port`` within ``timeout`` seconds (name lookup included: it runs
    in a thread, since ``getaddrinfo`` itself takes no timeout)."""
    import socket

    ok: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the hub endpoint (``$HF_ENDPOINT``, or the HTTPS proxy when one is set) accepts a
    TCP connection within ``timeout`` seconds."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    endpoint = urlsplit(_hub_endpoint())
    proxy = getproxies().get(endpoint.scheme or "https")
    target = urlsplit(proxy if proxy and "://" in proxy else f"http://{proxy}") if proxy else endpoint
    default_port = 443 if target.scheme == "https" else 80
    if not target.hostname:
        return False
    try:
        port = target.port or default_port
    except ValueError:
        return False
    return _reachable(target.hostname, port, timeout)


def _go_offline() -> None:
    """Make huggingface_hub and transformers read the local cache only (this process)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def check_hub(model: str, what: str | None = None) -> None:
    """Fail at once, with one line, when the hub id ``model`` cannot be had: hub offline
    (``HF_HUB_OFFLINE``) or unreachable (no TCP connection within :data:`HUB_TIMEOUT_S`), and not
    in the local hub cache. Unreachable but cached: this process goes offline and uses the cache."""
    what = what or model_label()
    offline = _hub_offline()
    if not offline and hub_reachable():
        return  # the hub answers: a wrong id is reported by the loader
    if _cached(model):
        if not offline:
            _go_offline()
        return
    bundled_names = ", ".join(bundled_checkpoint_names()) or "none"
    why = ("HF_HUB_OFFLINE is set" if offline
           else f"the Hugging Face hub ({_hub_endpoint()}) is unreachable from here")
    raise InputError(f"{what} {model}: no such folder, not a bundled checkpoint ({bundled_names}), and not in "
                     f"the local hub cache; {why}. Give a model folder, or download it where the hub is "
                     f"reachable")


def suite_path(name: str) -> str:
    """``--suite``'s value by the one rule (argparse ``type``): the folder or file here, else the
    bundled one (the default ``configs/benchmarks`` works outside the repository)."""
    return str(resolve_path(name))
