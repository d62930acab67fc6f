"""A small client of the ``protlm serve`` API (standard library only), for scripts and tests::

    from protlm.serve.client import Client
    c = Client("http://127.0.0.1:8000")
    job = c.submit(">p1\\nMKTAYIAKQR...\\n", tasks=["ss", "loc"])   # or file=("my.fa", b"...")
    c.wait(job["id"])                                              # the job's state when done or failed
    c.results(job["id"])                                           # predictions.json as a dict

A 4xx answer raises :class:`ApiError` with the status and the server's one-line message.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def multipart(fields: list[tuple[str, str | tuple[str, bytes]]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type: (name, text) or (name, (filename, bytes))."""
    boundary = secrets.token_hex(16)
    out = []
    for name, value in fields:
        if isinstance(value, tuple):
            filename, data = value
            out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                       f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        else:
            out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
                       + value.encode() + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, base: str, timeout: float = 60.0):
        self.base, self.timeout = base.rstrip("/"), timeout

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None
                ) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def _json(self, method: str, path: str, body=None, ctype=None):
        status, data, _ = self.request(method, path, body, ctype)
        doc = json.loads(data) if data else {}
        if status >= 400:
            raise ApiError(status, doc.get("detail", "") if isinstance(doc, dict) else str(doc))
        return doc

    def submit(self, sequences: str | None = None, *, file: tuple[str, bytes] | None = None,
               tasks: list[str] | None = None) -> dict:
        fields: list = []
        if sequences is not None:
            fields.append(("sequences", sequences))
        if file is not None:
            fields.append(("file", file))
        for t in tasks or []:
            fields.append(("tasks", t))
        body, ctype = multipart(fields)
        return self._json("POST", "/api/jobs", body, ctype)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/api/jobs/{job_id}")

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict:
        """The job once done, failed or cancelled (TimeoutError after ``timeout`` seconds)."""
        end = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in ("done", "failed", "cancelled"):
                return job
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/api/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> dict:
        return self._json("DELETE", f"/api/jobs/{job_id}")

    def results(self, job_id: str) -> dict:
        return self._json("GET", f"/api/jobs/{job_id}/results")

    def results_csv(self, job_id: str) -> str:
        status, data, _ = self.request("GET", f"/api/jobs/{job_id}/results.csv")
        if status >= 400:
            raise ApiError(status, json.loads(data).get("detail", ""))
        return data.decode()

    def predictors(self) -> dict:
        return self._json("GET", "/api/predictors")
