"""The ``profile:`` embedder's failure modes (issue 24 items 5, 6, 17, 18): lower-case databases,
a database file changed mid-run, SIGTERM / kill -9 during a search, lost logs, over-long queries
and a full cache disk. Tiny databases; a shell wrapper around the real ``mmseqs`` stands in for a
long or failing step."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from protlm.align import mmseqs as mm
from protlm.cli.main import main
from protlm.data.alphabet import STANDARD
from protlm.embed.registry import resolve
from protlm.errors import InputError

MMSEQS = shutil.which("mmseqs")
pytestmark = pytest.mark.skipif(MMSEQS is None,
                                reason="MMseqs2 binary 'mmseqs' not installed (apt-get install mmseqs2)")


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """A query, 12 homologs (~30% mutated) and 30 decoys, as upper-case and lower-case FASTA."""
    rng = random.Random(11)
    root = tmp_path_factory.mktemp("profile_safety")
    query = "".join(rng.choice(STANDARD) for _ in range(100))
    homologs = ["".join(rng.choice(STANDARD) if rng.random() < 0.3 else c for c in query) for _ in range(12)]
    decoys = ["".join(rng.choice(STANDARD) for _ in range(rng.randint(60, 150))) for _ in range(30)]
    text = "".join(f">h{i} Homolog\n{s}\n" for i, s in enumerate(homologs)) + \
        "".join(f">d{i} Decoy\n{s}\n" for i, s in enumerate(decoys))
    upper, lower = root / "upper.fasta", root / "lower.fasta"
    upper.write_text(text)
    lower.write_text("".join(ln if ln.startswith(">") else ln.lower() for ln in text.splitlines(True)))
    return {"root": root, "query": query, "upper": upper, "lower": lower}


def _wrapper(tmp_path: Path, search: str) -> Path:
    """An ``mmseqs`` that runs the real one, except ``mmseqs search``, which runs ``search`` (sh)."""
    path = tmp_path / "mmseqs"
    path.write_text(f'#!/bin/sh\nif [ "$1" = search ]; then\n{search}\nfi\nexec "{MMSEQS}" "$@"\n')
    path.chmod(0o755)
    return path


# a search that hangs in a grandchild, as mmseqs' own prefilter does under its shell script
HANG = """sh -c 'echo $$ > "$PROTLM_TEST_PIDFILE.tmp"; mv "$PROTLM_TEST_PIDFILE.tmp" "$PROTLM_TEST_PIDFILE"; \\
  exec sleep 60'
exit 1"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def _wait_for(check, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


