"""Jobs of ``protlm serve``: one folder each on disk, run one at a time by one worker process.

Layout under the data folder (``--data-dir``; created 0700)::

    DATA/jobs/<id>/job.json       the job's state (written atomically; the API reads it)
    DATA/jobs/<id>/input.fasta    the checked sequences (ids and residues as the server parsed them)
    DATA/jobs/<id>/out/           what `protlm predict --input input.fasta --out out` writes:
                                  predictions.csv, predictions.json, index.html, proteins/*.html

A job id is :func:`secrets.token_urlsafe` (24 characters, 144 random bits): unguessable, and the
only way to a job — the server lists no jobs. The states are ``queued`` → ``running`` → ``done`` or
``failed`` (with a message), or ``cancelled``. Cancelling writes ``DATA/jobs/<id>/cancel``: a queued
job is marked cancelled at once and never runs; a running one stops at its next chunk (the worker
checks the file after each) and is marked cancelled by the worker. A finished job (done, failed,
cancelled) can be deleted (its folder is removed), and ``protlm serve --keep-days D`` deletes
finished jobs D days after they finished (at start, then hourly). The server process writes ``job.json`` when it creates a job; the
worker process writes it from then on (start, progress after each chunk, the end). A restarted
server queues again every job still ``queued`` or ``running``, oldest first; a ``running`` one
resumes (``predict_folder(..., resume=True)`` keeps its finished chunks). If the worker process
dies (killed, out of memory), its running job is marked failed with a message and a new worker
takes the rest of the queue — no job stays stuck.

The worker runs in its own process (the server stays responsive, and a crash cannot take the
server down) whose working folder is ``DATA/jobs``: it gives :func:`predict_folder` relative paths
(``<id>/input.fasta``), so the results a user downloads never name the server's folders.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

from protlm.errors import ProtlmError
from protlm.io.atomic import json_bytes, write_bytes, write_text

log = logging.getLogger("protlm.serve")

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24}$")
PENDING = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
JOB_JSON, INPUT, OUT, CANCEL = "job.json", "input.fasta", "out", "cancel"
EXPIRY_EVERY = 3600.0  # seconds between two sweeps of --keep-days
#: What every reader of job.json relies on; a job.json without them is damaged, not a job.
JOB_KEYS = ("id", "state", "created", "started", "finished", "source", "proteins", "residues", "tasks", "progress",
            "error", "result")


class JobStateError(ProtlmError):
    """A request a job's state does not allow (cancel a finished job, delete a pending one)."""


class DamagedJob(ProtlmError):
    """A job folder whose job.json is missing, unreadable or not a job (edited, truncated, disk
    trouble): it can be neither shown nor run, only deleted."""


class Cancelled(Exception):
    """Raised in the worker when a running job's cancel file appears."""


def new_id() -> str:
    return secrets.token_urlsafe(18)  # 24 URL-safe characters


