"""Liveness of every rank, so that a failed or timed-out collective can name the rank that died or hung.

Each rank runs a daemon thread that bumps a counter in torchrun's c10d store once a second. When a
collective fails, the failing rank reads every counter twice: a counter that no longer moves
belongs to a rank that died or froze. The store is torchrun's (MASTER_ADDR:MASTER_PORT), so this
works across nodes without clocks having to agree.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from largo.distributed.env import DistEnv, restart_count

_beat: Heartbeat | None = None  # this process's heartbeat, once the process group is up


class Heartbeat:
    """A counter per rank in the c10d store, bumped every interval_s by a daemon thread."""

    def __init__(self, env: DistEnv, interval_s: float = 1.0):
        self.rank, self.world, self.interval_s = env.rank, env.world, interval_s
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=timedelta(seconds=5))
        self.prefix = f"largo/heartbeat/{restart_count()}/"  # a torchrun restart must not read the last attempt's beats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="largo-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.stop)  # never left inside a store call while the interpreter shuts down

    def _run(self) -> None:
        beats = 0
        while True:
            beats += 1
            try:
                self.store.set(f"{self.prefix}{self.rank}", str(beats))
            except Exception:  # the store went away: the job is ending
                return
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        """End the beats (at exit)."""
        self._stop.set()
        self._thread.join(timeout=2 * self.interval_s)

    def _read(self) -> dict[int, str]:
        keys = {r: f"{self.prefix}{r}" for r in range(self.world)}
        return {r: self.store.get(k).decode() for r, k in keys.items() if self.store.check([k])}

    def silent_ranks(self) -> list[int]:
        """Ranks whose counter did not move over three beats (dead, stopped or frozen)."""
        first = self._read()
        time.sleep(3 * self.interval_s)
        second = self._read()
        return [r for r in range(self.world) if r not in second or second[r] == first.get(r)]


def start_heartbeat(env: DistEnv) -> None:
    """Start this rank's heartbeat (once per process; only in a job of several ranks launched by torchrun)."""
    global _beat
    if _beat is None and env.world > 1 and "MASTER_ADDR" in os.environ:
        try:
            _beat = Heartbeat(env)
        except Exception as e:  # a diagnostic aid only: never fail training for it
            print(f"largo: warning (rank {env.rank}): no heartbeat, a hung rank will not be named ({e})", file=sys.stderr)


def collective_failure(error: BaseException) -> str | None:
    """One line naming the rank(s) that died or hung, if `error` is a failed or timed-out collective; else None."""
    text = str(error).strip()
    is_dist = isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "Timed out")))
    if not is_dist:
        return None
    first = (text.splitlines()[0] if text else type(error).__name__)[:200]
    try:
        silent = _beat.silent_ranks() if _beat is not None else None
    except Exception:  # the store itself is gone (torchrun is tearing the job down)
        silent = None
    if silent:
        who = f"rank {', '.join(map(str, silent))} stopped responding (died, or hung past parallel.timeout_s)"
    elif silent == []:
        who = "every rank is still alive: one may be stuck in its own code or in a different collective"
    else:
        who = "a peer rank died or hung past parallel.timeout_s"
    return f"a collective failed: {who}; cause: {first}"
