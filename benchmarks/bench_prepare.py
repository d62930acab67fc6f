#!/usr/bin/env python
"""Benchmark ``protlm prepare`` on Swiss-Prot against a plain per-character Python loop.

Everything is measured side by side in one run (configurations interleaved, each repeat in a
rotated order) because the benchmark machine is small and shared: compare the RATIOS, not the
absolute seconds. Every measured configuration runs in a fresh child process (this script
re-run with ``--child``), which times its own work (interpreter start and imports excluded)
and reports its peak RSS: ``getrusage(RUSAGE_SELF)`` for its main process and
``getrusage(RUSAGE_CHILDREN)`` for the largest of its (joined) worker processes.

Configurations:

* ``gunzip zlib`` / ``gunzip isal``: raw decompression of the .gz file, 4 MiB reads;
* ``read plain``: reading the uncompressed copy (I/O baseline);
* ``protlm gz wN``: ``prepare(<file>.fasta.gz, tmp, PrepareOptions(), workers=N)``;
* ``protlm plain wN``: the same on an uncompressed copy written to a temp folder;
* ``reference``: the straightforward per-character loop a user would write (gzip.open, dict
  lookup per residue, bytearray per split). Its token output is checked byte for byte
  (SHA-256 of the concatenated train / valid tokens) against protlm's;
* with ``--compare-ref REV``: ``protlm@REV ...``, the same ``prepare`` runs with the protlm
  source of git revision ``REV`` (``git archive`` into the temp folder, first on
  ``PYTHONPATH``), interleaved with the working tree's. Every output file of the two
  (manifest without its creation time, part file without its seconds) must have the same
  SHA-256.

Besides wall time, each child reports its CPU time (user + sys of itself, its threads and its
joined worker processes, ``getrusage``): on a loaded machine MB per CPU-second is the figure
that does not depend on what else runs.

Usage::

    .venv/bin/python benchmarks/bench_prepare.py [--data DIR] [--repeats 3] [--workers 1 2]
        [--out-json benchmarks/results/prepare.json] [--quick] [--compare-ref REV]
        [--no-reference] [--no-plain] [--no-gunzip]
    .venv/bin/python benchmarks/bench_prepare.py --stages 5 [--compare-ref REV]   # CPU by stage only
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SWISSPROT = Path("pretraining") / "swissprot_2014_01_go_annotated.fasta.gz"
READ_SIZE = 1 << 22
REFERENCE_REPEAT_LIMIT_S = 120.0  # slower than this: the reference runs once, not repeated
QUICK_BYTES = 20_000_000


# --------------------------------------------------------------------------- measured work
# Each function runs inside a child process and returns a dict of facts about its output.


def _gunzip(path: str, lib: str) -> dict:
    if lib == "isal":
        from isal import isal_zlib as z
    else:
        z = zlib
    total = 0
    with open(path, "rb") as fh:
        d = z.decompressobj(wbits=31)
        while True:
            raw = fh.read(READ_SIZE)
            if not raw:
                break
            while raw:
                total += len(d.decompress(raw))
                if d.eof:  # multi-member gzip: start the next member
                    raw = d.unused_data
                    d = z.decompressobj(wbits=31)
                else:
                    raw = b""
        total += len(d.flush())
    return {"uncompressed_bytes": total}


def _read_plain(path: str) -> dict:
    total = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_SIZE):
            total += len(chunk)
    return {"uncompressed_bytes": total}


def _protlm(path: str, workers: int, out: str) -> dict:
    from protlm.data.prepare import PrepareOptions, prepare

    manifest = prepare(path, out, PrepareOptions(), workers=workers)
    return {"manifest": manifest}


def _protlm_facts(manifest: dict, out: str) -> dict:
    """Hash protlm's token files, concatenated in chunk order, per split (not timed)."""
    facts = {}
    for split in ("train", "valid"):
        h = hashlib.sha256()
        n_bytes = 0
        for shard in manifest["splits"][split]["shards"]:
            with open(Path(out) / shard["tokens"], "rb") as fh:
                while chunk := fh.read(READ_SIZE):
                    h.update(chunk)
                    n_bytes += len(chunk)
        facts[split] = {
            "records": manifest["splits"][split]["records"],
            "residues": manifest["splits"][split]["residues"],
            "token_bytes": n_bytes,
            "sha256": h.hexdigest(),
        }
    facts["chunks"] = manifest["chunks"]
    facts["records_read"] = manifest["counts"]["records_read"]
    facts["files_sha256"] = output_file_hashes(Path(out))
    return facts


