"""Progress for long jobs, on a terminal and off it: a tqdm bar when stderr is a terminal; log lines
with the count, the rate and the time left every 30 seconds otherwise (a batch job's log file
must show that a job moves, too). The commands' bars (:mod:`protlm.cli.common` re-exports them) and
the library's long loops (contact maps of a test set) share it."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class LogProgress:
    """Progress for a stderr that is not a terminal (a log file, a batch job): one line every
    ``every`` seconds with the count, the rate and the time left, and one at the end of a job that
    logged any — or, with ``summary``, of every job that counted anything (a short stage's only
    line: what it did, how fast, in how long; the benchmark's embedding sets)."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = 30.0, summary: bool = False):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.summary = summary
        self.n = 0
        self.logged = False
        self.closed = False
        self._t0 = self._last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        self._maybe_log()

    def refresh(self) -> None:
        self._maybe_log()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = self.n / elapsed
        # under a second (a set found in the cache, counted at once) a rate means nothing
        speed = f", {rate:,.0f} {self.unit}/s" if elapsed >= 1.0 else ""
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta = f", {_duration(left)} left" if left != float("inf") and self.n < self.total else ""
            return (f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)"
                    f"{speed}{eta}")
        return f"{self.desc}: {self.n:,} {self.unit}{speed}"

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if self.total and self.n >= self.total and (self.summary or self.logged):
            return  # finished: close() gives the one end line (with the time it took)
        if now - self._last >= self.every:
            self._last = now
            self.logged = True
            print(f"protlm: {self._line()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if (self.logged or (self.summary and self.n > 0)) and not self.closed:
            self.closed = True
            print(f"protlm: {self._line()} (done in {_duration(time.monotonic() - self._t0)})", file=sys.stderr,
                  flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_bar(total: int | None, desc: str, unit: str = "B", summary: bool = False):
    """A tqdm bar on a terminal; log lines with rate and time left otherwise (``summary``: a line at
    the end even of a short job)."""
    if not sys.stderr.isatty():
        return LogProgress(total, desc, unit, summary=summary)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024, file=sys.stderr,
                dynamic_ncols=True)


def progress_iter(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
                  terminal_only: bool = False) -> Iterator[T]:
    """``iterable`` with a bar (:func:`progress_bar`) that moves with each item and closes at the end
    (a transient bar on a terminal); ``terminal_only``: no log lines off a terminal (a loop whose
    caller already reports, such as the batches of a training epoch)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not sys.stderr.isatty():
        if terminal_only:
            yield from iterable
            return
        bar = LogProgress(total, desc, unit)
    else:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
