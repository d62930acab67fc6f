"""MMseqs2 profiles: a database search per protein, turned into per-residue evolutionary features.

The ProtTrans paper measures its LMs against *evolutionary information*: NetSurfP-2.0 and its kin
read a profile built from a database search for every protein. This module builds such profiles
with MMseqs2 (Steinegger & Söding 2017), the tool ProtTrans timed for its Fig. 9, driving the
``mmseqs`` binary (Debian/Ubuntu package ``mmseqs2``; conda ``bioconda::mmseqs2``; or any binary
named by ``$PROTLM_MMSEQS``).

**Database** (:class:`TargetDatabase`): a user's FASTA (UniRef50/90 in real use; plain, gzipped
or bzip2ed) is turned into an MMseqs2 database (``createdb``) and its k-mer index
(``createindex``) once, in a cache folder keyed by the FASTA's SHA-256
(``$PROTLM_MMSEQS_CACHE``, default ``~/.cache/protlm/mmseqs``), built in a temporary folder and
renamed into place, so an interrupted build is never mistaken for a finished one and two
processes never share a half-built one. Both one-off costs are recorded in its ``meta.json``.
protlm reads the file itself and streams it into ``createdb stdin``, hashing the very bytes it
sends: a database is only published if they are the bytes whose checksum names it (a file changed
after the embedder was made is refused, not cached under its old checksum). Lower-case residues
(soft-masked FASTA) are upper-cased on the way: MMseqs2 keeps them, and its lower-case alignment
letters would count as no residue at all; such a database's cache folder and fingerprint say
``upper-cased``, so profiles of an earlier, lower-case build are never reused.

**Search** (:class:`SearchParams`): the queries of a chunk go through one iterated profile search
(``mmseqs search --num-iterations N -s S -e E --max-seqs M``; defaults 2 iterations, sensitivity
5.7, E-value 1e-3, 300 prefilter hits: MMseqs2's own defaults with NetSurfP-2.0's two
iterations), then ``result2profile`` (``--e-profile E``) and ``profile2pssm`` give MMseqs2's
position-specific scores, and ``convertalis`` gives the final iteration's alignments, from which
the frequency columns are computed. MMseqs2 is far faster on many queries at once (the target
index is read once per search), so :class:`ProfileBuilder` searches many proteins per call.

**Features** (:data:`COLUMNS`, ``L × 43`` float32, exactly one row per query residue):

- 0–19 ``pssm_*``: MMseqs2's PSSM (``profile2pssm``: integer log-odds in BLOSUM62's half-bit
  units, with MMseqs2's sequence weighting, MSA filtering and pseudocounts), through the
  logistic function 1/(1+e^-s) as PSIPRED and NetSurfP-1 feed PSI-BLAST scores to a network;
- 20–39 ``freq_*``: the weighted residue frequencies of the query-anchored alignment (query
  included; Henikoff position-based weights, each sequence's weight the mean of its per-column
  weights; gaps and X not counted), so a protein without hits gets its one-hot row;
- 40 ``gap``: weighted share of the aligned sequences that span the position with a deletion;
- 41 ``info``: information content log2(20) − H(freq) in bits, divided by log2(20);
- 42 ``depth``: log10(1 + sequences with a residue at the position) / 3.

Residue columns follow protlm's alphabet order (``ACDEFGHIKLMNPQRSTVWY``); B/Z/U/O in a query are
searched as X (its row is still there). NetSurfP-2.0 instead reads HHblits HMMs built against
Uniclust30 (20 emission, 7 transition and 3 Neff columns): see docs/profiles.md for how the two
differ.

**Resume** (:class:`ProfileBuilder`): finished chunks are kept as ``.npz`` files keyed by each
protein's SHA-256, in a folder keyed by everything that changes the numbers (database checksum,
search parameters, MMseqs2 version, feature version), so an interrupted run restarts at the first
unfinished chunk and a second run on the same proteins searches nothing.

**Processes and limits**: every ``mmseqs`` step runs in its own process group under a small
guard process that ends the whole group (``mmseqs`` is a wrapper whose workflows fork shell
scripts and then ``prefilter``/``align``) when protlm stops: an exception, Ctrl-C or SIGTERM
kills the group at once, and if protlm itself is killed (``kill -9``) the guard sees its pipe
close and kills the group. Work folders are named after their owner (host and pid); one whose
owner is gone is removed by the next run. A failed step's log is moved to ``<cache>/logs/``
before its work folder goes, and a full disk names the cache folder. Queries longer than
MMseqs2's :data:`MAX_RESIDUES` are refused up front, naming the protein (the ``profile:``
backend declares the limit, so ``protlm embed`` windows such proteins, or refuses them with
``--long-policy error``).
"""

