"""The benchmark suite: every task config of a folder × every embedder → one results table.

``protlm benchmark --suite configs/benchmarks --embedder A --embedder onehot ... --data DIR``
trains one head per (task, embedder) with :func:`protlm.tasks.train.train`, into
``OUT/<task>/<embedder>/``, and writes ``OUT/results.json`` and ``OUT/results.md``: for each
task, target and test set the headline metric (Q3/Q8/Q10/Q2/top-1 accuracy, Spearman ρ) with
its bootstrap 95% CI, one column per embedder. A finished (task, embedder) whose
``metrics.json`` was made from the same config is reused, so an interrupted suite resumes.

Extra test sets are scored without code changes: ``--extra-test TASK:NAME=PATH:FORMAT`` adds
``{file: PATH, format: FORMAT}`` to the task's ``data.test`` (formats: see
:mod:`protlm.tasks.config`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Callable

from protlm.errors import ConfigError, InputError
from protlm.tasks.config import SourceConfig, TaskConfig, load_task_config
from protlm.tasks.features import embedder_slug
from protlm.tasks.train import METRICS_JSON, json_bytes, write_atomic, train

log = logging.getLogger("protlm.tasks")

HEADLINE = {"residue_to_class": ("accuracy", "accuracy"), "sequence_to_class": ("accuracy", "accuracy"),
            "sequence_to_value": ("spearman", "Spearman ρ")}


def suite_configs(suite: str | Path, names: list[str] | None = None) -> list[Path]:
    suite = Path(suite)
    files = [suite] if suite.is_file() else sorted(suite.glob("*.yaml")) if suite.is_dir() else []
    if not files:
        raise InputError(f"--suite {suite}: no task configs (*.yaml) found")
    # contacts configs (protocol residues_to_class) belong to protlm.contacts
    files = [f for f in files if not f.name.startswith("contacts")]
    if names:
        by_stem = {f.stem: f for f in files}
        missing = [n for n in names if n not in by_stem]
        if missing:
            raise ConfigError(f"--tasks {missing[0]}: no such config in {suite} (have: {', '.join(sorted(by_stem))})")
        files = [by_stem[n] for n in names]
    return files


def parse_extra_tests(items: list[str]) -> dict[str, dict[str, SourceConfig]]:
    out: dict[str, dict[str, SourceConfig]] = {}
    for item in items:
        try:
            task_name, rest = item.split(":", 1)
            name, spec = rest.split("=", 1)
            path, fmt = spec.rsplit(":", 1)
        except ValueError:
            raise ConfigError(f"--extra-test {item!r}: expected TASK:NAME=PATH:FORMAT, "
                              f"e.g. secondary_structure:ts115=TS115.csv:prottrans_csv") from None
        out.setdefault(task_name, {})[name] = SourceConfig(file=path, format=fmt)
    return out


def config_digest(config: TaskConfig) -> str:
    return hashlib.sha256(json.dumps(config.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_suite(suite: str | Path, embedders: list[str], out: str | Path, data_dir: str | Path | None, *,
              tasks: list[str] | None = None, extra_tests: list[str] | None = None, overrides: list[str] | None = None,
              cache_dir: str | Path | None = None, progress: Callable[[str, dict], None] | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = parse_extra_tests(extra_tests or [])
    files = suite_configs(suite, tasks)
    unknown = sorted(set(extra) - {f.stem for f in files})
    if unknown:
        raise ConfigError(f"--extra-test {unknown[0]}: no such task in the suite")
    results = []
    for path in files:
        base = load_task_config(path, overrides)
        for spec in embedders or [base.embedder]:
            config = load_task_config(path, overrides)
            config.embedder = spec
            for name, src in extra.get(path.stem, {}).items():
                config.data.test[name] = src
            folder = out / path.stem / embedder_slug(spec, config.layer)
            digest = config_digest(config)
            done = folder / METRICS_JSON
            if done.is_file():
                previous = json.loads(done.read_text())
                if previous.get("config_digest") == digest:
                    log.info("%s with %s: already done, reused", path.stem, spec)
                    results.append(previous)
                    continue
            if progress is not None:
                progress("task", {"task": path.stem, "embedder": spec})
            train(config, folder, data_dir, cache_dir, progress)
            doc = json.loads(done.read_text())
            doc.update(config_digest=digest, task_file=path.stem)
            write_atomic(done, json_bytes(doc))
            results.append(doc)
    table = results_table(results)
    write_atomic(out / "results.json", json_bytes({"embedders": embedders, "results": results}))
    write_atomic(out / "results.md", table.encode())
    return {"out": str(out), "results": results, "table": table}


def _cell(res: dict, protocol: str) -> str:
    key, _ = HEADLINE[protocol]
    m = res.get(key)
    if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
        return "–"
    lo, hi = m["ci95"]
    if lo is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def results_table(results: list[dict]) -> str:
    """Markdown: one row per (task, target, test set), one column per embedder."""
    embedders: list[str] = []
    for r in results:
        if r["embedder"] not in embedders:
            embedders.append(r["embedder"])
    rows: dict[tuple, dict[str, str]] = {}
    meta: dict[tuple, str] = {}
    for r in results:
        proto = r["protocol"]
        for set_name, by_target in [("valid", r["valid"]), *[(f"test: {k}", v) for k, v in r["test"].items()]]:
            for target, res in by_target.items():
                key = (r["task"], target, set_name, r["head"])
                rows.setdefault(key, {})[r["embedder"]] = _cell(res, proto)
                n = res.get("proteins")
                meta[key] = f"{HEADLINE[proto][1]}, n={n}"
    lines = ["| task | target | set | head | metric | " + " | ".join(f"`{e}`" for e in embedders) + " |",
             "|---|---|---|---|---|" + "---|" * len(embedders)]
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2] != "valid", k[2])):
        cells = [rows[key].get(e, "–") for e in embedders]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {meta[key]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Values: the headline metric with its bootstrap 95% CI over proteins; "
                 "`valid` is the early-stopping split, the `test:` rows were never used for a decision.")
    return "\n".join(lines) + "\n"
