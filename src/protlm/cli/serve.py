"""``protlm serve``: the shipped predictors as a local web application and JSON API (docs/serve.md).

Binds 127.0.0.1 unless ``--host`` says otherwise (a warning then: the server has no accounts; a
job's id is the only key to it). Jobs and results live under ``--data-dir`` (default
``$XDG_CACHE_HOME/protlm/serve``, else ``~/.cache/protlm/serve``) and survive a restart.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from protlm.cli.common import cache_dir, cache_parent, threads_parent
from protlm.errors import ConfigError, InputError


def default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "protlm" / "serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """The address is free (one clear line instead of uvicorn's log and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                             f"choose another --port") from None


def cmd_serve(args) -> int:
    from protlm.serve.inputs import MB, Limits

    if not 0 < args.port < 65536:
        raise ConfigError("--port must be between 1 and 65535")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * MB), max_sequences=args.max_sequences,
                    max_length=args.max_length, max_residues=args.max_residues, max_jobs=args.max_jobs)
    limits.check()
    if args.keep_days is not None and not args.keep_days > 0:
        raise ConfigError("--keep-days must be a positive number of days")
    if not is_loopback(args.host):
        print(f"protlm serve: warning: listening on {args.host}, not only this machine: anyone who can reach port "
              f"{args.port} can submit jobs (there are no accounts; a job's id is the only key to its results)",
              file=sys.stderr)
    _check_port(args.host, args.port)
    import uvicorn

    from protlm.serve.app import create_app

    app = create_app(args.data_dir, limits, cache_dir=cache_dir(args), threads=args.threads, keep_days=args.keep_days)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"protlm serve: http://{shown}:{args.port}/  (API: /docs, /openapi.json; data: {args.data_dir}); "
          f"Ctrl-C stops it, queued jobs continue at the next start", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                access_log=args.verbose)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", parents=[threads_parent(), cache_parent()],
        help="the shipped predictors as a local web page and JSON API",
        description="A web page where a person pastes or uploads protein sequences and sees the report "
                    "`protlm predict` writes (CSV/JSON downloads), and a JSON API (/docs, /openapi.json). Jobs "
                    "run one at a time in one worker process and survive a restart (--data-dir). docs/serve.md.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anything else is reachable "
                        "from the network and prints a warning)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", default=default_data_dir(),
                   help="jobs and their results (default: $XDG_CACHE_HOME/protlm/serve, else ~/.cache/protlm/serve)")
    p.add_argument("--keep-days", type=float, default=None, metavar="DAYS",
                   help="delete a finished job (done, failed, cancelled) this many days after it finished, at "
                        "start and then hourly (default: keep until its page or DELETE /api/jobs/ID deletes it)")
    g = p.add_argument_group("limits (a submission over one is refused with a message, HTTP 413/429)")
    g.add_argument("--max-upload-mb", type=float, default=10.0, help="MB per submission, pasted or uploaded "
                                                                     "(default 10)")
    g.add_argument("--max-sequences", type=int, default=5000, help="proteins per job (default 5000)")
    g.add_argument("--max-length", type=int, default=40000, help="residues of one protein (default 40000)")
    g.add_argument("--max-residues", type=int, default=2_000_000, help="residues per job (default 2000000)")
    g.add_argument("--max-jobs", type=int, default=20, help="jobs queued or running at once (default 20)")
    p.set_defaults(func=cmd_serve)
