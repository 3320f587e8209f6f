"""Progress of a long pass over data: a live bar on a terminal, a plain line every so often in logs (CI, nohup, SLURM)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
PLAIN_EVERY_S = 8.0  # between plain progress lines: nothing long stays silent for 10 s


def _duration(seconds: float) -> str:
    """12 s, 3m05s, 1h02m."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Documents, bytes and tokens so far against an expected byte total (None: unknown, no ETA)."""

    def __init__(self, what: str, total_bytes: int | None, *, log: Callable[[str], None] = print, live: bool | None = None,
                 every_s: float | None = None):
        self.what, self.total, self.log = what, total_bytes, log
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.live = sys.stderr.isatty() if live is None else live
        self.start = self.last = time.monotonic()
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=what, disable=not self.live, dynamic_ncols=True)

    def update(self, documents: int, n_bytes: int, tokens: int) -> None:
        """The running totals (not increments)."""
        if self.live:
            self.bar.update(n_bytes - self.bar.n)
            self.bar.set_postfix(docs=f"{documents:,}", tokens=f"{tokens:,}", refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(documents, n_bytes, tokens, now - self.start))

    def line(self, documents: int, n_bytes: int, tokens: int, elapsed: float) -> str:
        """One plain progress line, with an ETA when the total is known."""
        done = f"{documents:,} documents, {n_bytes / 1e6:,.1f} MB, {tokens:,} tokens in {_duration(elapsed)}"
        if self.total and n_bytes:
            left = elapsed * max(self.total - n_bytes, 0) / n_bytes
            done += f" ({100 * min(n_bytes / self.total, 1):.0f}% of {self.total / 1e6:,.1f} MB, ETA {_duration(left)})"
        return f"{self.what}: {done}"

    def close(self) -> None:
        self.bar.close()


@contextmanager
def heartbeat(what: str, log: Callable[[str], None], every_s: float = PLAIN_EVERY_S) -> Iterator[None]:
    """Say that `what` still runs every `every_s` seconds while the block runs: a phase with no progress of its own
    (compiling, a tokenizer's training, timed probe steps) is never silent for long. Quiet if the block ends sooner."""
    done, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not done.wait(every_s):
            log(f"{what}: still running ({_duration(time.perf_counter() - start)})")

    thread = threading.Thread(target=beat, name="largo-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def beating_through_first(items: Iterable[T], what: str, log: Callable[[str], None]) -> Iterator[T]:
    """`items`, with a heartbeat while the consumer works on the first one (it stops when the second is asked for)."""
    it = iter(items)
    with heartbeat(what, log):
        for item in it:
            yield item
            break
    yield from it
