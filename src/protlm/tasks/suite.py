"""The benchmark suite: every task config of a folder × every embedder → one results table.

One runner for every protocol: each config is trained by :func:`protlm.tasks.train.train`
(whatever its ``protocol:``), its cells are the protocol's headline metric, and paired
differences use the protocol's per-protein values.

``protlm benchmark --suite configs/benchmarks --embedder A --embedder onehot ... --data DIR``
trains one head per (task, embedder) with :func:`protlm.tasks.train.train`, into
``OUT/<task>/<embedder>/``, and writes ``OUT/results.json`` and ``OUT/results.md``: for each
task, target and test set the headline metric (Q3/Q8/Q10/Q2/top-1 accuracy, Spearman ρ) with
its bootstrap 95% CI, one column per embedder. A finished (task, embedder) whose
``metrics.json`` was made from the same config and the same embedder identity (an HDF5 file's
checksum, an embedder's weights fingerprint — not where either lies) is reused, so an
interrupted suite resumes. A row whose training was cut short by the epoch cap is flagged (†).

Extra test sets are scored without code changes: ``--extra-test TASK:NAME=PATH:FORMAT`` adds
``{file: PATH, format: FORMAT}`` to the task's ``data.test`` (formats: see
:mod:`protlm.tasks.config`); ``TASK:NAME=PATH:csv:label_column=y,seq_column=sequence,kind=float``
names the columns of a CSV (:func:`protlm.tasks.config.file_source`).

Test sets are not part of what a head depends on: the reuse digest (:func:`head_digest`) is of
the config without ``data.test``, and each test set has a digest of its own. A finished head
whose test sets changed is kept; only the new or changed test sets are scored with it, and
test sets no longer in the config leave its results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from protlm.errors import ConfigError, InputError
from protlm.io.atomic import json_bytes, write_bytes
from protlm.io.checksums import xxh3_file
from protlm.io.outputs import output_lock
from protlm.tasks import metrics as M
from protlm.tasks import perprotein
from protlm.tasks.build import data_files, load_task_config, validate, with_finetune
from protlm.tasks.config import UNNAMING_TRAIN_SETTINGS, TaskConfig, TrainSettings
from protlm.tasks.finetune import METHODS as FINETUNE_METHODS
from protlm.tasks.finetune import changed_settings, state_folder, training_file_digests
from protlm.tasks.features import embedder_slug, identity_digest
from protlm.tasks.protocols import get_protocol
from protlm.tasks.train import HEAD_JSON, METRICS_JSON, check_source, load_head, other_process, train

log = logging.getLogger("protlm.tasks")


def suite_configs(suite: str | Path, names: list[str] | None = None) -> list[Path]:
    suite = Path(suite)
    files = [suite] if suite.is_file() else sorted(suite.glob("*.yaml")) if suite.is_dir() else []
    if not files:
        raise InputError(f"--suite {suite}: no task configs (*.yaml) found")
    if names:
        by_stem = {f.stem: f for f in files}
        missing = [n for n in names if n not in by_stem]
        if missing:
            raise ConfigError(f"--tasks {missing[0]}: no such config in {suite} (have: {', '.join(sorted(by_stem))})")
        files = [by_stem[n] for n in names]
    return files


EXTRA_TEST_FORM = "TASK:NAME=PATH:FORMAT[:KEY=VALUE,...]"


def parse_extra_tests(items: list[str]) -> dict[str, dict[str, dict]]:
    """``TASK:NAME=PATH:FORMAT`` or ``TASK:NAME=PATH:csv:label_column=y,seq_column=s,kind=float``
    → ``{task: {name: {file, format, **options}}}`` (the sources are made per task, with its
    targets: :func:`add_tests`; each protocol checks its own options there)."""
    out: dict[str, dict[str, dict]] = {}
    for item in items:
        try:
            task_name, rest = item.split(":", 1)
            name, spec = rest.split("=", 1)
            head, _, last = spec.rpartition(":")
            options: dict[str, str] = {}
            if "=" in last:  # PATH:FORMAT:KEY=VALUE,...
                spec = head
                for pair in last.split(","):
                    key, value = pair.split("=", 1)
                    options[key.strip()] = value.strip()
            path, fmt = spec.rsplit(":", 1)
        except ValueError:
            raise ConfigError(f"--extra-test {item!r}: expected {EXTRA_TEST_FORM}, e.g. "
                              f"secondary_structure:ts115=TS115.csv:prottrans_csv or "
                              f"stability:mine=my.csv:csv:seq_column=sequence,label_column=y") from None
        if not task_name or not name or not path:
            raise ConfigError(f"--extra-test {item!r}: expected {EXTRA_TEST_FORM}")
        out.setdefault(task_name, {})[name] = {"file": path, "format": fmt, **options}
    return out


def head_folder(out: Path, task: str, spec, identity: dict) -> Path:
    """Where the suite keeps the head of (task, embedder): ``<name>-<identity digest>``; a folder
    of the same identity under another name (the file was renamed) is found too."""
    folder = out / task / embedder_slug(spec, identity)
    if not folder.is_dir():
        same = sorted(p for p in (out / task).glob(f"*-{identity_digest(identity)[:10]}") if p.is_dir())
        if same:
            return same[0]
    return folder


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def head_digest(config: TaskConfig, identity: dict, data_dir=None) -> str:
    """What a head depends on: the config without its test sets, with the embedder's name
    replaced by what made its numbers, and the content of its training files (``data_dir``:
    ``--data``)."""
    tree = {**config.as_dict(), "embedder": identity_digest(identity)}
    if isinstance(tree.get("data"), dict):
        tree["data"] = {k: v for k, v in tree["data"].items() if k != "test"}
        contents = training_file_digests(config, data_dir)
        if contents:  # a training file rewritten in place (same path, other labels) trains the head again
            tree["data"]["file_contents"] = contents
    _versioned_parts(tree, config)
    return _digest(tree)


#: ``train:`` fields added after v0.4.0: a digest leaves them out at their defaults (see _versioned_parts)
LATER_TRAIN_SETTINGS = ("early_stopping", "clip_grad_norm")


def _versioned_parts(tree: dict, config: TaskConfig) -> None:
    """The parts of a digest tree added after v0.4, kept only where they matter, so finished cells
    stay valid: a frozen head's digest has no fine-tuning part, a fine-tuned one the settings that
    differ from the defaults; ``train:`` fields added later count only when set."""
    if config.finetuning:
        tree["finetune"] = changed_settings(config.finetune)
    else:
        tree.pop("finetune", None)
    train = tree.get("train")
    if isinstance(train, dict):
        for key in UNNAMING_TRAIN_SETTINGS:
            train.pop(key, None)
        for key in LATER_TRAIN_SETTINGS:
            if key in train and train[key] == getattr(TrainSettings(), key):
                del train[key]


def test_digests(config: TaskConfig, by_stat: bool = False) -> dict[str, str] | None:
    """One digest per test set of the config: its source and the XXH3 of the content of every file
    it reads (a re-made file is scored again; a copied or re-mounted one with the same content is
    not). ``by_stat``: the digests protlm wrote before 0.5, from each file's size and modification
    time (a finished cell whose test files are unchanged since is not scored again). None: the
    protocol makes its own test sets."""
    tests = getattr(config.data, "test", None)
    protocol = config.protocol_obj
    if tests is None and not protocol.own_tests:
        return None
    out = {name: _digest({"made_by_the_protocol": name}) for name in protocol.own_tests}  # the head digest covers them
    for name, src in (tests or {}).items():
        tree = dataclasses.asdict(src) if dataclasses.is_dataclass(src) else {"source": src}
        files = [f for f in protocol.source_files(src) if Path(f).is_file()]
        if by_stat:
            stats = [[st.st_size, st.st_mtime_ns] for st in (Path(f).stat() for f in files)]
            if len(stats) == 1:
                tree["stat"] = stats[0]
            elif stats:
                tree["stats"] = stats
        elif files:  # every file the set reads (a structure set and its FASTA of whole sequences)
            tree["contents"] = [xxh3_file(f) for f in files]
        out[name] = _digest(tree)
    return out


_NEW_SOURCE_FIELDS = ("seq_column", "label_column", "id_column")


def legacy_digest(config: TaskConfig, identity: dict, tests: list[str]) -> str | None:
    """The ``config_digest`` protlm wrote before test sets left the digest (0.4 and earlier): the
    whole config, its test sets restricted to ``tests`` (the ones the old run scored), without the
    CSV column fields added since. None when the config cannot have made that run."""
    tree = {**config.as_dict(), "embedder": identity_digest(identity)}
    _versioned_parts(tree, config)
    data = tree.get("data")
    if isinstance(data, dict) and "test" in data:
        if not set(tests) <= set(data["test"]):
            return None
        data = tree["data"] = {**data, "test": {k: v for k, v in data["test"].items() if k in tests}}
        sources = [*data.get("train", []), data.get("valid"), *data["test"].values()]
        for src in sources:
            if isinstance(src, dict):
                if any(src.get(k) is not None for k in _NEW_SOURCE_FIELDS):
                    return None
                for k in _NEW_SOURCE_FIELDS:
                    src.pop(k, None)
    return _digest(tree)


def reusable(previous: dict, config: TaskConfig, identity: dict, digest: str) -> dict[str, str] | None:
    """The test-set digests a finished head's results were made with, when the head itself
    (``head_digest``) is what ``config`` would train; None when it must be trained anew."""
    if "head_digest" in previous:
        if previous["head_digest"] != digest:
            return None
        return previous.get("test_digests") or {}
    old = previous.get("config_digest")
    tests = list(previous.get("test", {}))
    if old is not None and legacy_digest(config, identity, tests) == old:
        now = test_digests(config) or {}
        return {k: now[k] for k in tests if k in now}
    return None


def rescore_tests(previous: dict, config: TaskConfig, folder: Path, made_with: dict[str, str], data_dir, source,
                  cache_dir=None, progress: Callable[[str, dict], None] | None = None,
                  now: dict[str, str] | None = None) -> dict | None:
    """A finished head's results for the config's test sets now: kept where a test set is
    unchanged, scored with the saved head where it is new or changed, dropped where it left the
    config. None when nothing changed (the results stand as written)."""
    now = now if now is not None else test_digests(config)
    if now is None:
        return None
    # what a cell finished before 0.5 recorded (size + modification time), read only when needed
    stat = {} if all(made_with.get(k) == v for k, v in now.items()) else test_digests(config, by_stat=True) or {}

    def unchanged(k: str) -> bool:
        return made_with.get(k) in (now[k], stat.get(k))

    if set(previous.get("test", {})) == set(now) and all(unchanged(k) for k in now):
        # nothing to score; a cell with the older digests is handed back so they are written anew
        return None if made_with == now else dict(previous)
    keep = {k for k in now if unchanged(k) and k in previous.get("test", {})}
    todo = [k for k in now if k not in keep]
    scored: dict[str, dict] = {}
    paired: dict[str, dict] = {}
    counts = {k: v for k, v in previous.get("proteins", {}).items() if not k.startswith("test:")}
    if todo:
        head = load_head(folder)
        protocol = head.protocol
        own = head.config.finetuning  # a fine-tuned head reads its own LM, not the base model's features
        if own:
            source = protocol.open_source(head.config, cache_dir)
        try:
            check_source(head, source)
            head.config.data.test = {k: config.data.test[k] for k in todo if k in config.data.test}
            if head.info.get("data_files") is not None:  # the config's test files now, as record_tests writes
                head.info["data_files"] = {**head.info["data_files"], **data_files(config)}
            sets = protocol.test_sets(head, todo, data_dir)
            for k, data in sets.items():
                log.info("%s: test set %s scored with the saved head (no retraining)", config.name, k)
                if progress is not None:
                    progress("rescore", {"task": config.name, "embedder": config.embedder_name, "set": k,
                                        "proteins": len(data)})

                def bar(done, total, k=k):
                    if progress is not None:
                        progress("embed", {"set": k, "done": done, "total": total})

                preds = protocol.predict(head.config, head.model, protocol.inputs(head.config, source, data, bar),
                                         head.state)
                scored[k] = protocol.score(head.config, preds, data, head.state, config.n_boot, config.evaluate.seed)
                paired[k] = perprotein.set_values(protocol, head.config, preds, data)
                counts[f"test:{k}"] = len(data)
        finally:
            if own:
                source.close()
    tests = {}
    stored = perprotein.read(folder)
    for k in now:
        tests[k] = previous["test"][k] if k in keep else scored[k]
        if k in keep and f"test:{k}" in previous.get("proteins", {}):
            counts[f"test:{k}"] = previous["proteins"][f"test:{k}"]
        if k in keep and k in stored:
            paired[k] = stored[k]
    perprotein.write(folder, paired)  # the sets the results now hold, no others
    record_tests(folder, config)
    return {**previous, "test": tests, "proteins": counts}


def record_tests(folder: Path, config: TaskConfig) -> None:
    """head.json's config names the test sets its results now hold, so ``protlm evaluate --head``
    alone scores the same sets (the weights and everything else in head.json are unchanged)."""
    path = folder / HEAD_JSON
    info = json.loads(path.read_text())
    tests = config.as_dict()["data"]["test"]
    files = {**info["data_files"], **data_files(config)} if info.get("data_files") is not None else None
    if info.get("config", {}).get("data", {}).get("test") != tests or files != info.get("data_files"):
        info["config"]["data"]["test"] = tests
        if files is not None:
            info["data_files"] = files
        write_bytes(path, json_bytes(info))


FT_SEP = "@"  # a fine-tuned column: EMBEDDER@METHOD


def column(spec: str, method: str | None) -> str:
    """The results column of an embedder run with a fine-tuning method (none: the embedder's name)."""
    return str(spec) if method in (None, "none") else f"{spec}{FT_SEP}{method}"


def split_column(name: str) -> tuple[str, str | None]:
    spec, sep, method = name.rpartition(FT_SEP)
    if sep and method in FINETUNE_METHODS:
        return spec, method
    return name, None


def configured(path: Path, overrides, spec, method: str | None) -> TaskConfig:
    """The task config of ``path`` for one column: its embedder and its fine-tuning method, checked
    (a ConfigError when the embedder does not fit the protocol, the head or the method)."""
    config = load_task_config(path, overrides, embedder=spec)
    validate(config)
    if method is not None:
        config = with_finetune(config, method)
    return config


def head_identity(config: TaskConfig, identity: dict) -> dict:
    """What names a head's folder: the embedder's identity, and the fine-tuning settings when the
    LM trains (a fine-tuned head never shares the frozen one's folder)."""
    if not config.finetuning:
        return identity
    ft = json.dumps(changed_settings(config.finetune), sort_keys=True, default=str)
    return {**identity, "fingerprint": f"{identity.get('fingerprint')}|finetune={ft}"}


def run_suite(suite: str | Path, embedders: list[str], out: str | Path, data_dir: str | Path | None, *,
              tasks: list[str] | None = None, extra_tests: list[str] | None = None, overrides: list[str] | None = None,
              cache_dir: str | Path | None = None, progress: Callable[[str, dict], None] | None = None,
              compare: list[str] | None = None, protocols: list[str] | None = None,
              finetune: list[str] | None = None, finish: bool = False) -> dict:
    """Train/score every (task, embedder[, fine-tuning method]); ``compare`` (``"A:B"`` items,
    columns ``EMBEDDER`` or ``EMBEDDER@METHOD``) adds paired differences; ``protocols``: only the
    configs of these protocols (by their ``protocol:``, not their file name); ``finetune``: the
    methods to run each pair with (default: each config's own); ``finish``: an interrupted
    fine-tuning cell ends at its last finished epoch (best epoch kept and scored) instead of
    continuing."""
    methods = list(dict.fromkeys(finetune)) if finetune else [None]
    columns = [column(e, m) for e in embedders for m in methods]
    pairs = parse_pairs(compare or [], columns)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = parse_extra_tests(extra_tests or [])
    files = suite_configs(suite, tasks)
    unknown = sorted(set(extra) - {f.stem for f in files})
    if unknown:
        raise ConfigError(f"--extra-test {unknown[0]}: no such task in the suite")
    if protocols:
        files = [f for f in files if load_task_config(f, overrides).protocol in protocols]
        if not files:
            raise InputError(f"--suite {suite}: no configs of protocol {', '.join(protocols)}")
    results, skipped = [], []
    for path in files:
        base = load_task_config(path, overrides)
        for spec, method in [(e, m) for e in (embedders or [base.embedder]) for m in methods]:
            try:
                # the embedder must fit the protocol and head (attention maps need an LM, fine-tuning a torch LM)
                config = configured(path, overrides, spec, method)
            except ConfigError as exc:
                log.warning("%s with %s: skipped (%s)", path.stem, column(spec, method), exc)
                skipped.append({"task": path.stem, "embedder": column(spec, method), "reason": str(exc)})
                continue
            add_tests(config, extra.get(path.stem, {}))
            name = column(config.embedder_name, config.finetune.method)
            spec = config.embedder_name
            with config.protocol_obj.open_source(config, cache_dir) as source:
                identity = head_identity(config, source.identity())
                folder = head_folder(out, path.stem, name, identity)
                digest = head_digest(config, identity, data_dir)
                with cell_lock(folder, f"the suite cell {path.stem} with {name}"):
                    result = _run_cell(config, path, name, spec, folder, identity, digest, data_dir, source,
                                       cache_dir, progress, finish)
            if "reused" in result:
                results.append(result["reused"])
            elif "task" in result:  # not a torchrun worker other than process 0 (it saves and scores nothing)
                results.append({k: v for k, v in result.items() if k not in ("out", "seconds")})
    table = results_table(results)
    if skipped:
        table += "\nNot run (the embedder does not fit the task): " + "; ".join(
            f"{r['task']} × `{r['embedder']}` ({r['reason']})" for r in skipped) + ".\n"
    differences = []
    if pairs:
        not_run = {r["task"] for r in skipped}
        differences = paired_differences([f for f in files if f.stem not in not_run], pairs, out, data_dir, extra,
                                         overrides, cache_dir)
        table += "\n" + differences_table(differences)
    write_bytes(out / "results.json", json_bytes({"embedders": embedders, "columns": columns, "results": results,
                                                   "paired_differences": differences, "skipped": skipped}))
    write_bytes(out / "results.md", table.encode())
    return {"out": str(out), "results": results, "table": table, "paired_differences": differences,
            "skipped": skipped}


def cell_lock(folder: Path, what: str):
    """A suite cell is trained or re-scored by one process at a time: two ``protlm benchmark``
    runs on the same output folder (one cell per core, as experiments/contacts/ does) may run
    different cells side by side, and one that reaches a cell another process holds stops with one
    line naming that process. torchrun's other processes train the cell with process 0, which holds it."""
    if other_process():
        return contextlib.nullcontext()
    folder.parent.mkdir(parents=True, exist_ok=True)
    return output_lock(folder, what, beside=True)


def _run_cell(config: TaskConfig, path: Path, name: str, spec: str, folder: Path, identity: dict, digest: str,
              data_dir, source, cache_dir, progress, finish: bool) -> dict:
    """One (config, embedder) cell: its finished head reused (``{"reused": metrics}``, test sets
    that changed scored again), or trained (continued from its checkpoint when interrupted)."""
    done = folder / METRICS_JSON
    if done.is_file():
        previous = json.loads(done.read_text())
        made_with = reusable(previous, config, identity, digest)
        if made_with is not None:
            log.info("%s with %s: already done, reused", path.stem, spec)
            now = test_digests(config)
            doc = rescore_tests(previous, config, folder, made_with, data_dir, source, cache_dir, progress, now)
            if doc is not None or "head_digest" not in previous:
                doc = doc or previous
                doc.pop("config_digest", None)
                doc.update(head_digest=digest, test_digests=now or {})
                write_bytes(done, json_bytes(doc))
            else:
                doc = previous
            doc["embedder"] = name
            return {"reused": doc}
    if progress is not None:
        progress("task", {"task": path.stem, "embedder": name})
    # a cell killed mid-run continues from its checkpoint (the same weights)
    interrupted = state_folder(folder) is not None
    if interrupted:
        log.warning("%s with %s: continuing the interrupted training run in %s", path.stem, name, folder)
    # what the suite keeps beside the metrics goes into metrics.json as it is written, once
    record = {"head_digest": digest, "test_digests": test_digests(config) or {}, "task_file": path.stem,
              "embedder": name}
    return train(config, folder, data_dir, cache_dir, progress, source=source, resume=interrupted,
                 record=record, finish=finish and interrupted)


# --------------------------------------------------------------------------- paired differences


def parse_pairs(items: list[str], embedders: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        # names may hold ':' themselves (profile:DB, concat:A+B): split where both sides are --embedder values
        splits = [(item[:i], item[i + 1:]) for i, ch in enumerate(item) if ch == ":"]
        known = [(x, y) for x, y in splits if x in embedders and y in embedders]
        a, sep, b = (known[0][0], ":", known[0][1]) if known else item.rpartition(":")
        if not sep or not a or not b:
            raise ConfigError(f"--compare {item!r}: expected A:B (two of the --embedder values)")
        for e in (a, b):
            if e not in embedders:
                raise ConfigError(f"--compare {item!r}: {e!r} is not one of the --embedder values")
        pairs.append((a, b))
    return pairs


def add_tests(config: TaskConfig, tests: dict[str, dict]) -> None:
    """Add ``--extra-test`` files (:func:`parse_extra_tests`) to the config's ``data.test``."""
    if tests and not isinstance(getattr(config.data, "test", None), dict):
        raise ConfigError(f"--extra-test {config.name}: the {config.protocol} protocol takes no extra test files")
    for name, spec in tests.items():
        if name in config.data.test:
            raise ConfigError(f"--extra-test {config.name}:{name}=…: the config already has a test set named {name!r}; "
                              f"give the extra one another name (it would replace it)")
        options = {k: v for k, v in spec.items() if k not in ("file", "format")}
        config.data.test[name] = config.protocol_obj.extra_test(config, name, spec["file"], spec["format"], options,
                                                                f"--extra-test {name}")


def paired_differences(files: list[Path], pairs: list[tuple[str, str]], out: Path, data_dir, extra, overrides,
                       cache_dir, n_boot: int = 1000) -> list[dict]:
    """Headline metric of A minus B on the same test proteins, with a paired bootstrap 95% CI
    (the same resampled proteins for both): the CI that decides whether A beats B."""
    rows = []
    for path in files:
        config = load_task_config(path, overrides)
        add_tests(config, extra.get(path.stem, {}))
        protocol = config.protocol_obj
        needed = sorted({e for pair in pairs for e in pair})
        folders = {}
        for name in needed:
            spec, method = split_column(name)
            cfg = configured(path, overrides, spec, method)
            with protocol.open_source(cfg, cache_dir) as base_source:
                folders[name] = head_folder(out, path.stem, name, head_identity(cfg, base_source.identity()))
        stats = stored_values(folders, len(config.targets))
        if stats is None:  # a head without stored values (made before protlm kept them): predict its test sets
            tests = protocol.load_data(config, data_dir).tests
            stats = {name: predicted_values(folders[name], tests, cache_dir) for name in needed}
        for set_name in stats[needed[0]]:
            for k, target in enumerate(config.targets):
                for a, b in pairs:
                    n, va = stats[a][set_name][k]
                    _, vb = stats[b][set_name][k]
                    if n == 0:
                        continue
                    everything = np.arange(n)
                    diff = float(protocol.statistic(va, everything) - protocol.statistic(vb, everything))
                    lo, hi = M.bootstrap_ci(lambda i: protocol.statistic(va, i) - protocol.statistic(vb, i), n,
                                            n_boot=n_boot)
                    rows.append({"task": config.name, "target": target.name, "set": set_name, "a": a, "b": b,
                                 "difference": diff, "ci95": [lo, hi], "proteins": n,
                                 "decided": "A better" if lo > 0 else "B better" if hi < 0 else "not decided"})
    return rows


def predicted_values(folder: Path, tests: dict, cache_dir) -> dict[str, list]:
    """``{set: [(n, values) per target]}`` of the head in ``folder``, predicted now; kept in the
    folder (per_protein.json) when these are the sets its metrics.json reports, so the next
    comparison reads them."""
    head = load_head(folder)
    protocol = head.protocol
    entries = {}
    # a fine-tuned head reads its own LM (load_head points its embedder at HEAD/lm)
    with protocol.open_source(head.config, cache_dir) as source:
        check_source(head, source)
        for set_name, data in tests.items():
            preds = protocol.predict(head.config, head.model, protocol.inputs(head.config, source, data), head.state)
            entries[set_name] = perprotein.set_values(protocol, head.config, preds, data)
    try:
        reported = json.loads((folder / METRICS_JSON).read_text()).get("test", {})
    except (OSError, ValueError):
        reported = {}
    if reported and set(reported) == set(entries):
        perprotein.write(folder, entries)
    return {k: [perprotein.decode(t) for t in v["targets"]] for k, v in entries.items()}


def stored_values(folders: dict[str, Path], n_targets: int) -> dict[str, dict] | None:
    """The per-protein values every head of ``folders`` wrote when it scored its test sets
    (:mod:`protlm.tasks.perprotein`), decoded: ``{column: {set: [(n, values) per target]}}``.
    None unless every head holds them for the same sets — the sets its metrics.json reports —
    with the same number of proteins (then the caller predicts again)."""
    out: dict[str, dict] = {}
    shape = None
    for name, folder in folders.items():
        try:
            reported = json.loads((folder / METRICS_JSON).read_text()).get("test", {})
        except (OSError, ValueError):
            return None
        stored = perprotein.read(folder)
        if not reported or set(stored) != set(reported):
            return None
        this = {k: (stored[k].get("proteins"), len(stored[k].get("targets", []))) for k in reported}
        if any(t != n_targets for _, t in this.values()) or (shape is not None and this != shape):
            return None
        shape = this
        try:  # in the order the results report the sets (the config's)
            out[name] = {k: [perprotein.decode(t) for t in stored[k]["targets"]] for k in reported}
        except (KeyError, TypeError, ValueError):
            return None
    return out


def differences_table(rows: list[dict]) -> str:
    lines = ["Paired differences of the headline metric (A − B on the same test proteins; paired bootstrap 95% CI "
             "over proteins, 1,000 resamples):", "",
             "| task | target | set | A | B | A − B | 95% CI | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['target']} | {r['set']} | `{r['a']}` | `{r['b']}` | {r['difference']:+.3f} | "
                     f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['decided']} |")
    return "\n".join(lines) + "\n"


def _cell(res: dict, protocol: str) -> str:
    return get_protocol(protocol).headline_text(res)


def results_table(results: list[dict]) -> str:
    """Markdown: one row per (task, target, test set), one column per embedder."""
    embedders: list[str] = []
    for r in results:
        if r["embedder"] not in embedders:
            embedders.append(r["embedder"])
    rows: dict[tuple, dict[str, str]] = {}
    meta: dict[tuple, str] = {}
    notes: dict[str, None] = {}  # what was left out of a row, and why (ordered, once each)
    for r in results:
        proto = r["protocol"]
        for set_name, by_target in [("valid", r["valid"]), *[(f"test: {k}", v) for k, v in r["test"].items()]]:
            for target, res in by_target.items():
                key = (r["task"], target, set_name, r["head"])
                rows.setdefault(key, {})[r["embedder"]] = _cell(res, proto) + (" †" if r.get("cut_short") else "")
                n = res.get(get_protocol(proto).count_key)
                meta[key] = f"{get_protocol(proto).headline_label}, n={n}"
                gone = res.get("not_scored")
                if gone:
                    notes.setdefault(f"{r['task']} / {target} / {set_name}: {gone['proteins']} protein(s) not scored, "
                                     f"{gone['why']}", None)
    lines = ["| task | target | set | head | metric | " + " | ".join(f"`{e}`" for e in embedders) + " |",
             "|---|---|---|---|---|" + "---|" * len(embedders)]
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2] != "valid", k[2])):
        cells = [rows[key].get(e, "–") for e in embedders]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {meta[key]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Values: the headline metric with its bootstrap 95% CI over proteins; "
                 "`valid` is the early-stopping split, the `test:` rows were never used for a decision.")
    if notes:
        lines.append("")
        lines.append("Not scored (n counts the scored proteins): " + "; ".join(notes) + ".")
    short = sorted({f"{r['task']} × `{r['embedder']}` (epoch {r.get('best_epoch')} of "
                    f"{r.get('epochs_run') if r.get('stopped_by') == 'finished_early' else r.get('epoch_cap')}, best "
                    f"{r.get('stopped_on') or get_protocol(r['protocol']).validation_text or 'validation loss'} in the last "
                    f"epoch{', ended with --finish' if r.get('stopped_by') == 'finished_early' else ''})"
                    for r in results if r.get("cut_short")})
    if short:
        lines.append("")
        lines.append("† cut short: training ended at the epoch cap (or with `--finish`) with the best value of the "
                     "early-stopping criterion in the last epoch, so the head is probably under-trained (raise "
                     "`train.epochs`): " + "; ".join(short) + ".")
    finished = sorted({f"{r['task']} × `{r['embedder']}` (best epoch {r.get('best_epoch')} of {r.get('epochs_run')} "
                       f"run)" for r in results if r.get("stopped_by") == "finished_early" and not r.get("cut_short")})
    if finished:
        lines.append("")
        lines.append("Ended with `--finish` before early stopping did (the best epoch so far is the head; more epochs "
                     "might still have found a better one): " + "; ".join(finished) + ".")
    return "\n".join(lines) + "\n"