def output_file_hashes(out: Path) -> dict[str, str]:
    """SHA-256 of every file of a prepared folder; the manifest without ``created`` and the part
    files without ``seconds`` (the only fields that differ between identical runs)."""
    hashes = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.endswith(".lock"):
            continue
        rel = str(p.relative_to(out))
        if p.name == "manifest.json" or (p.parent.name == "parts" and p.suffix == ".json"):
            doc = json.loads(p.read_text())
            doc.pop("created", None)
            doc.pop("seconds", None)
            data = json.dumps(doc, sort_keys=True).encode()
        else:
            data = p.read_bytes()
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def reference_prepare(path: str, out: str, valid_fraction: float = 0.01, salt: str = "protlm") -> dict:
    """The straightforward code: one process, a Python loop over every character.

    Same rules as protlm's defaults: whitespace and gaps removed, upper-cased, B/O/U/Z -> X,
    token id = index in ALPHABET, terminal '*' stripped (any other '*' or unknown character is
    an error), empty records are an error, split by the seeded 64-bit XXH3 of the id.
    """
    import xxhash

    from protlm.data.alphabet import ALPHABET

    token = {aa: i for i, aa in enumerate(ALPHABET)}
    for aa in "BOUZ":
        token[aa] = token["X"]
    skip = set(" \t\r\n\v\f-.")
    seed = xxhash.xxh3_64_intdigest(salt.encode())  # protlm.data.prepare.split_seed
    threshold = min(int(valid_fraction * 2**64), 2**64 - 1)
    splits = {"train": bytearray(), "valid": bytearray()}
    records = {"train": 0, "valid": 0}

    def finish(rid, seq, line):
        if not seq:
            raise ValueError(f"line {line}: record {rid!r} has an empty sequence")
        h = xxhash.xxh3_64_intdigest(rid.encode(), seed)
        split = "valid" if h < threshold else "train"
        splits[split] += seq
        records[split] += 1

    rid = None
    seq = bytearray()
    stops = 0
    header_line = 0
    with gzip.open(path, "rt") as fh:
        for n, line in enumerate(fh, start=1):
            if line.startswith(">"):
                if rid is not None:
                    finish(rid, seq, header_line)
                words = line[1:].split()
                if not words:
                    raise ValueError(f"line {n}: header without an id")
                rid, seq, stops, header_line = words[0], bytearray(), 0, n
                continue
            if rid is None:
                if line.strip():
                    raise ValueError(f"line {n}: sequence data before the first header")
                continue
            for ch in line:
                if ch in skip:
                    continue
                ch = ch.upper()
                if ch == "*":
                    stops += 1
                    continue
                if stops:
                    raise ValueError(f"line {n}: '*' inside record {rid!r}")
                if ch not in token:
                    raise ValueError(f"line {n}: invalid character {ch!r} in record {rid!r}")
                seq.append(token[ch])
    if rid is not None:
        finish(rid, seq, header_line)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, data in splits.items():
        (out_dir / f"{split}.tokens").write_bytes(data)
    return {
        split: {"records": records[split], "residues": len(data), "token_bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
        for split, data in splits.items()
    }


def _cpu_s() -> float:
    """User + sys seconds of this process (all its threads) and of its joined children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _stage_profile(path: str, out: str) -> dict:
    """One ``prepare(path, out, workers=1)`` with its stages wrapped: CPU seconds of the calling
    thread (``getrusage(RUSAGE_THREAD)``), so the reader thread's work (read, SHA-256, inflate)
    and the main thread's are told apart, and the wall seconds spent waiting in ``fsync``."""
    import functools

    import protlm.data.prepare as P

    stages: dict[str, list] = {}

    def thread_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_THREAD)
        return r.ru_utime + r.ru_stime

    def add(label: str, cpu: float, wall: float | None = None) -> None:
        st = stages.setdefault(label, [0.0, 0.0, 0])
        st[0] += cpu
        st[1] += wall or 0.0
        st[2] += 1

    def wrap(name: str, label: str, generator: bool = False) -> None:
        f = getattr(P, name)
        if generator:
            @functools.wraps(f)
            def g(*a, **k):
                it = f(*a, **k)
                while True:
                    c0 = thread_cpu()
                    try:
                        x = next(it)
                    except StopIteration:
                        add(label, thread_cpu() - c0)
                        return
                    add(label, thread_cpu() - c0)
                    yield x
        else:
            @functools.wraps(f)
            def g(*a, **k):
                c0 = thread_cpu()
                try:
                    return f(*a, **k)
                finally:
                    add(label, thread_cpu() - c0)
        setattr(P, name, g)

    if hasattr(P, "cut_record_blocks"):
        wrap("iter_file_blocks", "reader thread: read + SHA-256 + inflate", generator=True)
        wrap("cut_record_blocks", "main: cut the input into chunks", generator=True)
    else:  # protlm before issue 23 (--compare-ref): one thread does it all
        wrap("iter_record_blocks", "main: read + SHA-256 + inflate + cut into chunks", generator=True)
    wrap("process_chunk", "main: process_chunk, all of it")
    wrap("encode_block", "main: encode_block (parse, clean, tokenise)")
    wrap("byte_counts", "main: residue counts")
    wrap("sequence_hashes", "main: sequence hashes (XXH3-128 per record)")
    wrap("id_hashes", "main: id hashes (XXH3-64 per record)")
    wrap("merge", "main: merge (duplicates, manifest)")
    real_fsync = os.fsync

    def fsync(fd):
        c0, t0 = thread_cpu(), time.perf_counter()
        real_fsync(fd)
        add("fsync", thread_cpu() - c0, time.perf_counter() - t0)

    os.fsync = fsync
    c0, t0 = thread_cpu(), time.perf_counter()
    p0 = _cpu_s()
    P.prepare(path, out, P.PrepareOptions(), workers=1)
    wall, process_cpu, main_cpu = time.perf_counter() - t0, _cpu_s() - p0, thread_cpu() - c0
    os.fsync = real_fsync
    return {
        "wall_s": wall,
        "process_cpu_s": process_cpu,
        "main_thread_cpu_s": main_cpu,
        "stages": {k: {"cpu_s": v[0], "wait_s": v[1] if k == "fsync" else None, "calls": v[2]}
                   for k, v in sorted(stages.items(), key=lambda kv: -kv[1][0])},
    }