from __future__ import annotations

import bz2
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from protlm.data.alphabet import RARE_TO_X, STANDARD
from protlm.errors import ConfigError, InputError, ProtlmError
from protlm.io.atomic import publish_folder, write_json, write_text, write_npz
from protlm.io.checksums import sha256_file

log = logging.getLogger("protlm.align")

BINARY_ENV = "PROTLM_MMSEQS"
CACHE_ENV = "PROTLM_MMSEQS_CACHE"
#: Bumped whenever the feature columns or their computation change (part of every fingerprint).
FEATURES_VERSION = 1
COLUMNS = ([f"pssm_{a}" for a in STANDARD] + [f"freq_{a}" for a in STANDARD] + ["gap", "info", "depth"])
DIM = len(COLUMNS)
#: ``index=None`` (auto) indexes databases of at least this many sequences: the k-mer index has a
#: fixed-size table (about 0.9 GB even for 200 sequences), so for small databases it costs more
#: than the prefilter's on-the-fly index it replaces.
INDEX_MIN_SEQUENCES = 20_000
#: MMseqs2's longest sequence (``--max-seq-len`` 65,535): a longer query gets a profile cut short.
MAX_RESIDUES = 65_535
#: Work folders of a pre-owner-name protlm (``work-XXXXXXXX``) older than this are removed (seconds).
STALE_UNOWNED_S = 2 * 86_400
_CODE = np.full(256, 22, dtype=np.int8)  # 0..19 residue, 20 deletion, 21 not covered, 22 X/other
for _i, _a in enumerate(STANDARD):
    _CODE[ord(_a)] = _i
_CODE[ord("-")] = 20

INSTALL_HINT = ("install MMseqs2 (Debian/Ubuntu: apt-get install mmseqs2; conda: conda install -c bioconda "
                "mmseqs2) or set $PROTLM_MMSEQS to the mmseqs binary")


class MMseqsFailed(ProtlmError):
    """An ``mmseqs`` step exited non-zero (the message has its last log lines and the log's path)."""

    def __init__(self, what: str, log_path: Path | None = None, *, no_space: bool = False):
        self.what, self.log_path, self.no_space = what, log_path, no_space
        super().__init__(f"{what} (full log: {log_path})" if log_path else what)

    def keep_log(self, folder: Path, name: str) -> "MMseqsFailed":
        """The same error with its log moved to ``folder`` (out of a work folder about to be removed)."""
        if self.log_path is None or not self.log_path.is_file():
            return self
        dest = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(self.log_path, dest)  # same file system as the work folder: a rename, even on a full disk
        except OSError:
            return MMseqsFailed(f"{self.what} (its log could not be kept)", no_space=self.no_space)
        return MMseqsFailed(self.what, dest, no_space=self.no_space)


def _no_space(exc: BaseException, cache_dir: Path) -> InputError | None:
    """A full disk (or quota) under the cache: one line naming the cache folder, else None."""
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        (isinstance(exc, MMseqsFailed) and exc.no_space)
    if not full:
        return None
    where = f" (log: {exc.log_path})" if isinstance(exc, MMseqsFailed) and exc.log_path else ""
    return InputError(f"profile cache {cache_dir}: no space left on device{where}; free space there or give "
                      f"the cache another folder (profile:DB,cache=DIR or ${CACHE_ENV})")


