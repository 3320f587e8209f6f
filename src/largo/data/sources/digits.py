"""data.source = "digits": scikit-learn's bundled 1,797 8x8 digits (no download), 0..16 scaled to uint8."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from largo.data.sources.registry import IMAGES, DataSource, Roles, Row, SourceStats, register_source
from largo.errors import DataError


class DigitsSource(DataSource):
    """Rows of (1, 8, 8) uint8 images labelled "0".."9", in scikit-learn's order (largo holds out its own share)."""

    fixed_shape = True  # the images keep their size: the model's is checked, not applied

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("data.source 'digits' needs scikit-learn; install it with: pip install scikit-learn") from None
        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (n, 1, 8, 8)
        for image, label in zip(images, digits.target):
            yield {"image": image, "label": str(label)}


register_source("digits", DigitsSource, provides=[IMAGES])
