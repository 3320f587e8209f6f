"""Peak memory of a run above a baseline: CUDA allocator stats, or the CPU heap sampled in a thread.

On CPU, torch allocates tensors with malloc, so glibc's mallinfo2() in-use bytes are the tensors
plus the math libraries' workspaces (~30 MiB), and nothing of the freed-but-cached heap. RSS would
add that cache and the fragmentation (40-75% more on the benchmark configs), so it is only the
fallback where mallinfo2 is missing (musl, macOS: no fallback, the peak is None).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    """glibc >= 2.33's mallinfo2, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def _heap_in_use(fn) -> int:
    """Bytes malloc has handed out and not had back: arena chunks in use plus mmapped blocks."""
    info = fn()
    return int(info.uordblks + info.hblkhd)


def _rss_anon() -> int:
    """Anonymous resident memory (file-backed pages such as memmapped token shards excluded)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise OSError("no RssAnon in /proc/self/status")


class PeakMemory:
    """Baseline when created (before the model exists); start() begins watching; stop() -> peak bytes above the baseline.

    Starting later than the baseline leaves one-off spikes (checkpoint loading, the peak-FLOP/s GEMM) out.
    """

    def __init__(self, device: torch.device, *, interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.method = "none"
        self._read = None
        self._baseline = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
            self._baseline = torch.cuda.memory_allocated(device)
            return
        fn = _mallinfo2()
        if fn is not None:
            self.method, self._read = "cpu heap in use (glibc mallinfo2, sampled every 2 ms)", lambda: _heap_in_use(fn)
        else:
            try:
                _rss_anon()
                self.method, self._read = "cpu anonymous RSS (sampled every 2 ms)", _rss_anon
            except OSError:
                return
        self._baseline = self._read()

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._read is not None:
            self._peak = self._read()
            self._thread = threading.Thread(target=self._sample, name="largo-peak-memory", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        read, peak = self._read, self._peak
        while not self._stop.wait(self.interval_s):
            peak = max(peak, read())
            self._peak = peak

    def stop(self) -> int | None:
        """Peak bytes above the baseline since start()."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self._baseline)
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        return max(0, self._peak - self._baseline)