def _owner() -> str:
    """``host-pid`` for the names of work folders, so a later run can tell whose owner is gone."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


_OWNED = re.compile(r"-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[a-z0-9_]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    try:  # a zombie (its parent has not reaped it) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_stale(folder: Path, pattern: str) -> list[Path]:
    """Remove the folders matching ``pattern`` in ``folder`` left by a killed run: those named after
    a process of this host that no longer runs, and unnamed ones (an older protlm) older than
    :data:`STALE_UNOWNED_S`. Returns what was removed."""
    host = _owner().rsplit("-", 1)[0]
    gone = []
    for path in folder.glob(pattern):
        m = _OWNED.search(path.name)
        try:
            if m:
                stale = m["host"] == host and not _alive(int(m["pid"]))
            else:
                stale = time.time() - path.stat().st_mtime > STALE_UNOWNED_S
        except OSError:
            continue
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    if gone:
        log.info("profile: removed %d work folder(s) of runs that were killed: %s", len(gone),
                 ", ".join(p.name for p in gone))
    return gone


#: The guard every ``mmseqs`` step runs under (``python -c GUARD FD mmseqs ARGS…``), as the leader of
#: its own process group: it runs mmseqs in that group and kills the group when the pipe ``FD`` from
#: protlm reads end-of-file — protlm closed it or died, even by SIGKILL, which PR_SET_PDEATHSIG could
#: only pass to the direct child, not to the ``prefilter`` that mmseqs' shell scripts fork.
_GUARD = r"""
import os, signal, subprocess, sys, threading
fd = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:])
def watch():
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, daemon=True).start()
rc = child.wait()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def _run_guarded(cmd: list[str], logf, feed: Callable | None = None) -> int:
    """Run ``cmd`` in its own process group under :data:`_GUARD`; ``feed(pipe)`` writes its stdin.
    Whatever stops this (an exception, Ctrl-C, SIGTERM) kills the whole group first."""
    r, w = os.pipe()  # both ends non-inheritable: only the guard gets r (pass_fds), only we hold w
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD, str(r), *cmd],
                                stdin=subprocess.PIPE if feed else subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(r,))
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    try:
        if feed is not None:
            try:
                feed(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:  # the step stopped reading (it failed): its exit status says why
                pass
        return proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the guard is not reaped yet: its group id is still ours
        except OSError:
            pass
        proc.wait()
        raise
    finally:
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        os.close(w)


def find_binary(binary: str | None = None) -> str:
    """The ``mmseqs`` executable: ``binary``, else ``$PROTLM_MMSEQS``, else ``mmseqs`` on PATH."""
    name = binary or os.environ.get(BINARY_ENV) or "mmseqs"
    found = shutil.which(name)
    if found is None:
        where = f"${BINARY_ENV}={name}" if (not binary and os.environ.get(BINARY_ENV)) else name
        raise InputError(f"profile embedder: MMseqs2 binary {where!r} not found; {INSTALL_HINT}")
    return found


_VERSIONS: dict[str, str] = {}


def mmseqs_version(binary: str) -> str:
    if binary not in _VERSIONS:
        out = subprocess.run([binary, "version"], capture_output=True, text=True)
        _VERSIONS[binary] = out.stdout.strip() or "unknown"
    return _VERSIONS[binary]


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protlm" / "mmseqs"


def run_mmseqs(binary: str, args: Sequence[str], log_path: Path, *, feed: Callable | None = None) -> float:
    """Run one ``mmseqs`` step (its own process group, see :func:`_run_guarded`), its output
    appended to ``log_path``; ``feed(pipe)`` writes its stdin. Seconds taken. Failure raises."""
    t = time.perf_counter()
    with open(log_path, "a") as logf:
        logf.write(f"$ mmseqs {' '.join(map(str, args))}\n")
        logf.flush()
        rc = _run_guarded([binary, *map(str, args)], logf, feed)
    if rc != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        full = any("No space left on device" in ln or "Disk quota exceeded" in ln for ln in lines[-20:])
        raise MMseqsFailed(f"mmseqs {args[0]} failed (exit {rc}): {' | '.join(lines[-3:])}", log_path,
                           no_space=full)
    return time.perf_counter() - t


_LOWER_RESIDUE = re.compile(rb"(?m)^[^>\n]*[a-z]")  # a lower-case letter on a sequence line


def read_fasta_bytes(path: Path, sink: Callable[[bytes], object], block: int = 1 << 22) -> str:
    """Stream the FASTA at ``path`` (plain, gzip — several members too — or bzip2) into ``sink``,
    decompressed; returns the SHA-256 of the file's bytes as read (``sha256sum``'s)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        magic = fh.read(3)
        fh.seek(0)
        if magic[:2] == b"\x1f\x8b":
            new = lambda: zlib.decompressobj(wbits=31)  # noqa: E731
        elif magic == b"BZh":
            new = bz2.BZ2Decompressor
        else:
            new = None
        d, started = (new() if new else None), False
        try:
            while raw := fh.read(block):
                h.update(raw)
                if d is None:
                    sink(raw)
                    continue
                while raw:
                    started = True
                    sink(d.decompress(raw))
                    raw = d.unused_data if d.eof else b""
                    if d.eof:
                        d, started = new(), False  # the next member (bgzip, concatenated files)
        except (zlib.error, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # a read error, a closed pipe: not the data
                raise
            raise InputError(f"profile embedder: database FASTA {str(path)!r} is not a valid compressed file "
                             f"({exc})") from None
        if d is not None and started:
            raise InputError(f"profile embedder: database FASTA {str(path)!r} ends in the middle of its "
                             f"compressed data (a truncated download or copy?)")
    return h.hexdigest()


def scan_fasta(path: Path) -> tuple[str, bool]:
    """(SHA-256 of the file, whether any sequence line has a lower-case letter): one pass."""
    found, rest = False, b""

    def sink(data: bytes) -> None:
        nonlocal found, rest
        if found or not data:
            return
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        found = _LOWER_RESIDUE.search(data, 0, cut) is not None

    sha = read_fasta_bytes(path, sink)
    sink(b"\n")
    return sha, found


@dataclass(frozen=True)
class SearchParams:
    """The iterated search (``mmseqs search``) and the profile's inclusion threshold."""

    iterations: int = 2  # NetSurfP-2.0 / ProtTrans: 2 iterations
    sensitivity: float = 5.7  # MMseqs2's default -s
    evalue: float = 1e-3  # -e of the search and --e-profile of result2profile
    max_seqs: int = 300  # prefilter hits per query (MMseqs2's default)

    def validate(self) -> "SearchParams":
        if not 1 <= self.iterations <= 10:
            raise ConfigError(f"profile: iterations must be 1..10, not {self.iterations}")
        if not 1.0 <= self.sensitivity <= 7.5:
            raise ConfigError(f"profile: sensitivity (s) must be in 1.0..7.5, not {self.sensitivity}")
        if not self.evalue > 0:
            raise ConfigError(f"profile: evalue (e) must be > 0, not {self.evalue}")
        if self.max_seqs < 1:
            raise ConfigError(f"profile: max_seqs must be >= 1, not {self.max_seqs}")
        return self

    def search_args(self) -> list[str]:
        # -a keeps the alignments' backtraces (an iterated search keeps them anyway): convertalis needs them
        return ["--num-iterations", str(self.iterations), "-s", f"{self.sensitivity:g}", "-e", f"{self.evalue:g}",
                "--max-seqs", str(self.max_seqs), "-a"]

    def key(self) -> str:
        return f"it{self.iterations}-s{self.sensitivity:g}-e{self.evalue:g}-m{self.max_seqs}"


class TargetDatabase:
    """A FASTA prepared for MMseqs2 (``createdb`` + ``createindex``), cached by the file's checksum."""

    def __init__(self, fasta: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 binary: str | None = None, threads: int = 1, index: bool | None = None):
        self.fasta = Path(fasta)
        if not self.fasta.is_file():
            raise InputError(f"profile embedder: database FASTA {str(fasta)!r} not found (give a FASTA file, "
                             f"e.g. profile:uniref50.fasta.gz)")
        self.binary = find_binary(binary)
        self.threads = max(1, int(threads))
        self.index = index
        self.sha256 = sha256_file(self.fasta)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        #: Whether the FASTA has lower-case residues, which are upper-cased when its database is built.
        self.uppercased = self._has_lower_case()
        #: What names this database's cache folder and is in every fingerprint: what is searched.
        self.key = self.sha256[:16] + ("-upper" if self.uppercased else "")
        self.folder = self.cache_dir / "db" / self.key
        self.prefix = self.folder / "db"

    def _has_lower_case(self) -> bool:
        """Scanned once per file content (a decompressing pass), remembered next to the databases."""
        memo = self.cache_dir / "db" / f"{self.sha256[:16]}.scan.json"
        try:
            data = json.loads(memo.read_text())
            if data.get("sha256") == self.sha256:
                return bool(data["lower_case_residues"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        sha, lower = scan_fasta(self.fasta)
        if sha != self.sha256:
            raise self._changed(sha)
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_json(memo, {"sha256": sha, "lower_case_residues": lower, "fasta": str(self.fasta.resolve())})
        except OSError as exc:  # a read-only or full cache: scanned again next time (a build says what is wrong)
            log.debug("profile: could not remember the scan of %s in %s: %s", self.fasta, memo, exc)
        return lower

    def _changed(self, now: str) -> InputError:
        return InputError(f"profile embedder: database FASTA {str(self.fasta)!r} changed while protlm was using it "
                          f"(SHA-256 {self.sha256[:16]}… when the embedder was made, {now[:16]}… now); its "
                          f"database was not built. Leave the file alone during a run and start again")

    @property
    def ready(self) -> bool:
        return (self.folder / "meta.json").is_file()

    @property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    def prepare(self, progress: Callable[[str], None] | None = None) -> dict:
        """Build the database and index unless the cache has them; returns ``meta.json``."""
        if self.ready:
            return self.meta
        try:
            return self._build(progress or log.info)
        except (MMseqsFailed, OSError) as exc:
            full = _no_space(exc, self.cache_dir)
            if full is not None:
                raise full from None
            raise

    def _build(self, say: Callable[[str], None]) -> dict:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.folder.parent, ".*.tmp-*")
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.tmp-{_owner()}-", dir=self.folder.parent))
        try:
            logp = tmp / "build.log"
            say(f"profile: building the MMseqs2 database of {self.fasta} (once; cached in {self.folder})"
                + (" with its lower-case residues upper-cased" if self.uppercased else ""))
            sent: list[str] = []

            def feed(pipe):  # the bytes createdb reads are the bytes hashed: no window for a change
                write = (lambda b: pipe.write(b.upper())) if self.uppercased else pipe.write
                sent.append(read_fasta_bytes(self.fasta, write))

            try:
                t_db = run_mmseqs(self.binary, ["createdb", "stdin", tmp / "db", "-v", "2"], logp, feed=feed)
            except MMseqsFailed as exc:
                raise exc.keep_log(self.cache_dir / "logs", f"createdb-{self.key}") from None
            if not sent:
                raise MMseqsFailed("mmseqs createdb exited before reading the whole database FASTA",
                                   logp).keep_log(self.cache_dir / "logs", f"createdb-{self.key}")
            if sent[0] != self.sha256:
                raise self._changed(sent[0])
            with open(tmp / "db.index") as f:
                n = sum(1 for _ in f)
            t_idx = 0.0
            indexed = self.index if self.index is not None else n >= INDEX_MIN_SEQUENCES
            if indexed:
                say(f"profile: indexing {n:,} sequences (once)")
                try:
                    t_idx = run_mmseqs(self.binary, ["createindex", tmp / "db", tmp / "tmp", "--threads",
                                                     self.threads, "-v", "2"], logp)
                except MMseqsFailed as exc:
                    raise exc.keep_log(self.cache_dir / "logs", f"createindex-{self.key}") from None
                shutil.rmtree(tmp / "tmp", ignore_errors=True)
            meta = {"fasta": str(self.fasta.resolve()), "sha256": self.sha256, "uppercased": self.uppercased,
                    "sequences": n, "createdb_s": t_db, "createindex_s": t_idx,
                    "index_threads": self.threads if indexed else 0, "indexed": indexed,
                    "mmseqs_version": mmseqs_version(self.binary),
                    "bytes": sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())}
            write_text(tmp / "meta.json", json.dumps(meta, indent=1))
            try:
                publish_folder(tmp, self.folder)
            except OSError:  # another process finished the same database first: use theirs
                if not self.ready:
                    raise
            say(f"profile: database ready ({n:,} sequences; createdb {t_db:.1f} s, createindex {t_idx:.1f} s)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.meta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def parse_pssm(text: str) -> dict[int, np.ndarray]:
    """``profile2pssm`` text → {query key: L × 20 int scores in protlm's residue order}."""
    out: dict[int, np.ndarray] = {}
    key, rows, order = None, [], None

    def flush():
        if key is not None:
            out[key] = np.asarray(rows, dtype=np.float32).reshape(-1, 20)[:, order]

    for line in text.splitlines():
        if line.startswith("Query profile of sequence"):
            flush()
            key, rows = int(line.rsplit(" ", 1)[1]), []
        elif line.startswith("Pos\t"):
            letters = line.split("\t")[2:]
            if sorted(letters) != sorted(STANDARD):
                raise MMseqsFailed(f"profile2pssm: unexpected columns {letters}")
            order = [letters.index(a) for a in STANDARD]
        elif line.strip():
            rows.append([float(v) for v in line.split("\t")[2:22]])
    flush()
    return out


def alignment_features(query: str, hits: list[tuple[int, str, str]]) -> np.ndarray:
    """Columns 20–42 (frequencies, gap, info, depth) from the query-anchored alignments.

    ``hits``: (0-based query start, query alignment string, target alignment string) per hit.
    """
    L = len(query)
    codes = np.full((len(hits) + 1, L), 21, dtype=np.int8)
    codes[0] = _CODE[np.frombuffer(query.encode(), dtype=np.uint8)]
    for k, (qstart, qaln, taln) in enumerate(hits, start=1):
        qa = np.frombuffer(qaln.encode(), dtype=np.uint8)
        ta = np.frombuffer(taln.encode(), dtype=np.uint8)
        keep = qa != ord("-")  # target insertions have no query column
        pos = qstart + np.arange(int(keep.sum()))
        if pos.size and pos[-1] >= L:
            raise MMseqsFailed("convertalis: an alignment runs past the end of its query")
        codes[k, pos] = _CODE[ta[keep]]
    is_res = codes < 20
    cols = np.broadcast_to(np.arange(L), codes.shape)
    counts = np.zeros((L, 21), dtype=np.float64)
    np.add.at(counts, (cols[is_res], codes[is_res]), 1.0)
    distinct = (counts[:, :20] > 0).sum(1)
    contrib = np.zeros(codes.shape, dtype=np.float64)
    r_idx, c_idx = np.nonzero(is_res)
    contrib[r_idx, c_idx] = 1.0 / (distinct[c_idx] * counts[c_idx, codes[r_idx, c_idx]])
    covered = is_res.sum(1)
    w = np.where(covered > 0, contrib.sum(1) / np.maximum(covered, 1), 0.0)
    freq = np.zeros((L, 20), dtype=np.float64)
    np.add.at(freq, (cols[is_res], codes[is_res]), np.broadcast_to(w[:, None], codes.shape)[is_res])
    res_w = freq.sum(1)
    freq = np.divide(freq, res_w[:, None], out=np.zeros_like(freq), where=res_w[:, None] > 0)
    gap_w = ((codes == 20) * w[:, None]).sum(0)
    gap = np.divide(gap_w, gap_w + res_w, out=np.zeros(L), where=(gap_w + res_w) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(freq > 0, freq * np.log2(freq), 0.0).sum(1)
    info = np.where(res_w > 0, (np.log2(20) - ent) / np.log2(20), 0.0)
    depth = np.log10(1.0 + is_res.sum(0)) / 3.0
    return np.concatenate([freq, gap[:, None], info[:, None], depth[:, None]], axis=1).astype(np.float32)


def search_chunk(queries: Sequence[str], db: TargetDatabase, params: SearchParams, workdir: Path,
                 threads: int = 1) -> list[np.ndarray]:
    """One MMseqs2 run for all ``queries`` → one ``L × 43`` array per query, in order."""
    workdir.mkdir(parents=True, exist_ok=True)
    logp = workdir / "mmseqs.log"
    cleaned = [q.upper().translate(RARE_TO_X) for q in queries]
    with open(workdir / "q.fasta", "w") as f:
        for i, q in enumerate(cleaned):
            f.write(f">q{i}\n{q}\n")
    b, t = db.binary, ["--threads", str(max(1, threads)), "-v", "2"]
    q, tdb, res, prof = workdir / "q", db.prefix, workdir / "res", workdir / "prof"
    run_mmseqs(b, ["createdb", workdir / "q.fasta", q, "-v", "2"], logp)
    run_mmseqs(b, ["search", q, tdb, res, workdir / "tmp", *params.search_args(), *t], logp)
    run_mmseqs(b, ["result2profile", q, tdb, res, prof, "-e", f"{params.evalue:g}",
                   "--e-profile", f"{params.evalue:g}", *t], logp)
    run_mmseqs(b, ["profile2pssm", prof, workdir / "pssm.txt", *t], logp)
    run_mmseqs(b, ["convertalis", q, tdb, res, workdir / "aln.tsv", "--format-output",
                   "query,qstart,qaln,taln", *t], logp)
    key_to_name = {}
    for line in (workdir / "q.lookup").read_text().splitlines():
        key, name = line.split("\t")[:2]
        key_to_name[int(key)] = name
    pssm = {key_to_name[k]: v for k, v in parse_pssm((workdir / "pssm.txt").read_text()).items()}
    hits: dict[str, list] = {}
    with open(workdir / "aln.tsv") as f:
        for line in f:
            name, qstart, qaln, taln = line.rstrip("\n").split("\t")
            hits.setdefault(name, []).append((int(qstart) - 1, qaln, taln))
    out = []
    for i, seq in enumerate(cleaned):
        name = f"q{i}"
        scores = pssm.get(name)
        if scores is None or scores.shape[0] != len(seq):
            got = "no profile" if scores is None else f"{scores.shape[0]} profile rows"
            raise MMseqsFailed(f"mmseqs gave {got} for a {len(seq)}-residue query", logp)
        feats = np.concatenate([_sigmoid(scores), alignment_features(seq, hits.get(name, []))], axis=1)
        out.append(np.ascontiguousarray(feats, dtype=np.float32))
    return out


def sequence_key(seq: str) -> str:
    return hashlib.sha256(seq.encode()).hexdigest()[:32]


class ProfileBuilder:
    """Profiles for many proteins: chunked MMseqs2 searches, each finished chunk kept (resume, reuse)."""

    def __init__(self, db: TargetDatabase, params: SearchParams = SearchParams(), *, threads: int = 1,
                 chunk: int = 1000):
        self.db = db
        self.params = params.validate()
        self.threads = max(1, int(threads))
        self.chunk = max(1, int(chunk))
        self.version = mmseqs_version(db.binary)
        self.store = db.cache_dir / "profiles" / hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16]
        self._index: dict[str, Path] | None = None
        self._open: dict[Path, object] = {}
        #: Seconds per step of this process's searches, and proteins searched / reused.
        self.stats = {"searched": 0, "reused": 0, "search_s": 0.0, "chunks": 0}

    def fingerprint(self) -> str:
        upper = " upper-cased" if self.db.uppercased else ""
        return (f"mmseqs {self.version}|db sha256 {self.db.sha256[:16]}{upper}|{self.params.key()}"
                f"|features v{FEATURES_VERSION}")

    def _load_index(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            if self.store.is_dir():
                for part in sorted(self.store.glob("part-*.npz")):
                    try:
                        with np.load(part, allow_pickle=False) as z:
                            names = list(z.files)
                            for k in names:  # read every array once: a part cut short fails here, not later
                                z[k]
                    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                        # a part cut short (full disk, a killed copy): its proteins are searched again
                        log.warning("profile cache %s: removing a damaged part (%s); its proteins will be searched "
                                    "again", part, type(exc).__name__)
                        part.unlink(missing_ok=True)
                        continue
                    for k in names:
                        self._index[k] = part
        return self._index

    def _get(self, key: str) -> np.ndarray:
        part = self._load_index()[key]
        if part not in self._open:
            self._open[part] = np.load(part)
        return self._open[part][key]

    def features(self, seqs: Sequence[str], progress: Callable[[str], None] | None = None) -> list[np.ndarray]:
        say = progress or log.info
        too_long = [(i, len(s)) for i, s in enumerate(seqs) if len(s) > MAX_RESIDUES]
        if too_long:
            i, n = too_long[0]
            raise InputError(f"profile embedder: {len(too_long)} protein(s) longer than MMseqs2's limit of "
                             f"{MAX_RESIDUES:,} residues (first: protein {i + 1} of {len(seqs)}, {n:,} residues); "
                             f"nothing was searched. protlm embed searches such proteins in windows "
                             f"(--long-policy window) or refuses them by name (--long-policy error)")
        index = self._load_index()
        keys = [sequence_key(s) for s in seqs]
        todo: dict[str, str] = {}
        for k, s in zip(keys, seqs):
            if k not in index:
                todo.setdefault(k, s)
        self.stats["reused"] += len(set(keys)) - len(todo)
        if todo:
            self.db.prepare(say)
            try:
                self._search(todo, say)
            except (MMseqsFailed, OSError) as exc:
                full = _no_space(exc, self.db.cache_dir)
                if full is not None:
                    raise full from None
                raise
        return [self._get(k) for k in keys]

    def _search(self, todo: dict[str, str], say: Callable[[str], None]) -> None:
        index = self._load_index()
        self.store.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.store, "work-*")
        write_text(self.store / "params.json", json.dumps(
            {"fingerprint": self.fingerprint(), "database": self.db.fasta.name, **asdict(self.params)}))
        items = sorted(todo.items(), key=lambda kv: len(kv[1]))
        chunks = [items[i:i + self.chunk] for i in range(0, len(items), self.chunk)]
        t0 = time.perf_counter()
        for c, part in enumerate(chunks, start=1):
            t = time.perf_counter()
            work = Path(tempfile.mkdtemp(prefix=f"work-{_owner()}-", dir=self.store))
            try:
                try:
                    arrays = search_chunk([s for _, s in part], self.db, self.params, work, self.threads)
                except MMseqsFailed as exc:
                    raise exc.keep_log(self.db.cache_dir / "logs", "search") from None
                name = "part-" + hashlib.sha256("".join(k for k, _ in part).encode()).hexdigest()[:16]
                write_npz(self.store / f"{name}.npz", {k: a for (k, _), a in zip(part, arrays)})
            finally:
                shutil.rmtree(work, ignore_errors=True)
            for k, _ in part:
                index[k] = self.store / f"{name}.npz"
            dt = time.perf_counter() - t
            self.stats["searched"] += len(part)
            self.stats["search_s"] += dt
            self.stats["chunks"] += 1
            done = sum(len(p) for p in chunks[:c])
            eta = (time.perf_counter() - t0) / done * (len(items) - done)
            say(f"profile: chunk {c}/{len(chunks)}: {len(part)} proteins searched in {dt:.1f} s "
                f"({done}/{len(items)} done, ~{eta / 60:.1f} min left)")