def _hanging_run(tmp_path: Path, fam, code: str) -> tuple[subprocess.Popen, int]:
    """Start ``code`` in a new Python with the hanging wrapper; returns it and the hung grandchild's pid."""
    pidfile = tmp_path / "grandchild.pid"
    env = {**os.environ, mm.BINARY_ENV: str(_wrapper(tmp_path, HANG)), "PROTLM_TEST_PIDFILE": str(pidfile)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not _wait_for(pidfile.exists):
        proc.kill()
        pytest.fail(f"the search never started: {proc.communicate()}")
    return proc, int(pidfile.read_text())


def test_lower_case_database_is_upper_cased(fam, tmp_path):
    """item 5: a lower-case FASTA gave empty profiles (depth 0.100: no hits), without a word."""
    cache = tmp_path / "cache"
    up = resolve(f"profile:{fam['upper']},threads=1,iterations=1,cache={cache}")
    low = resolve(f"profile:{fam['lower']},threads=1,iterations=1,cache={cache}")
    (a,) = up.forward([fam["query"]])
    (b,) = low.forward([fam["query"]])
    depth = mm.COLUMNS.index("depth")
    assert a[:, depth].mean() > np.log10(6) / 3  # the homologs are there
    np.testing.assert_array_equal(a, b)  # the lower-case copy is searched as the same database
    # what is searched names the caches: a lower-case build of before the fix is never reused
    assert low.db.uppercased and not up.db.uppercased
    assert low.db.folder.name.endswith("-upper") and not up.db.folder.name.endswith("-upper")
    assert "upper-cased" in low.fingerprint() and "upper-cased" not in up.fingerprint()
    assert low.describe()["database_uppercased"] is True
    assert json.loads((low.db.folder / "meta.json").read_text())["uppercased"] is True


def test_database_changed_after_the_checksum_is_refused(fam, tmp_path):
    """item 6: the checksum was taken when the embedder was made, the database built from whatever the
    file held at the first search, and cached under the old checksum."""
    fasta = tmp_path / "db.fasta"
    fasta.write_text(fam["upper"].read_text())
    db = mm.TargetDatabase(fasta, cache_dir=tmp_path / "cache", threads=1)
    with open(fasta, "a") as f:
        f.write(">late\nMKVLAAGIVGLLLAQ\n")
    with pytest.raises(InputError, match="changed while protlm was using it"):
        db.prepare()
    assert not db.ready and not list((tmp_path / "cache" / "db").glob(".*tmp*"))
    fresh = mm.TargetDatabase(fasta, cache_dir=tmp_path / "cache", threads=1)
    assert fresh.sha256 != db.sha256 and fresh.prepare()["sequences"] == 43


def test_sigterm_ends_the_whole_mmseqs_process_group(fam, tmp_path):
    """item 17: SIGTERM left ``mmseqs prefilter`` running at 100% CPU in a deleted work folder."""
    cache = tmp_path / "cache"
    (tmp_path / "q.fasta").write_text(f">q\n{fam['query']}\n")
    proc, grandchild = _hanging_run(tmp_path, fam, f"""
        import sys
        from protlm.cli.main import main
        sys.exit(main(["embed", "--model", "profile:{fam['upper']},threads=1,cache={cache}",
                       "--input", "q.fasta", "--output", "o.h5"]))
    """)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    try:
        assert proc.returncode == 143, err
        assert "Traceback" not in err and "terminated" in err
        assert _wait_for(lambda: _gone(grandchild), 5), "mmseqs' child outlived protlm's SIGTERM"
        assert not list(cache.glob("profiles/*/work-*"))
    finally:
        if not _gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_kill_9_ends_mmseqs_and_the_next_run_removes_its_work_folder(fam, tmp_path):
    """item 17: kill -9 of protlm left mmseqs running and its ``work-*`` folder forever."""
    cache = tmp_path / "cache"
    proc, grandchild = _hanging_run(tmp_path, fam, f"""
        from protlm.align import mmseqs as mm
        db = mm.TargetDatabase("{fam['upper']}", cache_dir="{cache}", threads=1)
        mm.ProfileBuilder(db, mm.SearchParams(iterations=1), threads=1).features(["{fam['query']}"])
    """)
    proc.kill()
    proc.communicate(timeout=30)
    try:
        assert _wait_for(lambda: _gone(grandchild), 5), "mmseqs' child outlived protlm's kill -9"
    finally:
        if not _gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)
    left = list(cache.glob("profiles/*/work-*"))
    assert len(left) == 1 and str(proc.pid) in left[0].name
    db = mm.TargetDatabase(fam["upper"], cache_dir=cache, threads=1)
    mm.ProfileBuilder(db, mm.SearchParams(iterations=1), threads=1).features([fam["query"]])
    assert not left[0].exists()


def test_stale_work_folders_only_of_dead_owners_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = mm._owner().rsplit("-", 1)[0]
    mine = tmp_path / f"work-{host}-{os.getpid()}-abc123"
    gone = tmp_path / f"work-{host}-{dead.pid}-abc123"
    elsewhere = tmp_path / f"work-otherhost-{dead.pid}-abc123"  # a shared cache: another machine's run
    legacy_new, legacy_old = tmp_path / "work-k2j4_x1", tmp_path / "work-a8c0zz9q"
    for p in (mine, gone, elsewhere, legacy_new, legacy_old):
        p.mkdir()
    os.utime(legacy_old, (time.time() - mm.STALE_UNOWNED_S - 60,) * 2)
    assert sorted(mm.sweep_stale(tmp_path, "work-*")) == sorted([gone, legacy_old])
    assert mine.exists() and elsewhere.exists() and legacy_new.exists()