class JobStore:
    """The jobs folder: create, read and write jobs by id (an id that is not one is simply unknown)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def open(cls, data_dir: str | os.PathLike) -> "JobStore":
        data = Path(data_dir).expanduser()
        (data / "jobs").mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls((data / "jobs").resolve())

    def folder(self, job_id: str) -> Path | None:
        """The job's folder; None for anything that is not a job id (never a path a user names)."""
        if not isinstance(job_id, str) or not ID_PATTERN.match(job_id):
            return None
        return self.root / job_id

    def read(self, job_id: str) -> dict | None:
        """The job; None for no such job and for a damaged one (see :meth:`checked`)."""
        try:
            return self.checked(job_id)
        except DamagedJob:
            return None

    def checked(self, job_id: str) -> dict | None:
        """The job; None for no such job; :class:`DamagedJob` when its folder exists but its
        job.json cannot be read as a job (so it is reported and can be deleted, not "unknown")."""
        import json

        where = self.folder(job_id)
        if where is None or not where.is_dir():
            return None
        try:
            job = json.loads((where / JOB_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            job = None
        if (not isinstance(job, dict) or any(k not in job for k in JOB_KEYS) or job["id"] != job_id
                or job["state"] not in PENDING + FINISHED):
            raise DamagedJob("this job's files on the server are damaged (its job.json cannot be read); delete it")
        return job

    def write(self, job: dict) -> None:
        write_bytes(self.root / job["id"] / JOB_JSON, json_bytes(job))

    def create(self, submission, tasks: list[str]) -> dict:
        job_id = new_id()
        where = self.root / job_id
        where.mkdir(mode=0o700)
        write_text(where / INPUT, submission.fasta())
        job = {"id": job_id, "state": "queued", "created": time.time(), "started": None, "finished": None,
               "source": submission.source, "proteins": len(submission.ids), "residues": submission.residues,
               "tasks": tasks, "progress": {"done": 0, "total": submission.residues}, "error": None, "result": None}
        self.write(job)
        return job

    def cancel_requested(self, job_id: str) -> bool:
        where = self.folder(job_id)
        return where is not None and (where / CANCEL).exists()

    def _in_state(self, job_id: str, states: tuple[str, ...], why: str) -> dict:
        """The job, if its state is one of ``states``; KeyError for no such job, JobStateError otherwise."""
        job = self.checked(job_id)
        if job is None:
            raise KeyError(job_id)
        if job["state"] not in states:
            raise JobStateError(f"job {job['state']}: {why}")
        return job

    def cancel(self, job_id: str) -> dict:
        """Ask a queued or running job to stop (see the module's docstring); the job as it is now."""
        job = self._in_state(job_id, PENDING, "only a queued or running job can be cancelled")
        write_text(self.root / job_id / CANCEL, "cancelled at the user's request\n")
        if job["state"] == "queued":
            # the worker may be taking it this instant: it checks the cancel file after reading the job
            job.update(state="cancelled", finished=time.time())
            self.write(job)
        return job

    def delete(self, job_id: str) -> None:
        """Remove a finished job's folder (its sequences and results); a damaged job's too, which
        nothing else can remove (its state is unknown, so the worker never takes it)."""
        try:
            self._in_state(job_id, FINISHED, "cancel it first (only a finished job can be deleted)")
        except DamagedJob:
            pass
        shutil.rmtree(self.root / job_id)

    def expire(self, keep_seconds: float, now: float | None = None) -> list[str]:
        """Delete every finished job that finished more than ``keep_seconds`` ago; their ids."""
        now = time.time() if now is None else now
        gone = []
        for p in self.root.iterdir():
            job = self.read(p.name)
            if job and job.get("state") in FINISHED and (job.get("finished") or now) < now - keep_seconds:
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
        if gone:
            log.info("deleted %d job(s) finished more than %.3g days ago (--keep-days)", len(gone),
                     keep_seconds / 86400)
        return gone

    def pending(self) -> list[dict]:
        """Jobs queued or running, oldest first."""
        jobs = []
        for p in self.root.iterdir():
            job = self.read(p.name)
            if job and job.get("state") in PENDING:
                jobs.append(job)
        return sorted(jobs, key=lambda j: j.get("created") or 0)

    def ids(self, job_id: str) -> list[str]:
        """The protein ids of a job, in input order (:class:`DamagedJob` when its input is gone)."""
        try:
            with open(self.root / job_id / INPUT, encoding="utf-8") as fh:
                return [line[1:].rstrip("\n") for line in fh if line.startswith(">")]
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedJob(f"job {job_id}: its input file is missing or unreadable ({type(exc).__name__}); "
                             f"delete the job and submit again") from None


# --------------------------------------------------------------------------- the worker process


def run_job(store: JobStore, job_id: str, cache_dir: str | None) -> None:
    """Run one job (in the worker process, whose working folder is the jobs folder)."""
    from protlm.predictors.job import MANIFEST, STATE, predict_folder

    job = store.read(job_id)
    if not job or job["state"] not in PENDING:
        return  # done already (a job queued twice around a worker restart), cancelled, or unknown
    where = Path(job_id)  # relative: the results name `<id>/input.fasta`, not the server's folders
    if store.cancel_requested(job_id):
        job.update(state="cancelled", finished=job.get("finished") or time.time())
        store.write(job)
        return
    out = where / OUT
    resume = (out / STATE / MANIFEST).is_file()
    job.update(state="running", started=job.get("started") or time.time())
    store.write(job)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        job["progress"] = {"done": done, "total": total}  # a cancelled job's page says how far it got
        if store.cancel_requested(job_id):
            raise Cancelled
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        store.write(job)

    try:
        result = predict_folder(where / INPUT, out, job["tasks"], resume=resume, overwrite=not resume,
                                cache_dir=cache_dir, progress=progress)
        if store.cancel_requested(job_id):
            raise Cancelled
    except Cancelled:
        shutil.rmtree(out, ignore_errors=True)  # a cancelled job keeps no partial results
        job.update(state="cancelled", finished=time.time())
    except ProtlmError as exc:
        job.update(state="failed", finished=time.time(), error=str(exc))
    except Exception as exc:  # noqa: BLE001 — a job never stays "running": the message says where to look
        log.exception("job %s failed", job_id)
        job.update(state="failed", finished=time.time(),
                   error=f"internal error while predicting ({type(exc).__name__}); the server's log has the details")
    else:
        job.update(state="done", finished=time.time(), progress={"done": job["residues"], "total": job["residues"]},
                   result={k: result[k] for k in ("proteins", "residues", "predictors", "seconds")})
    store.write(job)


def worker_main(root: str, cache_dir: str | None, threads: int | None, jobs, parent: int, stop) -> None:
    """The worker process: take job ids from ``jobs`` until ``stop`` is set (the jobs still queued
    stay queued on disk for the next start) or the server is gone."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops this process
    logging.basicConfig(level=logging.WARNING, format="protlm serve worker: %(levelname)s: %(message)s")
    os.chdir(root)
    if threads:
        import torch

        torch.set_num_threads(threads)
    store = JobStore(".")
    while True:
        try:
            job_id = jobs.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent:  # the server died without stopping us
                return
            continue
        if job_id is None or stop.is_set():
            return
        run_job(store, job_id, cache_dir)


class Worker:
    """The server's side of the worker process: starts it, queues job ids, watches it, stops it."""

    def __init__(self, store: JobStore, cache_dir: str | None = None, threads: int | None = None,
                 keep_seconds: float | None = None):
        self.store, self.cache_dir, self.threads, self.keep_seconds = store, cache_dir, threads, keep_seconds
        self._swept = float("-inf")
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pending: list[str] = []
        self.proc = None
        self.jobs = None
        self.restarts = 0

    def start(self) -> None:
        with self._lock:
            self._spawn()
        threading.Thread(target=self._watch, name="protlm-serve-watch", daemon=True).start()

    def _spawn(self) -> None:
        """A new worker process and queue, with every job still pending on disk queued again."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a server holding threads
        self.jobs, self.stop_event = ctx.Queue(), ctx.Event()
        self.proc = ctx.Process(target=worker_main, name="protlm-serve-worker",
                                args=(str(self.store.root), self.cache_dir, self.threads, self.jobs, os.getpid(),
                                      self.stop_event))
        self.proc.start()
        self._pending = [job["id"] for job in self.store.pending()]
        for job_id in self._pending:
            self.jobs.put(job_id)

    def pending(self) -> int:
        """Jobs queued or running now."""
        with self._lock:
            self._pending = [j for j in self._pending if (self.store.read(j) or {}).get("state") in PENDING]
            return len(self._pending)

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._pending.append(job_id)
            self.jobs.put(job_id)

    def _expire(self) -> None:
        if self.keep_seconds is not None and time.monotonic() - self._swept >= EXPIRY_EVERY:
            self._swept = time.monotonic()
            try:
                self.store.expire(self.keep_seconds)
            except OSError as exc:  # a sweep that fails is tried again at the next one
                log.warning("deleting old jobs failed: %s", exc)

    def _watch(self) -> None:
        self._expire()
        while not self._stopping.wait(0.5):
            self._expire()
            with self._lock:
                if self._stopping.is_set() or self.proc.is_alive():
                    continue
                code = self.proc.exitcode
                for job in self.store.pending():
                    if job["state"] == "running":
                        job.update(state="failed", finished=time.time(),
                                   error=f"the worker process stopped while running this job (exit code {code}; out "
                                         f"of memory?); submit it again, or split it into smaller jobs")
                        self.store.write(job)
                log.warning("the worker process stopped (exit code %s); starting a new one", code)
                self.restarts += 1
                self._spawn()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: it takes no more jobs, and is stopped at once if it is running one (queued
        jobs stay queued; a running one resumes from its finished chunks when a server starts again)."""
        self._stopping.set()
        with self._lock:
            if self.proc is None:
                return
            self.stop_event.set()
            try:
                self.jobs.put(None)
            except (OSError, ValueError):
                pass
            self.proc.join(0.2)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(timeout)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(timeout)
