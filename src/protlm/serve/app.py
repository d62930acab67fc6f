"""The FastAPI application of ``protlm serve`` (docs/serve.md).

Pages: ``/`` (paste or upload, choose predictors), ``/jobs/{id}`` (progress while the job runs;
then downloads and the report ``protlm predict`` writes, inline), ``/jobs/{id}/report/...`` (that
report's own files: its pages, and a contact predictor's maps), ``/docs`` (the API, rendered from
the OpenAPI document on the server: no script, no CDN). API: ``POST /api/jobs``, ``GET
/api/jobs/{id}``, ``GET /api/jobs/{id}/results`` (predictions.json), ``GET
/api/jobs/{id}/results.csv``, ``POST /api/jobs/{id}/cancel``, ``DELETE /api/jobs/{id}``, ``GET
/api/predictors``; the OpenAPI document is ``/openapi.json``. The pages' Cancel and Delete buttons
are forms posting to ``/jobs/{id}/cancel`` and ``/jobs/{id}/delete`` (they work without script).
Errors are JSON ``{"detail": "one line"}`` with a 4xx status.

Every script and style the pages use ships in ``protlm/serve/static/``; the pages send a
Content-Security-Policy that allows nothing else.
"""

from __future__ import annotations

import html
import json
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from protlm import __version__
from protlm.predictors import report
from protlm.serve.inputs import MB, Limits, SubmitError, display_name, parse, parse_tasks, size_mb
from protlm.serve.jobs import OUT, DamagedJob, JobStateError, JobStore, Worker

log = logging.getLogger("protlm.serve")

STATIC = Path(__file__).resolve().parent / "static"
INLINE_PROTEINS = 20  # a done job's page shows this many proteins' reports inline; the rest via the index
FORM_OVERHEAD = 1 * MB  # multipart framing and the other fields, on top of --max-upload-mb
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SUBMIT_PATHS = ("/api/jobs", "/jobs")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a submission larger than the limit is answered 413 with one line, before
    the form parser stores it. The body is read and dropped (up to 8 × the limit) so an ordinary
    HTTP client, which sends the whole body before reading, receives the answer."""

    def __init__(self, app, limit: int, shown_mb: float):
        self.app, self.limit, self.shown_mb = app, limit, shown_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in SUBMIT_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._drain(receive, 0)
            return await self._refuse(scope, send, int(length))
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    scope["protlm.too_large"] = self.shown_mb  # the form parser may wrap the exception
                    raise _TooLarge()
            return message

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            seen = await self._drain(receive, seen)
            await self._refuse(scope, send, seen)

    async def _drain(self, receive, seen: int) -> int:
        while seen <= 8 * self.limit:
            message = await receive()
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        return seen

    async def _refuse(self, scope, send, size: int) -> None:
        msg = (f"the upload is {size / MB:.1f} MB; this server takes at most {self.shown_mb:g} MB per submission "
               f"(split the file)")
        if scope["path"] == "/jobs":
            body, ctype = _index_page(None, error=msg).encode(), b"text/html; charset=utf-8"
        else:
            body, ctype = json.dumps({"detail": msg}).encode(), b"application/json"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- pages

_PREDICTORS: dict | None = None


def _predictors() -> dict:
    global _PREDICTORS
    if _PREDICTORS is None:
        from protlm.predictors import available

        _PREDICTORS = available()
    return _PREDICTORS


def _page(title: str, body: str, *, script: bool = False, report_css: bool = False) -> str:
    css = f"<style>{report.CSS}</style>" if report_css else ""
    js = '<script src="/static/serve.js" defer></script>' if script else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><link rel=\"stylesheet\" href=\"/static/serve.css\">{css}{js}</head>"
            f"<body>\n<header><a href=\"/\">protlm serve</a> <span class=\"meta\">{_e(__version__)}</span> · "
            f"<a href=\"/docs\">API</a></header>\n{body}\n</body></html>\n")


def _kept(keep_days: float | None) -> str:
    return (f"Results are deleted {keep_days:g} day{'s' if keep_days != 1 else ''} after their job finished (this "
            f"server's --keep-days); a job's page can delete them sooner." if keep_days is not None else
            "Results are kept until their job's page deletes them.")


def _index_page(limits: Limits | None, error: str | None = None, keep_days: float | None = None,
                notice: str | None = None) -> str:
    from protlm.predictors.predictor import DEFAULT_EMBEDDER, default_names, split_name

    limits = limits or _LIMITS
    ticked = set(default_names())  # the default set (contacts are opt-in: unticked)
    sets: dict[str, list[str]] = {}  # one row of boxes per embedder, the default's first and ticked
    for name, card in _predictors().items():
        task, embedder = split_name(name)
        sets.setdefault(embedder, []).append(
            f"<label title=\"{_e(card.get('headline', ''))}\"><input type=\"checkbox\" name=\"tasks\" "
            f"value=\"{_e(name)}\"{' checked' if name in ticked else ''}> {_e(task)}</label>")
    rows = []
    for embedder in sorted(sets, key=lambda e: (e != DEFAULT_EMBEDDER, e)):
        what = ("the default: fast" if embedder == DEFAULT_EMBEDDER else
                "larger: more accurate, much slower to embed; hover a name for its test result")
        rows.append(f"<p class=\"set\" data-embedder=\"{_e(embedder)}\"><span class=\"meta\">{_e(embedder)} "
                    f"({what}):</span> {''.join(sets[embedder])}</p>")
    err = f"<p id=\"error\" class=\"error\" role=\"alert\">{_e(error)}</p>" if error else \
        "<p id=\"error\" class=\"error\" role=\"alert\" hidden></p>"
    if notice:
        err = f"<p id=\"notice\" class=\"note\" role=\"status\">{_e(notice)}</p>" + err
    body = f"""<h1>Predict from sequence</h1>