def test_a_failed_step_keeps_its_log(fam, tmp_path, monkeypatch):
    """item 18: the error named a log inside the work folder that had just been deleted."""
    monkeypatch.setenv(mm.BINARY_ENV, str(_wrapper(tmp_path, 'echo "Error: injected prefilter failure"\nexit 3')))
    db = mm.TargetDatabase(fam["upper"], cache_dir=tmp_path / "cache", threads=1)
    with pytest.raises(mm.MMseqsFailed, match="injected prefilter failure") as exc:
        mm.ProfileBuilder(db, mm.SearchParams(iterations=1), threads=1).features([fam["query"]])
    log = Path(re.search(r"full log: (\S+)\)", str(exc.value))[1])
    assert log.is_file() and log.parent == tmp_path / "cache" / "logs"
    assert "injected prefilter failure" in log.read_text()
    assert not list((tmp_path / "cache").glob("profiles/*/work-*"))


def test_too_long_protein_is_named_before_any_search(fam, tmp_path, monkeypatch, capsys):
    """item 18: a 70,000-residue query failed on MMseqs2's 65,535-row limit, naming neither the protein
    nor the limit, and took its batch-mates down with it."""
    long = "".join(random.Random(1).choice(STANDARD) for _ in range(70_000))
    db = mm.TargetDatabase(fam["upper"], cache_dir=tmp_path / "cache", threads=1)

    def no_search(*a, **k):
        raise AssertionError("searched")

    monkeypatch.setattr(mm, "search_chunk", no_search)
    with pytest.raises(InputError, match=r"65,535 residues \(first: protein 2 of 2, 70,000 residues\)"):
        mm.ProfileBuilder(db, threads=1).features([fam["query"], long])
    # protlm embed: the backend declares the limit, so the runner names the protein up front ...
    backend = resolve(f"profile:{fam['upper']},threads=1,cache={tmp_path / 'cache'}")
    assert backend.max_residues == mm.MAX_RESIDUES == 65_535
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">ok\n{fam['query']}\n>titan\n{long}\n")
    code = main(["embed", "--model", f"profile:{fam['upper']},threads=1,cache={tmp_path / 'cache'}",
                 "--input", str(fasta), "--output", str(tmp_path / "o.h5"), "--long-policy", "error"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert "titan" in err and "65535" in err


def test_windowed_long_protein_and_its_batch_mates_are_embedded(fam, tmp_path, monkeypatch):
    """With the default --long-policy window the runner searches a too-long protein in windows (a limit
    of 150 stands in for 65,535 to keep this fast) and its batch-mates as usual."""
    from protlm.embed.runner import Embedder

    monkeypatch.setattr(mm, "MAX_RESIDUES", 150, raising=False)
    emb = Embedder(f"profile:{fam['upper']},threads=1,iterations=1,cache={tmp_path / 'cache'}")
    long = fam["query"] * 2
    out = emb.embed([fam["query"], long, fam["query"][:50]])
    assert [a.shape for a in out] == [(100, mm.DIM), (200, mm.DIM), (50, mm.DIM)]
    assert emb.stats.windowed == 1 and not emb.stats.skipped


def test_full_cache_disk_names_the_cache(fam, tmp_path, monkeypatch):
    """item 18: "No space left on device" in the profile cache did not say where."""
    cache = tmp_path / "cache"
    db = mm.TargetDatabase(fam["upper"], cache_dir=cache, threads=1)

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(InputError, match=f"profile cache {cache}: no space left on device"):
        mm.ProfileBuilder(db, mm.SearchParams(iterations=1), threads=1).features([fam["query"]])
    monkeypatch.undo()
    # MMseqs2 itself failing on the full disk: the same line, and its log kept
    full_disk = _wrapper(tmp_path, 'echo "Error: write failed: No space left on device"\nexit 1')
    monkeypatch.setenv(mm.BINARY_ENV, str(full_disk))
    db = mm.TargetDatabase(fam["upper"], cache_dir=cache, threads=1)
    with pytest.raises(InputError, match=f"profile cache {cache}: no space left on device \\(log: {cache}/logs/"):
        mm.ProfileBuilder(db, mm.SearchParams(iterations=1), threads=1).features([fam["query"]])
