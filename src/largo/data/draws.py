"""Random draws per training example, for a whole batch at once: a pure function of (run seed, sample index, stream).

Augmentation must give each example the same draws whoever computes it (a resumed run, any rank,
any micro-batch split), so nothing may depend on a generator's position. A counter-based hash
(SplitMix64's finaliser, applied to the seed, the sample index and a stream number) gives that
directly, and vectorised over the batch it costs microseconds where a generator per example cost
tens of microseconds each.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of 64-bit words whose outputs pass as independent uniforms."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class SampleDraws:
    """Uniform draws in [0, 1) for each of a batch's sample indices; `stream` names what a draw is for."""

    def __init__(self, seed: int, samples: np.ndarray):
        with np.errstate(over="ignore"):
            base = _mix(np.uint64(seed % 2**64) * _GOLDEN + np.uint64(0x632BE59BD9B4E019))
            self.keys = _mix(base ^ (np.asarray(samples, dtype=np.uint64) * _GOLDEN))  # (b,)

    def __len__(self) -> int:
        return len(self.keys)

    def uniform(self, stream: int, count: int = 1) -> np.ndarray:
        """(b, count) uniforms in [0, 1), the same for a sample whatever batch it is in."""
        with np.errstate(over="ignore"):
            salt = _mix((np.uint64(stream) << np.uint64(20)) + np.arange(count, dtype=np.uint64) + _GOLDEN)
            z = _mix(self.keys[:, None] ^ salt[None, :])
        return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def between(self, stream: int, low: float, high: float, count: int = 1) -> np.ndarray:
        """(b, count) uniforms in [low, high)."""
        return low + (high - low) * self.uniform(stream, count)

    def integers(self, stream: int, low: int, high: int, count: int = 1) -> np.ndarray:
        """(b, count) integers in [low, high] (both ends included)."""
        return low + np.floor(self.uniform(stream, count) * (high - low + 1)).astype(np.int64)
