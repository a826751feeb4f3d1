"""Progress of long work: a tqdm bar on a terminal; plain, occasional lines when stderr goes
to a file (a batch job's log would otherwise fill with a bar's carriage-return updates)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar: only when asked for and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


def log_progress(progress: bool) -> bool:
    """Whether to print plain progress lines instead: asked for, but stderr is not a terminal
    (a log file would fill with a bar's carriage-return updates)."""
    return bool(progress) and not sys.stderr.isatty()


LOG_EVERY_S = 60.0
"""Seconds between progress lines in a log file (the first after that long, none for a
stage that ends sooner)."""


class _LineProgress:
    """`stage_progress`'s reporter for a log file: a line every LOG_EVERY_S seconds with the
    share done and the time left at the rate so far, and one when the stage ends."""

    def __init__(self, desc: str, total: int | None, unit: str) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < LOG_EVERY_S or (self.total is not None and self.done >= self.total):
            return
        self.last = now
        elapsed = now - self.start
        if self.total is None:  # e.g. a download without a Content-Length
            self._print(f"{self.done} {self.unit} in {elapsed:.0f} s so far")
        else:
            left = elapsed * (self.total - self.done) / max(self.done, 1)
            self._print(f"{100 * self.done / self.total:.0f}% ({self.done}/{self.total} {self.unit}), "
                        f"{elapsed:.0f} s so far, about {left:.0f} s left")

    def close(self) -> None:
        self._print(f"done in {time.perf_counter() - self.start:.1f} s")

    def _print(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=sys.stderr, flush=True)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


@contextmanager
def stage_progress(desc: str, total: int | None, progress: bool, *, unit: str = "batches",
                   label: str | None = None) -> Iterator:
    """Progress of a stage of `total` steps (None: unknown); yields an object whose update(n)
    counts n more done.

    On a terminal a tqdm bar titled `desc`; asked for but stderr not a terminal (a log file,
    a batch job), plain lines headed `label` (default `desc`) every LOG_EVERY_S seconds and
    when the stage ends, never a bar's carriage-return updates; nothing when not asked for."""
    if show_progress(progress):
        with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False) as bar:
            yield bar
    elif log_progress(progress):
        lines = _LineProgress(label or desc, total, unit)
        yield lines
        lines.close()
    else:
        yield _NoProgress()
