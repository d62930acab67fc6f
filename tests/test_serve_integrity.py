"""``protlm serve`` answers damaged jobs, oversized and non-UTF-8 submissions and cancelled jobs' results
with one clear 4xx message, never a 500. Driven in-process through ASGI (no worker, no model run)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="protlm serve needs fastapi")

from protlm.serve.app import create_app  # noqa: E402
from protlm.serve.inputs import MB, Limits  # noqa: E402
from protlm.serve.jobs import JOB_JSON, OUT  # noqa: E402

JOB_ID = "A" * 24


def call(app, method: str, path: str, body: bytes = b"", ctype: str | None = None) -> tuple[int, str]:
    """One request to the ASGI app (the lifespan, hence the worker, is not started)."""
    headers = [(b"content-length", str(len(body)).encode())] + ([(b"content-type", ctype.encode())] if ctype else [])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent, out = [False], {"status": 0, "body": b""}

    async def receive():
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"].decode("utf-8", "replace")


def _job(data: Path, state: str = "done") -> Path:
    folder = data / "jobs" / JOB_ID
    folder.mkdir(parents=True)
    (folder / "input.fasta").write_text(">a\nMKV\n")
    (folder / JOB_JSON).write_text(json.dumps({
        "id": JOB_ID, "state": state, "created": 1.0, "started": 1.0, "finished": 2.0, "source": "pasted text",
        "proteins": 1, "residues": 3, "tasks": ["ss"], "progress": {"done": 3, "total": 3}, "error": None,
        "result": {"proteins": 1, "residues": 3, "predictors": ["ss"], "seconds": 0.1} if state == "done" else None}))
    return folder


@pytest.fixture
def app(tmp_path):
    return create_app(tmp_path / "serve", Limits(max_upload_bytes=1 * MB))


@pytest.mark.parametrize("damage", ["[]", '{"id": "x"', ""])
def test_a_damaged_job_is_reported_and_can_be_deleted(app, tmp_path, damage):
    (_job(tmp_path / "serve") / JOB_JSON).write_text(damage)
    for path in (f"/api/jobs/{JOB_ID}", f"/api/jobs/{JOB_ID}/results", f"/jobs/{JOB_ID}"):
        status, body = call(app, "GET", path)
        assert status == 410 and "damaged" in body and "delete it" in body, (path, status, body)
    status, body = call(app, "DELETE", f"/api/jobs/{JOB_ID}")
    assert status == 200, body
    assert call(app, "GET", f"/api/jobs/{JOB_ID}")[0] == 404


def test_a_done_job_without_its_results_is_not_a_500(app, tmp_path):
    folder = _job(tmp_path / "serve")
    (folder / OUT).mkdir()
    for path in (f"/api/jobs/{JOB_ID}/results", f"/api/jobs/{JOB_ID}/results.csv",
                 f"/jobs/{JOB_ID}/report/index.html"):
        status, body = call(app, "GET", path)
        assert status == 410 and "missing" in body, (path, status, body)
    (folder / "input.fasta").unlink()  # the job page lists the proteins from its input: gone, not a 500
    status, body = call(app, "GET", f"/jobs/{JOB_ID}")
    assert status == 410 and "input file is missing" in body and "Delete this job" in body, (status, body)


def test_a_cancelled_job_says_it_has_no_results(app, tmp_path):
    _job(tmp_path / "serve", "cancelled")
    status, body = call(app, "GET", f"/api/jobs/{JOB_ID}/results")
    assert status == 409 and "cancelled" in body and "no results" in body and "come when" not in body, body


def _multipart(field: str, data: bytes, filename: str | None = None) -> tuple[bytes, str]:
    disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    body = (b"--XyZ\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
    return body, "multipart/form-data; boundary=XyZ"


def test_over_the_limit_is_413_with_the_true_size(app):
    text = b">a\n" + b"M" * (MB + MB // 2)  # 1.5 MB: over the 1 MB limit, under the form's overhead allowance
    status, body = call(app, "POST", "/api/jobs", *_multipart("sequences", text))
    assert status == 413 and "limit of 1 MB" in body and "Part exceeded" not in body, body
    status, body = call(app, "POST", "/api/jobs", *_multipart("file", b">a\n" + b"M" * (MB + MB // 25), "x.fa"))
    assert status == 413 and "1.04 MB is over" in body, body


def test_a_paste_that_is_not_utf8_is_refused(app):
    for text in (b">a\xff\xfeb\nMKTAYIAKQR", b">a\nMKT\xffAYIAKQR", b">a%FF%FEb\nMKTAYIAKQR"):
        status, body = call(app, "POST", "/api/jobs", b"sequences=" + text + b"&tasks=ss",
                            "application/x-www-form-urlencoded")
        assert status == 400 and "not UTF-8" in body and "0xff" in body, (text, body)
