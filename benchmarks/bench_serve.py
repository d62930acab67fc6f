"""Load test of ``protlm serve`` (127.0.0.1 only): N concurrent clients each submit M one-protein jobs
in turn (submit, poll until done), against a fresh server started by this script.

Reports throughput (proteins and residues per second over the timed phase), per-job latency
percentiles (submit → done, as a client sees it), the peak RSS of the server and of its worker
process (VmHWM), and checks that every job's predictions equal what ``protlm predict`` writes for
the same proteins (labels and state strings exactly, numbers to 1.5e-4 — a protein embedded alone
versus in the CLI's batch changes the last float bits): nothing lost or mixed up.

Proteins: the real bacterial proteome shipped in the pyhmmer wheel (as ``protlm demo`` uses),
the first N × M with 50–500 residues.

    python benchmarks/bench_serve.py --clients 4 --proteins 5 [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proteins(n: int) -> list[tuple[str, str]]:
    from protlm.data.fasta import read_fasta
    from protlm.demo import embedded_proteome

    out = []
    for r in read_fasta(embedded_proteome()):
        if 50 <= len(r.sequence) <= 500 and set(r.sequence) <= set("ACDEFGHIKLMNPQRSTVWY"):
            out.append((r.id, r.sequence))
            if len(out) == n:
                return out
    raise SystemExit(f"the proteome has fewer than {n} proteins of 50-500 residues")


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def same(a, b, where="") -> list[str]:
    if isinstance(a, float) or isinstance(b, float):
        ok = a is not None and b is not None and abs(a - b) <= 1.5e-4
        return [] if ok else [f"{where}: {a} != {b}"]
    if isinstance(a, dict):
        if not isinstance(b, dict) or list(a) != list(b):
            return [f"{where}: keys differ"]
        return [d for k in a for d in same(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{where}: lengths differ"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (N)")
    ap.add_argument("--proteins", type=int, default=5, help="one-protein jobs per client, in turn (M)")
    ap.add_argument("--threads", type=int, default=1, help="the worker's torch threads (protlm serve --threads)")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args()

    from protlm.serve.client import Client

    n_all = args.clients * args.proteins
    prots = proteins(n_all)
    work = Path(tempfile.mkdtemp(prefix="protlm-bench-serve-"))
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "protlm.cli.main", "serve", "--port", str(port), "--data-dir",
                               str(work / "data"), "--cache", str(work / "cache"), "--threads", str(args.threads),
                               "--max-jobs", str(max(20, args.clients + 1))], stdout=log, stderr=subprocess.STDOUT,
                              env=env)
    client = Client(f"http://127.0.0.1:{port}", timeout=120)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                client.predictors()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit((work / "server.log").read_text())
                time.sleep(0.1)
        started = time.perf_counter() - t0
        t0 = time.perf_counter()  # the first job loads the predictors and the embedder in the worker
        warm = client.wait(client.submit(">warmup\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n")["id"])
        assert warm["state"] == "done", warm
        cold = time.perf_counter() - t0

        latencies: list[float] = []
        results: dict[str, dict] = {}
        errors: list[str] = []
        lock = threading.Lock()

        def run(k: int) -> None:
            for pid, seq in prots[k * args.proteins:(k + 1) * args.proteins]:
                t = time.perf_counter()
                try:
                    job = client.wait(client.submit(f">{pid}\n{seq}\n")["id"], poll=0.05)
                    res = client.results(job["id"]) if job["state"] == "done" else None
                except Exception as exc:  # noqa: BLE001 — counted and reported
                    with lock:
                        errors.append(f"{pid}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if res is None:
                        errors.append(f"{pid}: {job['state']} {job.get('error')}")
                    else:
                        for p in res["proteins"]:
                            results[p["id"]] = p

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss = {"server_mb": vm_hwm_mb(server.pid),
               "worker_mb": max([vm_hwm_mb(c) or 0 for c in children(server.pid)], default=None)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()

    # the CLI on the same proteins
    fasta = work / "all.fa"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in prots))
    cli = subprocess.run([sys.executable, "-m", "protlm.cli.main", "predict", "--input", str(fasta), "--out",
                          str(work / "cli"), "--no-cache", "--threads", str(args.threads)], env=env,
                         capture_output=True, text=True)
    if cli.returncode:
        raise SystemExit(cli.stderr)
    want = {p["id"]: p for p in json.loads((work / "cli" / "predictions.json").read_text())["proteins"]}
    missing = sorted(set(want) - set(results))
    extra = sorted(set(results) - set(want))
    diffs = [d for pid in want if pid in results for d in same(results[pid], want[pid], pid)]
    residues = sum(len(s) for _, s in prots)
    report = {
        "command": " ".join(["python benchmarks/bench_serve.py"] + sys.argv[1:]),
        "clients": args.clients, "jobs_per_client": args.proteins, "jobs": n_all, "residues": residues,
        "worker_threads": args.threads, "cpus": os.cpu_count(),
        "server_start_s": round(started, 2), "first_job_s (loads the predictors)": round(cold, 2),
        "wall_s": round(wall, 2), "proteins_per_s": round(n_all / wall, 2), "residues_per_s": round(residues / wall),
        "latency_s": {"p50": round(pct(latencies, 0.5), 3), "p90": round(pct(latencies, 0.9), 3),
                      "p99": round(pct(latencies, 0.99), 3), "max": round(max(latencies), 3)} if latencies else None,
        "peak_rss": rss,
        "check": {"errors": errors, "missing": missing, "unexpected": extra, "differences": diffs[:10],
                  "ok": not (errors or missing or extra or diffs)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
