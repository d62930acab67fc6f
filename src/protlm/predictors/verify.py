"""Check that a shipped predictor's numbers come back when its card's command is run again (a
maintainer's tool)::

    python -m protlm.predictors.verify NAME [NAME ...] --work DIR [--dry-run]

For each predictor the command its card records (``card.json`` ``command``) is run again, from the
current folder, with three changes that do not change what is trained: its output goes under
``--work`` (never where the shipped head came from), a benchmark suite is narrowed to the
predictor's own task and embedder (``--tasks``, ``--embedder``; the ``--compare`` pairs are
dropped: the suite trains each (task, embedder) head alone), and leading ``VAR=value`` words
and ``nice`` become the process's environment. Then every test number of the card (each set,
target and metric with its CI) is compared with the new ``metrics.json``: the report lists each
number, the rerun's and the difference, and the exit status is 1 when any differs by more than
``--tolerance`` (default 0: identical).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from protlm.errors import ConfigError
from protlm.predictors.predictor import CARD_JSON, folder, resolve, split_name

METRIC_KEYS = ("accuracy", "mcc", "spearman", "pearson", "headline")


def rerun_command(card: dict, work: Path) -> tuple[dict[str, str], list[str], Path]:
    """(environment additions, argv after ``protlm``, the output folder) of a card's command."""
    words = shlex.split(card["command"])
    env: dict[str, str] = {}
    while words and ("=" in words[0] and not words[0].startswith("-") or words[0] == "nice"):
        if words[0] != "nice":
            key, value = words[0].split("=", 1)
            env[key] = value
        words.pop(0)
    if not words or Path(words[0]).name != "protlm" or len(words) < 2 or words[1] not in ("train", "benchmark"):
        raise ConfigError(f"{card['name']}: the card's command is not `protlm train` or `protlm benchmark`: "
                          f"{card['command']!r}")
    args = words[1:]
    out = work / card["name"].replace("@", "-")
    one_value, many_values = {"--compare", "--embedder", "--out", "--output"}, {"--tasks", "--only"}
    keep, i = [], 0
    while i < len(args):
        a = args[i]
        i += 1
        if a in one_value:
            i += 1
        elif a in many_values:  # NAME [NAME ...], as argparse reads it
            while i < len(args) and not args[i].startswith("-"):
                i += 1
        else:
            keep.append(a)
    embedder = split_name(card["name"])[1]
    if args[0] == "benchmark":  # the suite's task file is the one named like the head's config (a recipe's stem)
        config_task = json.loads((folder(card["name"]) / "head.json").read_text())["config"]["name"]
        keep += ["--tasks", config_task, "--embedder", embedder]
    else:
        keep += ["--embedder", embedder] if "--embedder" in args else []
    keep += ["--out", str(out)]
    return env, keep, out


def metrics_of(out: Path, card: dict, benchmark: bool) -> dict:
    """The rerun's metrics.json (a suite keeps each head under TASK/EMBEDDER-DIGEST/)."""
    if not benchmark:
        return json.loads((out / "metrics.json").read_text())
    _, embedder = split_name(card["name"])
    found = sorted(out.glob(f"*/{embedder}-*/metrics.json"))
    if len(found) != 1:
        raise ConfigError(f"{card['name']}: expected one {embedder} head under {out}, found {len(found)}")
    return json.loads(found[0].read_text())


def _numbers(test: dict) -> dict[tuple, float]:
    out = {}
    for set_name, targets in (test or {}).items():
        for target, res in targets.items():
            for key in METRIC_KEYS:
                h = res.get(key)
                if isinstance(h, dict) and isinstance(h.get("value"), (int, float)):
                    out[(set_name, target, key, "value")] = float(h["value"])
                    ci = h.get("ci95") or h.get("ci")
                    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
                        out[(set_name, target, key, "ci_low")] = float(ci[0])
                        out[(set_name, target, key, "ci_high")] = float(ci[1])
    return out


def compare(card_test: dict, rerun_test: dict) -> list[dict]:
    """One row per number of the card: its value, the rerun's, the difference."""
    a, b = _numbers(card_test), _numbers(rerun_test)
    rows = []
    for key, v in a.items():
        w = b.get(key)
        rows.append({"set": key[0], "target": key[1], "metric": key[2], "part": key[3], "card": v, "rerun": w,
                     "difference": None if w is None else w - v})
    return rows


def verify(name: str, work: Path, dry_run: bool = False) -> dict:
    pname = resolve(name)
    card = json.loads((folder(pname) / CARD_JSON).read_text())
    env, argv, out = rerun_command(card, work)
    cmd = [sys.executable, "-m", "protlm.cli.main", *argv]
    doc = {"name": pname, "command": card["command"], "rerun": " ".join(shlex.quote(w) for w in ["protlm", *argv]),
           "env": env}
    if dry_run:
        return doc
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--work {work}: {out} exists already; give an empty --work folder")
    # the rerun's output (its progress lines included) goes to the terminal as it comes and to
    # WORK/<output>.log; a rerun takes minutes to an hour
    log_path = work / f"{out.name}.log"
    work.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log, subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT) as proc:
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            log.write(chunk)
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
        returncode = proc.wait()
    doc["log"] = str(log_path)
    if returncode != 0:
        text = log_path.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
        doc["error"] = text[-1:] or ["failed"]
        return doc
    rerun = metrics_of(out, card, argv[0] == "benchmark")
    doc["rows"] = compare(card["test"], rerun["test"])
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protlm.predictors.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="shipped predictors (TASK or TASK@EMBEDDER)")
    ap.add_argument("--work", required=True, type=Path, help="an empty folder for the reruns' outputs")
    ap.add_argument("--tolerance", type=float, default=0.0, help="largest |difference| taken as equal (default 0)")
    ap.add_argument("--dry-run", action="store_true", help="print the rerun commands only")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    try:
        report = [verify(n, args.work, args.dry_run) for n in args.names]
    except ConfigError as exc:
        print(f"verify: error: {exc}", file=sys.stderr)
        return 2
    bad = 0
    for doc in report:
        print(f"{doc['name']}: {doc['rerun']}" + (f"  (env {doc['env']})" if doc["env"] else ""))
        if "error" in doc:
            print(f"  rerun failed: {doc['error'][0]}")
            bad += 1
            continue
        for r in doc.get("rows", []):
            diff = r["difference"]
            same = diff is not None and abs(diff) <= args.tolerance
            bad += 0 if same else 1
            rerun = "missing" if r["rerun"] is None else f"{r['rerun']:.6f}"
            print(f"  {r['set']:16s} {r['target']:10s} {r['metric']:9s} {r['part']:8s} card {r['card']:.6f}  "
                  f"rerun {rerun}  {'same' if same else f'DIFFERS by {diff:+.6f}' if diff is not None else 'MISSING'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if bad and not args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