<p class="meta">protlm's shipped predictors (secondary structure Q3/Q8, localization, stability, SCOP class), one
per task and embedder: the UniRep-64 set, and larger embedders' where shipped; every result comes with its model
card. Runs on this machine only.</p>
{err}
<form id="submit" method="post" action="/jobs" enctype="multipart/form-data"
      data-max-bytes="{limits.max_upload_bytes}" data-max-mb="{limits.max_upload_bytes / MB:g}">
<p><label for="sequences">Paste FASTA, or one bare protein sequence</label><br>
<textarea id="sequences" name="sequences" rows="10" cols="80" spellcheck="false"
 placeholder=">my_protein&#10;MKTAYIAKQRQISFVKSHFSRQ..."></textarea></p>
<p><label for="file">or upload a FASTA file</label> <input type="file" id="file" name="file"
 accept=".fa,.fasta,.faa,.fas,.txt,text/plain"></p>
<fieldset><legend>Predictors</legend>{''.join(rows)}</fieldset>
<p><button type="submit" id="run">Predict</button></p>
</form>
<p class="note">Limits of this server: {limits.max_upload_bytes / MB:g} MB per submission,
{limits.max_sequences:,} proteins and {limits.max_residues:,} residues per job, {limits.max_length:,} residues per
protein, {limits.max_jobs} jobs waiting at once. Letters: the 20 amino acids, X, and B/O/U/Z (read as X).
Results are kept on this machine under their job id (the address of the job's page); nobody can list them.
{_e(_kept(keep_days))}</p>"""
    return _page("protlm serve", body, script=True)


def _report_body(doc: str, index_href: str, report_href: str | None = None) -> str | None:
    """A protein page's body for the job's page: its links to the index (and, with
    ``report_href``, to the report's other files: a contact map's npz) made absolute."""
    m = re.search(r"<body>\s*(.*)\s*</body>", doc, re.S)
    if not m:
        return None
    body = m.group(1).replace('href="../index.html"', f'href="{_e(index_href)}"')
    return body.replace('href="../', f'href="{_e(report_href)}/') if report_href else body


def _button(jid: str, action: str, label: str) -> str:
    """A form with one button posting to /jobs/<id>/<action> (works without script)."""
    return (f"<form class=\"inline\" method=\"post\" action=\"/jobs/{_e(jid)}/{action}\">"
            f"<button type=\"submit\" id=\"{action}\">{_e(label)}</button></form>")


def _job_page(store: JobStore, job: dict) -> str:
    jid = job["id"]
    state = job["state"]
    head = (f"<h1>Job <code>{_e(jid[:8])}…</code></h1><p class=\"meta\">{_e(job['source'])} · "
            f"{job['proteins']:,} protein{'s' if job['proteins'] != 1 else ''} · {job['residues']:,} residues · {_e(', '.join(job['tasks']))}</p>")
    delete = _button(jid, "delete", "Delete this job")
    if state in ("queued", "running"):
        done, total = job["progress"]["done"], max(job["progress"]["total"], 1)
        stopping = store.cancel_requested(jid)
        status = f"{state}: {done:,} of {total:,} residues" + (" (cancelling: it stops after the part it is on)"
                                                                 if stopping else "")
        body = (f"{head}<div id=\"job\" data-job=\"{_e(jid)}\" data-state=\"{_e(state)}\">"
                f"<p id=\"status\">{_e(status)}</p>"
                f"<progress id=\"progress\" max=\"{total}\" value=\"{done}\"></progress>"
                f"<p class=\"note\">This page updates itself; you may close it and come back to this address.</p>"
                f"{'' if stopping else _button(jid, 'cancel', 'Cancel this job')}</div>")
        return _page("protlm job", body, script=True)
    if state == "failed":
        body = (f"{head}<p id=\"error\" class=\"error\" role=\"alert\">{_e(job['error'])}</p>"
                f"<p><a href=\"/\">Submit again</a></p>{delete}")
        return _page("protlm job failed", body)
    if state == "cancelled":
        done, total = job["progress"]["done"], job["progress"]["total"]
        body = (f"{head}<p id=\"cancelled\" role=\"status\">Cancelled after {done:,} of {total:,} residues; "
                f"no results were kept.</p><p><a href=\"/\">Submit again</a></p>{delete}")
        return _page("protlm job cancelled", body)
    api = f"/api/jobs/{jid}"
    parts = [head, f"<p id=\"downloads\"><a id=\"csv\" href=\"{api}/results.csv\" download>predictions.csv</a> · "
                   f"<a id=\"json\" href=\"{api}/results\" download=\"predictions.json\">predictions.json</a> · "
                   f"<a id=\"report\" href=\"/jobs/{jid}/report/index.html\">the full report</a> "
                   f"<span class=\"meta\">({job['result']['seconds']:.1f} s)</span></p>{delete}"]
    from protlm.io.outputs import safe_names

    ids = store.ids(jid)
    pages = safe_names(ids)
    folder = store.folder(jid) / OUT / "proteins"
    shown = ids[:INLINE_PROTEINS]
    if len(ids) > len(shown):
        parts.append(f"<p class=\"note\">The first {len(shown)} of {len(ids):,} proteins below; "
                     f"<a href=\"/jobs/{jid}/report/index.html\">the full report</a> lists them all.</p>")
    for pid in shown:
        try:
            doc = (folder / f"{pages[pid]}.html").read_text(encoding="utf-8")
        except OSError:
            doc = ""
        inner = _report_body(doc, f"/jobs/{jid}/report/index.html", f"/jobs/{jid}/report")
        parts.append(f"<section class=\"protein\" data-id=\"{_e(pid)}\">{inner}</section>" if inner else
                     f"<p>{_e(pid)}: <a href=\"/jobs/{jid}/report/proteins/{_e(pages[pid])}.html\">report</a></p>")
    return _page("protlm results", "\n".join(parts), report_css=True)


# --------------------------------------------------------------------------- the application

_LIMITS = Limits()


def create_app(data_dir: str | Path, limits: Limits | None = None, *, cache_dir: str | None = None,
               threads: int | None = None, keep_days: float | None = None) -> "BodyLimit":
    """The ASGI application (the FastAPI app is its ``.app``); its worker process starts with the
    server (lifespan) and stops with it. ``keep_days``: finished jobs are deleted that long after
    they finished (None: kept until deleted)."""
    global _LIMITS
    limits = limits or Limits()
    limits.check()
    _LIMITS = limits
    store = JobStore.open(data_dir)
    worker = Worker(store, cache_dir=cache_dir, threads=threads,
                    keep_seconds=keep_days * 86400 if keep_days is not None else None)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="protlm serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="protlm's shipped predictors (docs/predictors.md) as a local JSON API. Submit "
                              "sequences as a job, poll its state, fetch its results. Errors: a 4xx status "
                              "with `{\"detail\": \"one line\"}`.")
    app.state.store, app.state.worker, app.state.limits = store, worker, limits
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # a job's address is its key
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(SubmitError)
    async def submit_error(request: Request, exc: SubmitError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # never a traceback to the user
        log.exception("%s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error; the server's log has the details"}, status_code=500)

    def job_or_404(job_id: str) -> dict:
        try:
            job = store.checked(job_id)
        except DamagedJob as exc:  # reported as such, so the user knows to delete it (DELETE still works)
            raise StarletteHTTPException(410, str(exc)) from None
        if job is None:
            raise StarletteHTTPException(404, "no such job (job ids are the long random strings a submission "
                                              "returns)")
        return job

    def change(action, job_id: str) -> None:
        """Cancel or delete a job: 404 for no such job, 409 when its state does not allow it."""
        try:
            action(job_id)
        except KeyError:
            job_or_404(job_id)
        except DamagedJob as exc:
            raise StarletteHTTPException(410, str(exc)) from None
        except JobStateError as exc:
            raise StarletteHTTPException(409, str(exc)) from None

    def result_file(job_id: str, name: str) -> Path:
        job = job_or_404(job_id)
        if job["state"] == "cancelled":
            raise StarletteHTTPException(409, "job cancelled: it has no results (a cancelled job keeps none)")
        if job["state"] != "done":
            raise StarletteHTTPException(409, f"job {job['state']}" + (f": {job['error']}" if job["error"] else
                                                                       "; results come when it is done"))
        path = store.folder(job_id) / OUT / name
        if not path.exists():  # a done job whose results were removed on the server: not a 500
            raise StarletteHTTPException(410, f"this job's results are missing on the server ({name or OUT} "
                                              "is gone); delete the job and submit again")
        return path

    async def submission(request: Request):
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise SubmitError("send a form (multipart/form-data or application/x-www-form-urlencoded) with the field "
                              "'sequences' (text) or 'file' (a FASTA file), and optionally 'tasks'", 415)
        try:
            # raw bytes of a urlencoded body: starlette decodes its values as latin-1, which would turn
            # non-UTF-8 bytes into other letters instead of the "not UTF-8" refusal (the body is capped by
            # BodyLimit, and request.form() reads this cached copy)
            raw = await request.body() if ctype.startswith("application/x-www-form-urlencoded") else None
            # parts are capped by BodyLimit's whole-body limit; a smaller part cap here would answer a long
            # paste with the parser's own 400 instead of parse()'s 413 that says this server's limit
            form = await request.form(max_files=1, max_fields=32,
                                      max_part_size=limits.max_upload_bytes + FORM_OVERHEAD)
        except Exception as exc:  # noqa: BLE001 — starlette's MultiPartException / HTTPException: a bad form
            if "protlm.too_large" in request.scope:  # a body without Content-Length that ran over the limit
                raise SubmitError(f"the upload is over this server's limit of {limits.max_upload_bytes / MB:g} MB per "
                                  f"submission (split the file)", 413) from None
            detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
            raise SubmitError(f"the form could not be read: {detail}") from None
        text, upload = form.get("sequences"), form.get("file")
        if isinstance(text, UploadFile):  # a file sent under the text field's name
            text, upload = None, text
        has_text = isinstance(text, str) and text.strip() != ""
        has_file = isinstance(upload, UploadFile) and bool(upload.filename or upload.size)
        if has_text and has_file:
            raise SubmitError("give pasted sequences or a file, not both")
        if not has_text and not has_file:
            raise SubmitError("no sequences: paste a protein sequence (or FASTA) or choose a FASTA file")
        tasks = parse_tasks([v for v in form.getlist("tasks") if isinstance(v, str)])
        if has_file:
            source = display_name(upload.filename)
            if upload.size is not None and upload.size > limits.max_upload_bytes:  # its real size, not the cap read
                raise SubmitError(f"{source}: {size_mb(upload.size, limits.max_upload_bytes)} MB is over this "
                                  f"server's limit of {limits.max_upload_bytes / MB:g} MB per submission", 413)
            data = await upload.read(limits.max_upload_bytes + 1)
        else:
            data, source = _raw_field(raw, "sequences") if raw is not None else text.encode("utf-8"), "pasted text"
        if worker.pending() >= limits.max_jobs:
            raise SubmitError(f"the server is busy: {limits.max_jobs} jobs are waiting or running (its limit); try "
                              f"again when one has finished", 429)
        sub = await run_in_threadpool(parse, data, source, limits)
        job = await run_in_threadpool(store.create, sub, tasks)
        worker.submit(job["id"])
        return job

    # ---------------------------------------------------------------- the API

    @app.post("/api/jobs", status_code=202, tags=["jobs"], summary="Submit sequences as a job",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "properties": {
                      "sequences": {"type": "string", "description": "FASTA text, or one bare protein sequence"},
                      "file": {"type": "string", "format": "binary", "description": "a FASTA file (plain text)"},
                      "tasks": {"type": "string", "description": "predictors, as protlm predict --tasks: TASK "
                                "or TASK@EMBEDDER (TASK: a name or short name: ss, loc, membrane, scop, stability; "
                                "e.g. ss@unirep1900; no @: UniRep-64), comma- or space-separated, or the field "
                                "repeated; default: the UniRep-64 predictors (GET /api/predictors lists them "
                                "all)"}}}}}}},
              responses={400: {"description": "bad input (the message says what)"},
                         413: {"description": "over a limit (upload size, sequences, residues)"},
                         415: {"description": "not a form"}, 429: {"description": "too many jobs waiting"}})
    async def submit(request: Request) -> JSONResponse:
        """Give `sequences` (text) or `file` (a FASTA upload), not both. The sequences are checked
        (letters, empty records, duplicate ids, this server's limits) before the job is queued; the
        answer holds the job's id — the only way to its state and results."""
        job = await submission(request)
        return JSONResponse(_public(job, store), status_code=202)

    @app.get("/api/jobs/{job_id}", tags=["jobs"], summary="A job's state and progress",
             responses={404: {"description": "no such job"}})
    async def job_state(job_id: str) -> dict:
        """`state`: queued, running, done, failed (`error` says why) or cancelled; `progress`: residues done
        of total; `cancel_requested`: a cancel was asked for (a running job stops after the part it is on)."""
        return _public(job_or_404(job_id), store)

    @app.get("/api/jobs/{job_id}/results", tags=["jobs"], summary="A done job's predictions (JSON)",
             responses={404: {"description": "no such job"}, 409: {"description": "not done (yet)"}})
    async def results_json(job_id: str):
        """predictions.json of `protlm predict`: the predictors' model-card summaries, then one record per
        protein with every number (per-residue states with each class's probability, per-protein labels
        with every class's probability, values)."""
        return FileResponse(result_file(job_id, "predictions.json"), media_type="application/json")

    @app.get("/api/jobs/{job_id}/results.csv", tags=["jobs"], summary="A done job's predictions (CSV)",
             responses={404: {"description": "no such job"}, 409: {"description": "not done (yet)"}})
    async def results_csv(job_id: str):
        """predictions.csv of `protlm predict`: one row per protein, predictor and target."""
        return FileResponse(result_file(job_id, "predictions.csv"), media_type="text/csv",
                            filename=f"protlm-{job_id[:8]}.csv")

    @app.post("/api/jobs/{job_id}/cancel", status_code=202, tags=["jobs"], summary="Cancel a queued or running job",
              responses={404: {"description": "no such job"}, 409: {"description": "the job has finished"}})
    async def cancel(job_id: str) -> JSONResponse:
        """A queued job is cancelled at once (`state`: cancelled); a running one stops after the part it
        is on (`cancel_requested`: true until its `state` is cancelled). Its partial results are not kept."""
        await run_in_threadpool(change, store.cancel, job_id)
        return JSONResponse(_public(job_or_404(job_id), store), status_code=202)

    @app.delete("/api/jobs/{job_id}", tags=["jobs"], summary="Delete a finished job",
                responses={404: {"description": "no such job"}, 409: {"description": "queued or running: cancel it "
                                                                                      "first"}})
    async def delete(job_id: str) -> dict:
        """Removes a done, failed or cancelled job's sequences and results from the server; its id is
        then unknown (404)."""
        await run_in_threadpool(change, store.delete, job_id)
        return {"id": job_id, "deleted": True}

    @app.get("/api/predictors", tags=["predictors"], summary="The predictors and their model cards")
    async def predictors() -> dict:
        """Every shipped predictor's name (TASK, or TASK@EMBEDDER off UniRep-64) with its model card (task,
        data, embedder, test results with confidence intervals, licences)."""
        return _predictors()

    # ---------------------------------------------------------------- pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(_index_page(limits, keep_days=keep_days))

    @app.post("/jobs", include_in_schema=False)
    async def submit_form(request: Request):
        """The form without script: a redirect to the job's page, or the form again with the message."""
        try:
            job = await submission(request)
        except SubmitError as exc:
            return HTMLResponse(_index_page(limits, error=str(exc), keep_days=keep_days), status_code=exc.status)
        return RedirectResponse(f"/jobs/{job['id']}", status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def job_page(job_id: str):
        try:
            job = store.checked(job_id)
        except DamagedJob as exc:  # the page says so and offers the one thing that still works
            return HTMLResponse(_page("damaged job", f"<h1>Damaged job</h1><p id=\"error\" class=\"error\">{_e(exc)}"
                                                     f"</p>{_button(job_id, 'delete', 'Delete this job')}"),
                                status_code=410)
        if job is None:
            return HTMLResponse(_page("no such job", "<h1>No such job</h1><p id=\"error\" class=\"error\">No job "
                                                     "has this address.</p>"), status_code=404)
        try:
            return HTMLResponse(await run_in_threadpool(_job_page, store, job))
        except DamagedJob as exc:  # a done job whose input file was removed
            return HTMLResponse(_page("damaged job", f"<h1>Damaged job</h1><p id=\"error\" class=\"error\">{_e(exc)}"
                                                     f"</p>{_button(job_id, 'delete', 'Delete this job')}"),
                                status_code=410)

    @app.post("/jobs/{job_id}/cancel", include_in_schema=False)
    async def cancel_form(job_id: str):
        await run_in_threadpool(change, store.cancel, job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/jobs/{job_id}/delete", include_in_schema=False)
    async def delete_form(job_id: str):
        await run_in_threadpool(change, store.delete, job_id)
        return HTMLResponse(_index_page(limits, keep_days=keep_days, notice=f"Job {job_id[:8]}… was deleted."))

    @app.get("/jobs/{job_id}/report/{name:path}", include_in_schema=False)
    async def report_file(job_id: str, name: str):
        folder = result_file(job_id, "")
        if name == "index.html":
            return FileResponse(result_file(job_id, "index.html"), media_type="text/html")
        if not (folder / "proteins").is_dir():
            result_file(job_id, "proteins")
        sub, _, leaf = name.partition("/")
        # only a name the job's own report folder lists (never a path built from what was asked)
        if sub == "proteins" and leaf in set(p.name for p in (folder / "proteins").iterdir()):
            return FileResponse(folder / "proteins" / leaf, media_type="text/html")
        if sub in _map_folders(folder) and leaf in set(p.name for p in (folder / sub).iterdir()):  # contact maps
            return FileResponse(folder / sub / leaf, media_type="application/octet-stream", filename=leaf)
        raise StarletteHTTPException(404, "no such page in this job's report")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        return HTMLResponse(_docs_page(app.openapi()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/jobs/") and request.method in ("GET", "POST"):
            return HTMLResponse(_page("error", f"<h1>{exc.status_code}</h1><p id=\"error\" class=\"error\">"
                                               f"{_e(exc.detail)}</p>"), status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    # outermost, around FastAPI's own error middleware: a too-large body is answered before any handler
    return BodyLimit(app, limits.max_upload_bytes + FORM_OVERHEAD, limits.max_upload_bytes / MB)


def _raw_field(body: bytes, name: str) -> bytes:
    """The bytes of a urlencoded form field as sent (percent-escapes decoded to bytes, not text)."""
    from urllib.parse import parse_qsl

    for key, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1"):
        if key == name:
            return value.encode("latin-1")
    return b""


def _map_folders(out: Path) -> list[str]:
    """The contact-map folders of a job's report (OUT/contacts/<id>.npz), as its manifest lists them."""
    from protlm.predictors.job import MANIFEST, STATE, map_folders

    return [n for n in map_folders(out / STATE / MANIFEST) if (out / n).is_dir()]


def _public(job: dict, store: JobStore) -> dict:
    out = {k: job[k] for k in ("id", "state", "created", "started", "finished", "source", "proteins", "residues",
                               "tasks", "progress", "error", "result")}
    out["cancel_requested"] = job["state"] in ("queued", "running", "cancelled") and store.cancel_requested(job["id"])
    base = f"/api/jobs/{job['id']}"
    out["links"] = {"self": base, "page": f"/jobs/{job['id']}", "results": f"{base}/results",
                    "results_csv": f"{base}/results.csv", "cancel": f"{base}/cancel"}
    return out


def _docs_page(spec: dict) -> str:
    """The API as a page, from the OpenAPI document (what /openapi.json serves)."""
    parts = [f"<h1>{_e(spec['info']['title'])} API <span class=\"meta\">{_e(spec['info']['version'])}</span></h1>",
             f"<p>{_e(spec['info'].get('description', ''))}</p>",
             "<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI "
             f"{_e(spec.get('openapi', ''))}). Example: <code>curl -F sequences=@my.fa -F tasks=ss,loc "
             "http://127.0.0.1:8000/api/jobs</code>.</p>"]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{_e(method.upper())} {_e(path)}</code> — {_e(op.get('summary', ''))}</h2>")
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            body = (op.get("requestBody") or {}).get("content", {})
            for ctype, media in body.items():
                props = (media.get("schema") or {}).get("properties", {})
                rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(v.get('format', v.get('type', '')))}</td>"
                               f"<td>{_e(v.get('description', ''))}</td></tr>" for k, v in props.items())
                parts.append(f"<p class=\"meta\">request body: {_e(ctype)} (or application/x-www-form-urlencoded)"
                             f"</p><table><tr><th>field</th><th>type</th><th></th></tr>{rows}</table>")
            codes = "".join(f"<tr><td>{_e(code)}</td><td>{_e(r.get('description', ''))}</td></tr>"
                            for code, r in op.get("responses", {}).items())
            parts.append(f"<table><tr><th>status</th><th>meaning</th></tr>{codes}</table>")
    return _page("protlm serve API", "\n".join(parts), report_css=True)
