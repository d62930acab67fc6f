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
  (SHA-256 of the concatenated train / valid tokens) against protlm's.

Usage::

    .venv/bin/python benchmarks/bench_prepare.py [--data DIR] [--repeats 3] [--workers 1 2]
        [--out-json benchmarks/results/prepare.json] [--quick]
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
    return facts


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


def _child_main(spec: dict) -> None:
    """Run one configuration; write timings, peak RSS and output facts to spec['result']."""
    kind, path = spec["kind"], spec["path"]
    # imports happen before the clock starts (as in a long-lived CLI process)
    import numpy  # noqa: F401

    import protlm.data.prepare  # noqa: F401

    rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind == "gunzip":
        facts = _gunzip(path, spec["lib"])
    elif kind == "read":
        facts = _read_plain(path)
    elif kind == "protlm":
        facts = _protlm(path, spec["workers"], spec["out"])
    elif kind == "reference":
        facts = reference_prepare(path, spec["out"])
    else:
        raise ValueError(kind)
    wall = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if kind == "protlm":
        facts = _protlm_facts(facts["manifest"], spec["out"])
    result = {
        "wall_s": wall,
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
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        cwd=REPO,
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
        return _run(args, source, tmp, script_started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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

    configs = [
        {"name": "gunzip zlib (stdlib)", "kind": "gunzip", "lib": "zlib", "path": str(gz), "workers": 1},
        {"name": "gunzip isal", "kind": "gunzip", "lib": "isal", "path": str(gz), "workers": 1},
        {"name": "read plain copy", "kind": "read", "path": str(plain), "workers": 1},
    ]
    for w in args.workers:
        configs.append({"name": f"protlm prepare .gz, workers={w}", "kind": "protlm", "path": str(gz),
                        "workers": w, "input": "gz"})
    for w in args.workers:
        configs.append({"name": f"protlm prepare plain, workers={w}", "kind": "protlm",
                        "path": str(plain), "workers": w, "input": "plain"})
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
            spec = {k: c[k] for k in ("kind", "path", "workers") if k in c}
            if "lib" in c:
                spec["lib"] = c["lib"]
            spec["out"] = str(out)
            res = run_child(spec, tmp)
            shutil.rmtree(out, ignore_errors=True)  # a fresh output folder per run
            runs[c["name"]].append(res)
            print(f"  repeat {r + 1}/{args.repeats}  {c['name']:<36} {res['wall_s']:8.2f} s", flush=True)
            if c["kind"] == "reference" and res["wall_s"] > REFERENCE_REPEAT_LIMIT_S and args.repeats > 1:
                reference_single = True
                print(f"  (reference took > {REFERENCE_REPEAT_LIMIT_S:.0f} s: it runs once, not repeated)")
    plain.unlink(missing_ok=True)

    # ------------------------------------------------------------------ checks
    ref_name = configs[-1]["name"]
    ref_facts = runs[ref_name][0]["facts"]
    checks = {}
    for c in configs:
        if c["kind"] != "protlm":
            continue
        for res in runs[c["name"]]:
            f = res["facts"]
            same = all(f[s]["sha256"] == ref_facts[s]["sha256"] and f[s]["records"] == ref_facts[s]["records"]
                       for s in ("train", "valid"))
            checks.setdefault(c["name"], []).append(same)
    for c in configs:
        if c["kind"] in ("gunzip", "read"):
            for res in runs[c["name"]]:
                if res["facts"]["uncompressed_bytes"] != n_bytes:
                    raise SystemExit(f"{c['name']}: read {res['facts']['uncompressed_bytes']} bytes, "
                                     f"expected {n_bytes}")
    all_same = all(all(v) for v in checks.values())

    # ------------------------------------------------------------------ summary
    summary = {}
    for c in configs:
        rs = runs[c["name"]]
        wall = statistics.median(x["wall_s"] for x in rs)
        workers_rss = [x["rss_worker_mb"] for x in rs if x["rss_worker_mb"] is not None]
        summary[c["name"]] = {
            "kind": c["kind"],
            "workers": c["workers"],
            "runs": len(rs),
            "wall_s_median": wall,
            "wall_s_all": [x["wall_s"] for x in rs],
            "mb_per_s": mb / wall,
            "mb_per_s_per_worker": mb / wall / c["workers"],
            "rss_start_mb": max(x["rss_start_mb"] for x in rs),
            "peak_rss_main_mb": max(x["rss_main_mb"] for x in rs),
            "peak_rss_worker_mb": max(workers_rss) if workers_rss else None,
        }
    ref_wall = summary[ref_name]["wall_s_median"]
    isal_wall = summary["gunzip isal"]["wall_s_median"]
    zlib_wall = summary["gunzip zlib (stdlib)"]["wall_s_median"]
    for name, s in summary.items():
        s["speedup_vs_reference"] = ref_wall / s["wall_s_median"]
        if s["kind"] == "protlm":
            s["tokens_equal_reference"] = all(checks[name])

    header = ("| configuration | runs | wall s (median) | MB/s | MB/s per worker | "
              "peak RSS main MB | peak RSS worker MB | × vs reference |")
    lines = [header, "|" + "---|" * 8]
    for name, s in summary.items():
        runs_txt = str(s["runs"]) + (" (single)" if s["kind"] == "reference" and reference_single else "")
        lines.append(
            f"| {name} | {runs_txt} | {s['wall_s_median']:.2f} | {s['mb_per_s']:.1f} | "
            f"{s['mb_per_s_per_worker']:.1f} | {s['peak_rss_main_mb']:.0f} | "
            f"{fmt(s['peak_rss_worker_mb'], 0)} | {s['speedup_vs_reference']:.1f} |"
        )
    table = "\n".join(lines)
    notes = []
    if reference_single:
        notes.append(f"reference: one run on the whole file (> {REFERENCE_REPEAT_LIMIT_S:.0f} s), not repeated")
    notes.append(f"isal vs zlib gunzip: {zlib_wall / isal_wall:.2f}x faster ({isal_wall:.2f} s vs {zlib_wall:.2f} s)")
    for w in args.workers:
        g = summary[f"protlm prepare .gz, workers={w}"]["wall_s_median"]
        p = summary[f"protlm prepare plain, workers={w}"]["wall_s_median"]
        notes.append(
            f"workers={w}: isal gunzip = {100 * isal_wall / g:.0f}% of prepare .gz wall; "
            f".gz - plain = {g - p:+.2f} s"
        )
    if len(args.workers) > 1:
        w0, w1 = args.workers[0], args.workers[-1]
        for inp in ("gz", "plain"):
            a = summary[f"protlm prepare {'.gz' if inp == 'gz' else 'plain'}, workers={w0}"]["wall_s_median"]
            b = summary[f"protlm prepare {'.gz' if inp == 'gz' else 'plain'}, workers={w1}"]["wall_s_median"]
            notes.append(f"{inp}: workers={w1} vs workers={w0}: {a / b:.2f}x")
    notes.append(
        "tokens: protlm's train/valid token files (concatenated in chunk order) "
        + ("are byte-identical to the reference's in every run" if all_same
           else "DIFFER from the reference's (see JSON)")
        + f" (train {ref_facts['train']['records']} records / {ref_facts['train']['residues']} residues, "
        f"valid {ref_facts['valid']['records']} / {ref_facts['valid']['residues']})"
    )
    notes.append("peak RSS: child's getrusage RUSAGE_SELF (main) and RUSAGE_CHILDREN (largest worker); "
                 f"a child right after its imports: {summary['gunzip isal']['rss_start_mb']:.0f} MB")
    total = time.perf_counter() - script_started
    notes.append(f"total benchmark runtime: {total:.0f} s")

    print(f"\n## protlm prepare vs a per-character Python loop — {mb:.2f} MB of FASTA"
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
        "tokens_equal_reference": all_same,
        "raw_runs": {name: [{k: v for k, v in x.items() if k != "facts"} for x in rs] for name, rs in runs.items()},
        "table_markdown": table,
        "notes": notes,
        "total_runtime_s": total,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out_json}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
