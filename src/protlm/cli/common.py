"""What every command shares: parent parsers (one name and one meaning per flag), output, threads,
progress.

Flags with the same name mean the same thing in every command:

- ``--json``: print the full result as JSON on stdout (the readable summary goes to stderr);
- ``--threads N``: torch's CPU threads;
- ``--data DIR``: the benchmark data folder (default ``$PROTLM_DATA``, else ``../shared/data``);
  pretraining shards are ``--shards``;
- ``--out PATH``: what the command writes (a file or a folder, as its help says); ``--output`` is
  accepted as the same flag;
- ``--overwrite``: replace an existing output (never an input);
- ``--bootstrap N``: bootstrap resamples of confidence intervals (``--n-boot`` is the same flag);
- ``--tasks NAME …``: which task configs to run (``--only`` is the same flag).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from protlm.errors import ConfigError
from protlm.io.progress import LogProgress, _duration, progress_bar  # noqa: F401  (the commands' bars)

log = logging.getLogger("protlm")


def json_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def threads_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                                                 "on a shared machine, docs/benchmarks.md)")
    return p


def data_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", default=None, metavar="DIR",
                   help="benchmark data folder (default: $PROTLM_DATA, else ../shared/data)")
    return p


def overwrite_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never one of the inputs)")
    return p


def add_out(p: argparse.ArgumentParser, *, required: bool = False, default: str | None = None,
            help: str = "output") -> None:
    """``--out`` (alias ``--output``): what the command writes."""
    p.add_argument("--out", "--output", dest="out", required=required, default=default, help=help)


def add_bootstrap(p: argparse.ArgumentParser, *, default: int | None = None,
                  help: str = "bootstrap resamples of the confidence intervals (0: none)") -> None:
    """``--bootstrap N`` (alias ``--n-boot``): resamples of the bootstrap confidence intervals."""
    p.add_argument("--bootstrap", "--n-boot", dest="bootstrap", type=int, default=default, metavar="N", help=help)


def add_chain_selection(p) -> None:
    """How a contact head's evaluation chains are chosen (``protlm evaluate`` and ``protlm contacts
    evaluate``): a seeded cap, a length cap, the early-stopping chains, the whole sequences."""
    p.add_argument("--max-chains", type=int, help="score a seeded sample of N chains (default: every chain of the set)")
    p.add_argument("--max-length", type=int, help="leave out chains longer than N residues, listing them (default: none)")
    p.add_argument("--include-early-stop", action="store_true",
                   help="also score the validation chains used for early stopping")
    p.add_argument("--full-sequences", metavar="FASTA",
                   help="whole sequences for the LM to read (default: the FASTA recorded when the head was trained)")


def add_tasks(p: argparse.ArgumentParser, *, help: str = "only these task configs (file stems; default: all)",
              metavar: str = "NAME") -> None:
    """``--tasks NAME …`` (alias ``--only``): which task configs of a suite (or predictors) to run."""
    p.add_argument("--tasks", "--only", dest="tasks", nargs="+", metavar=metavar, help=help)


def default_feature_cache() -> str:
    """$PROTLM_CACHE, else the user's cache folder ($XDG_CACHE_HOME, else ~/.cache) /protlm/features —
    not the working directory, so a checkout or a project folder does not fill with embeddings."""
    import os
    from pathlib import Path

    if os.environ.get("PROTLM_CACHE"):
        return os.environ["PROTLM_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "protlm" / "features")


def cache_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cache", default=default_feature_cache(),
                   help="embedding cache folder (default: $PROTLM_CACHE, else $XDG_CACHE_HOME/protlm/features, "
                        "else ~/.cache/protlm/features)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    return p


def cache_dir(args) -> str | None:
    """The embedding cache folder, or None with ``--no-cache``."""
    return None if getattr(args, "no_cache", False) else getattr(args, "cache", None)


def data_dir(args):
    """``--data`` as given (it must exist; contact commands also take the contacts folder or its
    npz), else None. None lets each protocol choose: a label task reads the default data root
    (``$PROTLM_DATA``, else ``../shared/data``), a contact config its own ``data.path`` first, and
    ``evaluate`` the data a head was trained on — a default never overrides what a config names."""
    from pathlib import Path

    from protlm.errors import InputError

    given = getattr(args, "data", None)
    if given:
        if not Path(given).exists():
            raise InputError(f"--data {given}: no such folder (the benchmark data folder is expected)")
        return Path(given)
    return None


def emit(args, result: dict, summary: str) -> None:
    """The readable summary on stderr; with ``--json`` the whole result on stdout."""
    print(summary, file=sys.stderr)
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")


def apply_threads(args) -> None:
    """``--threads N``: torch's CPU threads. On a busy machine fewer threads can be much faster
    (spinning OpenMP workers lose to other load; docs/benchmarks.md)."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)


def safe_folder_name(name: str) -> str:
    """A config's ``name`` as one folder name: no path separators, no leading dots (``../x`` or
    ``/etc`` never leave the runs folder)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).lstrip(".")
    return safe or "task"