def _child_main(spec: dict) -> None:
    """Run one configuration; write timings, peak RSS and output facts to spec['result']."""
    kind, path = spec["kind"], spec["path"]
    # imports happen before the clock starts (as in a long-lived CLI process)
    import numpy  # noqa: F401

    import protlm.data.prepare  # noqa: F401

    rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    if kind == "gunzip":
        facts = _gunzip(path, spec["lib"])
    elif kind == "read":
        facts = _read_plain(path)
    elif kind == "protlm":
        facts = _protlm(path, spec["workers"], spec["out"])
    elif kind == "reference":
        facts = reference_prepare(path, spec["out"])
    elif kind == "stages":
        facts = _stage_profile(path, spec["out"])
    else:
        raise ValueError(kind)
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if kind == "protlm":
        facts = _protlm_facts(facts["manifest"], spec["out"])
    result = {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_start_mb": rss_start_kb / 1024,
        "rss_main_mb": self_kb / 1024,
        "rss_worker_mb": children_kb / 1024 if children_kb else None,
        "facts": facts,
    }
    Path(spec["result"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- driver


def run_child(spec: dict, tmp: Path) -> dict:
    result_path = tmp / "child-result.json"
    result_path.unlink(missing_ok=True)
    spec = {**spec, "result": str(result_path)}
    started = time.perf_counter()
    env = None
    if spec.get("pythonpath"):
        env = {**os.environ, "PYTHONPATH": spec["pythonpath"]}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        cwd=REPO,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {spec['kind']} failed with exit code {proc.returncode}")
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = time.perf_counter() - started
    return result


def gunzip_to(src: Path, dst: Path, limit: int | None) -> int:
    """Decompress ``src`` to ``dst``; with ``limit`` stop at the first record start after it."""
    from protlm.data.fasta import iter_file_blocks

    written = 0
    with open(dst, "wb") as out:
        for data in iter_file_blocks(src):
            if limit is not None and written + len(data) > limit:
                cut = data.find(b"\n>", max(0, limit - written))
                if cut >= 0:
                    out.write(data[: cut + 1])
                    return written + cut + 1
            out.write(data)
            written += len(data)
    return written


def export_revision(rev: str, dest: Path) -> Path:
    """``src/`` of git revision ``rev`` of this repository, written under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "src/protlm"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--compare-ref {rev}: git archive failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def machine_info() -> dict:
    try:
        import numpy

        np_version = numpy.__version__
    except ImportError:  # pragma: no cover
        np_version = None
    try:
        import isal

        isal_version = isal.__version__
    except ImportError:  # pragma: no cover
        isal_version = None
    try:
        from protlm import __version__ as protlm_version
    except ImportError:  # pragma: no cover
        protlm_version = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np_version,
        "isal": isal_version,
        "protlm": protlm_version,
    }


def default_data_dir() -> Path:
    env = os.environ.get("PROTLM_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=default_data_dir(),
                   help="data folder holding pretraining/ (default: $PROTLM_DATA or ../shared/data)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per configuration (median)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="protlm worker counts")
    p.add_argument("--out-json", type=Path, default=REPO / "benchmarks" / "results" / "prepare.json")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run on the first ~{QUICK_BYTES // 1_000_000} MB of the input only")
    p.add_argument("--tmp", type=Path, default=None, help="folder for temporary files (default: system temp)")
    p.add_argument("--compare-ref", metavar="REV",
                   help="also run prepare with the protlm source of git revision REV, interleaved, and "
                        "check that every output file is identical")
    p.add_argument("--no-reference", action="store_true", help="skip the per-character reference loop")
    p.add_argument("--no-plain", action="store_true", help="skip the runs on the uncompressed copy")
    p.add_argument("--no-gunzip", action="store_true", help="skip the raw gunzip and read timings")
    p.add_argument("--stages", type=int, default=0, metavar="N",
                   help="only profile: N runs of prepare .gz, workers=1, CPU seconds by stage and thread "
                        "(written to --out-json, default benchmarks/results/prepare_stages.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0
    script_started = time.perf_counter()
    source = args.data / SWISSPROT
    if not source.is_file():
        print(f"SKIP: {source} not found (pass --data DIR or set PROTLM_DATA); nothing measured.")
        return 0
    if args.repeats < 1 or any(w < 1 for w in args.workers):
        raise SystemExit("--repeats and --workers must be >= 1")

    tmp = Path(tempfile.mkdtemp(prefix="protlm-bench-prepare-", dir=args.tmp))
    try:
        if args.stages:
            return _run_stages(args, source, tmp)
        return _run(args, source, tmp, script_started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_stages(args, source: Path, tmp: Path) -> int:
    info = machine_info()
    variants = [("working tree", None)]
    if args.compare_ref:
        variants.append((f"protlm@{args.compare_ref}", str(export_revision(args.compare_ref, tmp / "ref"))))
    print(f"# protlm prepare: CPU by stage, {args.stages} runs of each of {[v for v, _ in variants]} "
          f"on {source}, workers=1")
    runs: dict[str, list] = {name: [] for name, _ in variants}
    for r in range(args.stages):
        for name, pythonpath in variants if r % 2 == 0 else variants[::-1]:
            out = tmp / f"out-{r}"
            spec = {"kind": "stages", "path": str(source), "workers": 1, "out": str(out), "pythonpath": pythonpath}
            res = run_child(spec, tmp)
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(res["facts"])
            print(f"  run {r + 1}/{args.stages} {name}: {res['facts']['wall_s']:.2f} s wall, "
                  f"{res['facts']['process_cpu_s']:.2f} CPU-s", flush=True)
    med = statistics.median
    names = [name for name, _ in variants]
    labels: list[str] = []
    for name in names:
        labels += [k for k in runs[name][0]["stages"] if k not in labels]

    def cell(name: str, label: str) -> str:
        values = [r["stages"][label]["cpu_s"] for r in runs[name] if label in r["stages"]]
        return f"{med(values):.3f}" if values else "—"

    lines = ["| stage | " + " | ".join(f"CPU s, {n}" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(cell(n, label) for n in names) + " |")
    lines.append("| main thread, all | " + " | ".join(f"{med(r['main_thread_cpu_s'] for r in runs[n]):.3f}"
                                                     for n in names) + " |")
    lines.append("| process, all threads | " + " | ".join(f"{med(r['process_cpu_s'] for r in runs[n]):.3f}"
                                                         for n in names) + " |")
    lines.append("| fsync: wall seconds waiting | " + " | ".join(
        f"{med(r['stages']['fsync']['wait_s'] for r in runs[n]):.3f}" for n in names) + " |")
    lines.append("| wall s | " + " | ".join(f"{med(r['wall_s'] for r in runs[n]):.2f}" for n in names) + " |")
    table = "\n".join(lines)
    print()
    print(table)
    print("\n- medians; stages nest (process_chunk contains encode_block, the counts and the hashes); "
          "the reader thread runs beside the main thread")
    out_json = args.out_json
    if out_json == REPO / "benchmarks" / "results" / "prepare.json":
        out_json = REPO / "benchmarks" / "results" / "prepare_stages.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"benchmark": "prepare_stages", "machine": info, "input": str(source),
                                    "compare_ref": args.compare_ref, "runs": runs, "table_markdown": table},
                                   indent=2) + "\n")
    print(f"\nwrote {out_json}")
    return 0


def _run(args, source: Path, tmp: Path, script_started: float) -> int:
    info = machine_info()
    print(f"# protlm prepare benchmark ({'QUICK smoke run' if args.quick else 'whole file'})")
    print(f"{info['date']}  cpus={info['cpu_count']}  {info['cpu_model']}  python {info['python']}  "
          f"numpy {info['numpy']}  isal {info['isal']}  {info['platform']}")

    # inputs: the .gz file (or, with --quick, a .gz of its first ~20 MB) and a plain copy
    plain = tmp / "input.fasta"
    t = time.perf_counter()
    n_bytes = gunzip_to(source, plain, QUICK_BYTES if args.quick else None)
    if args.quick:
        gz = tmp / "input.fasta.gz"
        with open(plain, "rb") as fi, gzip.open(gz, "wb", compresslevel=6) as fo:
            shutil.copyfileobj(fi, fo, READ_SIZE)
    else:
        gz = source
    mb = n_bytes / 1e6
    print(f"input: {source}{' (first %.1f MB, recompressed)' % mb if args.quick else ''}; "
          f"{mb:.2f} MB uncompressed, {gz.stat().st_size / 1e6:.2f} MB gzip; "
          f"plain copy written in {time.perf_counter() - t:.1f} s\n")

    ref_src = None
    if args.compare_ref:
        ref_src = export_revision(args.compare_ref, tmp / "ref")
        print(f"--compare-ref {args.compare_ref}: protlm source exported to {ref_src}\n")
    configs = []
    if not args.no_gunzip:
        configs += [
            {"name": "gunzip zlib (stdlib)", "kind": "gunzip", "lib": "zlib", "path": str(gz), "workers": 1},
            {"name": "gunzip isal", "kind": "gunzip", "lib": "isal", "path": str(gz), "workers": 1},
            {"name": "read plain copy", "kind": "read", "path": str(plain), "workers": 1},
        ]
    inputs = [("gz", ".gz", gz)] + ([] if args.no_plain else [("plain", "plain", plain)])
    for inp, label, path in inputs:
        for w in args.workers:
            configs.append({"name": f"protlm prepare {label}, workers={w}", "kind": "protlm", "path": str(path),
                            "workers": w, "input": inp})
            if ref_src is not None:
                configs.append({"name": f"protlm@{args.compare_ref} prepare {label}, workers={w}",
                                "kind": "protlm", "path": str(path), "workers": w, "input": inp,
                                "pythonpath": str(ref_src), "ref_of": f"protlm prepare {label}, workers={w}"})
    if not args.no_reference:
        configs.append({"name": "reference Python loop (.gz)", "kind": "reference", "path": str(gz),
                        "workers": 1})
    runs: dict[str, list[dict]] = {c["name"]: [] for c in configs}
    reference_single = False

    for r in range(args.repeats):
        order = configs[r % len(configs):] + configs[: r % len(configs)]  # rotate: no fixed position
        for c in order:
            if c["kind"] == "reference" and reference_single:
                continue
            out = tmp / f"out-{r}"
            spec = {k: c[k] for k in ("kind", "path", "workers", "pythonpath") if k in c}
            if "lib" in c:
                spec["lib"] = c["lib"]
            spec["out"] = str(out)
            res = run_child(spec, tmp)
            shutil.rmtree(out, ignore_errors=True)  # a fresh output folder per run
            runs[c["name"]].append(res)
            print(f"  repeat {r + 1}/{args.repeats}  {c['name']:<44} {res['wall_s']:8.2f} s wall "
                  f"{res['cpu_s']:8.2f} s CPU", flush=True)
            if c["kind"] == "reference" and res["wall_s"] > REFERENCE_REPEAT_LIMIT_S and args.repeats > 1:
                reference_single = True
                print(f"  (reference took > {REFERENCE_REPEAT_LIMIT_S:.0f} s: it runs once, not repeated)")
    plain.unlink(missing_ok=True)

    # ------------------------------------------------------------------ checks
    ref_name = "reference Python loop (.gz)"
    ref_facts = runs[ref_name][0]["facts"] if ref_name in runs else None
    checks = {}  # protlm's tokens vs the reference loop's
    for c in configs:
        if c["kind"] != "protlm" or ref_facts is None:
            continue
        for res in runs[c["name"]]:
            f = res["facts"]
            same = all(f[s]["sha256"] == ref_facts[s]["sha256"] and f[s]["records"] == ref_facts[s]["records"]
                       for s in ("train", "valid"))
            checks.setdefault(c["name"], []).append(same)
    same_files = {}  # every output file vs the --compare-ref revision's, same input and workers
    for c in configs:
        if "ref_of" not in c:
            continue
        ref_hashes = runs[c["name"]][0]["facts"]["files_sha256"]
        for res in runs[c["ref_of"]] + runs[c["name"]]:
            hashes = res["facts"]["files_sha256"]
            diff = sorted(k for k in set(hashes) | set(ref_hashes) if hashes.get(k) != ref_hashes.get(k))
            same_files.setdefault(c["ref_of"], []).append(diff)
    for c in configs:
        if c["kind"] in ("gunzip", "read"):
            for res in runs[c["name"]]:
                if res["facts"]["uncompressed_bytes"] != n_bytes:
                    raise SystemExit(f"{c['name']}: read {res['facts']['uncompressed_bytes']} bytes, "
                                     f"expected {n_bytes}")
    all_same = all(all(v) for v in checks.values())
    files_same = all(not d for diffs in same_files.values() for d in diffs)

    # ------------------------------------------------------------------ summary
    summary = {}
    for c in configs:
        rs = runs[c["name"]]
        wall = statistics.median(x["wall_s"] for x in rs)
        cpu = statistics.median(x["cpu_s"] for x in rs)
        workers_rss = [x["rss_worker_mb"] for x in rs if x["rss_worker_mb"] is not None]
        summary[c["name"]] = {
            "kind": c["kind"],
            "workers": c["workers"],
            "runs": len(rs),
            "wall_s_median": wall,
            "wall_s_all": [x["wall_s"] for x in rs],
            "cpu_s_median": cpu,
            "cpu_s_all": [x["cpu_s"] for x in rs],
            "mb_per_s": mb / wall,
            "mb_per_s_per_worker": mb / wall / c["workers"],
            "mb_per_cpu_s": mb / cpu if cpu else None,
            "rss_start_mb": max(x["rss_start_mb"] for x in rs),
            "peak_rss_main_mb": max(x["rss_main_mb"] for x in rs),
            "peak_rss_worker_mb": max(workers_rss) if workers_rss else None,
        }
    ref_wall = summary[ref_name]["wall_s_median"] if ref_name in summary else None
    for name, s in summary.items():
        s["speedup_vs_reference"] = ref_wall / s["wall_s_median"] if ref_wall else None
        if s["kind"] == "protlm" and name in checks:
            s["tokens_equal_reference"] = all(checks[name])
        if name in same_files:
            s["files_equal_compare_ref"] = not any(same_files[name])
    for c in configs:
        if "ref_of" in c:  # the working tree against the revision, same run: the ratios that count
            new, old = summary[c["ref_of"]], summary[c["name"]]
            new["cpu_ratio_vs_compare_ref"] = new["cpu_s_median"] / old["cpu_s_median"]
            new["wall_ratio_vs_compare_ref"] = new["wall_s_median"] / old["wall_s_median"]

    header = ("| configuration | runs | wall s (median) | MB/s | MB/s per worker | CPU s (median) | "
              "MB per CPU-s | peak RSS main MB | peak RSS worker MB | × vs reference |")
    lines = [header, "|" + "---|" * 10]
    for name, s in summary.items():
        runs_txt = str(s["runs"]) + (" (single)" if s["kind"] == "reference" and reference_single else "")
        lines.append(
            f"| {name} | {runs_txt} | {s['wall_s_median']:.2f} | {s['mb_per_s']:.1f} | "
            f"{s['mb_per_s_per_worker']:.1f} | {s['cpu_s_median']:.2f} | {fmt(s['mb_per_cpu_s'], 1)} | "
            f"{s['peak_rss_main_mb']:.0f} | {fmt(s['peak_rss_worker_mb'], 0)} | "
            f"{fmt(s['speedup_vs_reference'], 1)} |"
        )
    table = "\n".join(lines)
    notes = []
    if reference_single:
        notes.append(f"reference: one run on the whole file (> {REFERENCE_REPEAT_LIMIT_S:.0f} s), not repeated")
    if not args.no_gunzip:
        isal_wall = summary["gunzip isal"]["wall_s_median"]
        zlib_wall = summary["gunzip zlib (stdlib)"]["wall_s_median"]
        notes.append(f"isal vs zlib gunzip: {zlib_wall / isal_wall:.2f}x faster ({isal_wall:.2f} s vs "
                     f"{zlib_wall:.2f} s); isal gunzip CPU {summary['gunzip isal']['cpu_s_median']:.2f} s")
    for w in args.workers:
        g = summary[f"protlm prepare .gz, workers={w}"]
        line = f"workers={w}: prepare .gz {g['cpu_s_median']:.2f} CPU-s"
        if not args.no_plain:
            p = summary[f"protlm prepare plain, workers={w}"]
            line += f", .gz - plain = {g['wall_s_median'] - p['wall_s_median']:+.2f} s wall"
        if not args.no_gunzip:
            line += f"; isal gunzip = {100 * summary['gunzip isal']['wall_s_median'] / g['wall_s_median']:.0f}% of its wall"
        notes.append(line)
    if len(args.workers) > 1:
        w0, w1 = args.workers[0], args.workers[-1]
        for inp, label in (("gz", ".gz"), ("plain", "plain")):
            if inp == "plain" and args.no_plain:
                continue
            a = summary[f"protlm prepare {label}, workers={w0}"]["wall_s_median"]
            b = summary[f"protlm prepare {label}, workers={w1}"]["wall_s_median"]
            notes.append(f"{inp}: workers={w1} vs workers={w0}: {a / b:.2f}x")
    for c in configs:
        if "ref_of" in c:
            new = summary[c["ref_of"]]
            notes.append(
                f"{c['ref_of']} vs {c['name']}: CPU {new['cpu_ratio_vs_compare_ref']:.2f}x, "
                f"wall {new['wall_ratio_vs_compare_ref']:.2f}x (< 1: the working tree is faster); output files "
                + ("identical (SHA-256 of each)" if new["files_equal_compare_ref"] else
                   f"DIFFER: {sorted({f for d in same_files[c['ref_of']] for f in d})[:5]}")
            )
    if ref_facts is not None:
        notes.append(
            "tokens: protlm's train/valid token files (concatenated in chunk order) "
            + ("are byte-identical to the reference's in every run" if all_same
               else "DIFFER from the reference's (see JSON)")
            + f" (train {ref_facts['train']['records']} records / {ref_facts['train']['residues']} residues, "
            f"valid {ref_facts['valid']['records']} / {ref_facts['valid']['residues']})"
        )
    start_rss = min(s["rss_start_mb"] for s in summary.values())
    notes.append("peak RSS: child's getrusage RUSAGE_SELF (main) and RUSAGE_CHILDREN (largest worker); "
                 f"a child right after its imports: {start_rss:.0f} MB")
    notes.append("CPU s: user + sys of the child (all threads) and its joined workers (getrusage)")
    total = time.perf_counter() - script_started
    notes.append(f"total benchmark runtime: {total:.0f} s")

    print(f"\n## protlm prepare{' vs a per-character Python loop' if ref_facts else ''} — {mb:.2f} MB of FASTA"
          f"{' (QUICK)' if args.quick else ''}, median of {args.repeats}, "
          f"cpus={info['cpu_count']}\n")
    print(table)
    print()
    for n in notes:
        print(f"- {n}")

    result = {
        "benchmark": "prepare",
        "quick": args.quick,
        "machine": info,
        "input": {"path": str(source), "uncompressed_mb": mb, "uncompressed_bytes": n_bytes,
                  "gzip_bytes": gz.stat().st_size if gz.exists() else None},
        "repeats": args.repeats,
        "workers": args.workers,
        "reference_single_run": reference_single,
        "results": summary,
        "reference_output": ref_facts,
        "tokens_equal_reference": all_same if ref_facts is not None else None,
        "compare_ref": args.compare_ref,
        "files_equal_compare_ref": files_same if args.compare_ref else None,
        "raw_runs": {name: [{k: v for k, v in x.items() if k != "facts"} for x in rs] for name, rs in runs.items()},
        "table_markdown": table,
        "notes": notes,
        "total_runtime_s": total,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out_json}")
    return 0 if all_same and files_same else 1


if __name__ == "__main__":
    sys.exit(main())
