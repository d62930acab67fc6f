"""``protlm`` — one entry point, one subcommand per job.

Every subcommand prints a readable summary to stderr and, with ``--json``, the full result as
JSON on stdout. Errors a user can cause end with one ``protlm: error: ...`` line and exit
code 2; Ctrl-C exits with 130 and keeps everything already written (atomic writes).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from protlm import __version__
from protlm.errors import ProtlmError, Terminated, cli_flags, typed_flags

log = logging.getLogger("protlm")


# --------------------------------------------------------------------------- parser

#: The modules that add the subcommands (``register(subparsers)``), in the order ``protlm --help``
#: lists them; they import heavy libraries only inside their command functions, so ``protlm
#: --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "protlm.cli.demo",       # demo
    "protlm.cli.data",       # inspect, prepare, prepare-merge, datasets
    "protlm.cli.pretrain",   # pretrain
    "protlm.cli.embed",      # embed, merge
    "protlm.cli.kmer",       # kmer-train
    "protlm.cli.project",    # project
    "protlm.cli.tasks",      # train, evaluate, compare, predict, finetune-merge, export-fasta, benchmark
    "protlm.cli.contacts",   # contacts …
    "protlm.cli.importer",   # import
    "protlm.cli.export",     # export
    "protlm.cli.serve",      # serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protlm",
        description="Protein language models: prepare data, pretrain, embed, train heads on embeddings, benchmark, project, predict contacts.",
    )
    parser.add_argument("--version", action="version", version=f"protlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Every command lives in a module of protlm.cli: each has register(subparsers).
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


#: How each command continues after Ctrl-C (what the interrupted message tells the user).
RESUME_WITH_FLAG = ("embed", "pretrain")  # they refuse an existing output without --resume
RESUME_BY_RERUN = ("prepare", "prepare-merge", "benchmark", "demo")  # finished parts are reused


def _resume_hint(args) -> str:
    command = getattr(args, "command", None)
    if command == "train" and getattr(args, "out", None):
        from protlm.tasks.finetune import state_folder

        folder = state_folder(args.out)
        if folder is not None:
            return (f"the run's last checkpoint is kept in {folder}; rerun the same command with --resume to "
                    f"continue it (or --finish to end it at its best epoch so far)")
    if command in RESUME_WITH_FLAG or (command == "predict" and getattr(args, "head", None) is None):
        return "finished work is kept; rerun the same command with --resume to continue"
    if command in RESUME_BY_RERUN or (command == "contacts" and getattr(args, "contacts_command", "") == "benchmark"):
        return "finished work is kept; rerun the same command to continue (finished parts are reused)"
    return "every output is written atomically, so no partial file was left; rerun the command"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli_flags(sys.argv[1:] if argv is None else [str(a) for a in argv])  # option errors name the flags typed
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="protlm: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    typed = [f for f in ("--out", "--output") if f in typed_flags()]
    out = getattr(args, "out", None)
    if typed and isinstance(out, str) and not out.strip():  # "$OUT" of an unset variable: not ".", not a default
        print(f"protlm: error: {typed[0]} is empty; give the output path", file=sys.stderr)
        return 2
    previous = _handle_sigterm()
    try:
        return args.func(args)
    except ProtlmError as exc:
        from protlm.data.fasta import DuplicateIdError

        hint = ""
        if isinstance(exc, DuplicateIdError):  # only commands that take the flag suggest it
            hint = ("; use --rename-duplicates to keep both (as ID_2, ID_3, …)" if hasattr(args, "rename_duplicates")
                    else " (rename them in the file)")
        print(f"protlm: error: {exc}{hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"protlm: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; {_resume_hint(args)}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # disk full, permissions on output, ...: the user's environment, exit 2
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"protlm: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum, frame):
    raise Terminated()


def _handle_sigterm():
    """Install the SIGTERM handler for the command's duration (the previous one is returned and put
    back after it; None off the main thread, where Python cannot install one)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def run(argv: list[str] | None = None) -> None:
    """The ``protlm`` console script and ``python -m protlm.cli.main``: :func:`main`, then exit.

    A process that torchrun started ends with :func:`os._exit` once the command has returned and
    the exit handlers have run (logging's flush among them). After ``destroy_process_group`` the
    gloo process group is still referenced by the model that DDP or FSDP wrapped (torch 2.13: its
    worker threads ``pt_gloo_runloop``/``gloo_tcp_loop`` are alive after ``gc.collect()``), so it
    would be torn down during interpreter finalization; there it can abort the process
    ("terminate called without an active exception", SIGABRT) after all output was written —
    which torchrun reports as a failed job. Every protlm output is written, fsynced and closed
    before the command returns, so nothing is left for finalization to do.
    """
    from protlm.io.processes import launched_by_torchrun

    code = main(argv)
    if not launched_by_torchrun():
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()  # what the interpreter would run first at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
