"""Peak memory of a run above a baseline: CUDA allocator stats, or the CPU heap sampled in a thread.

On CPU, torch allocates tensors with malloc, so glibc's mallinfo2() in-use bytes are the tensors
plus the math libraries' workspaces (~30 MiB), and nothing of the freed-but-cached heap. RSS would
add that cache and the fragmentation (40-75% more on the benchmark configs), so it is only the
fallback where mallinfo2 is missing (musl; on macOS neither exists and the peak is None).
Sampling every 2 ms catches the loss-backward peak (sparser sampling missed it by ~10% on small
configs); as it recurs every step, the dense phase only lasts the first 5 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time

import torch

# mallinfo2 walks the heap under malloc's lock: sampling every 2 ms halved training throughput on this CPU
# (812 vs 1,785 tok/s, text_tiny). The steady-state peak recurs every step, so a few dense seconds catch it.
DENSE_S = 5.0  # sample densely for the first 5 s of training
SPARSE_INTERVAL_S = 0.25  # afterwards, to keep a long run's overhead near zero
MAX_OVERHEAD = 0.02  # a read never takes more than 2% of the sampling thread's time (mallinfo2 slows on a fragmented heap)


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
        self._samples = 0  # readings taken so far, under _sampled
        self._sampled = threading.Condition()
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
            self._baseline = torch.cuda.memory_allocated(device)
            return
        fn = _mallinfo2()
        if fn is not None:
            self.method, self._read = "cpu heap in use (glibc mallinfo2)", lambda: _heap_in_use(fn)
        else:
            try:
                _rss_anon()
                self.method, self._read = "cpu anonymous RSS", _rss_anon
            except OSError:
                return
        self.method += f", sampled every {1000 * interval_s:.0f} ms for {DENSE_S:.0f} s, then every {1000 * SPARSE_INTERVAL_S:.0f} ms"
        gc.collect()  # garbage freed later would otherwise hide part of the run's growth
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
        read, peak, wait = self._read, self._peak, self.interval_s
        start = time.monotonic()
        while not self._stop.wait(wait):
            t0 = time.perf_counter()
            peak = max(peak, read())
            self._peak = peak
            with self._sampled:
                self._samples += 1
                self._sampled.notify_all()
            base = self.interval_s if time.monotonic() - start < DENSE_S else SPARSE_INTERVAL_S
            wait = max(base, (time.perf_counter() - t0) / MAX_OVERHEAD)

    def wait_for_samples(self, count: int = 2, timeout_s: float = 120.0) -> bool:
        """Block until the sampling thread has taken `count` more readings (the second one began after this call)."""
        with self._sampled:
            target = self._samples + count
            return self._sampled.wait_for(lambda: self._samples >= target, timeout_s)

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
