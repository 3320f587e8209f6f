"""Progress of a long pass over data: a live bar on a terminal, a plain line every so often in logs (CI, nohup, SLURM)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

PLAIN_EVERY_S = 15.0  # between plain progress lines


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
