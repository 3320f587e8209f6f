"""Which examples are held out, and which are kept: pure functions of an example's index, the same on every machine."""

from __future__ import annotations

import math

import numpy as np


def is_validation(index: int, val_fraction: float) -> bool:
    """Systematic split: example i is held out when (i + 1) * f crosses an integer.

    Exactly a val_fraction share, spread evenly over the source, the same on every machine
    (sources are read in sorted order), and never empty once 1 / val_fraction examples exist.
    """
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def even_subset(n: int, keep: int) -> np.ndarray:
    """Indices of `keep` rows spread evenly over n (all of them when keep is 0 or >= n); any order stays balanced."""
    if keep == 0 or keep >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, keep).round().astype(np.int64)
