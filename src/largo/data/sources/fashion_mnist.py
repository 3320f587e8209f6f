"""data.source = "fashion-mnist": Debian's dataset-fashion-mnist IDX files, the official 60k/10k split, 28x28 grey."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from largo.data.sources.registry import IMAGES, DataSource, Roles, Row, SourceStats, register_source
from largo.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
          "val_x": "t10k-images-idx3-ubyte.gz", "val_y": "t10k-labels-idx1-ubyte.gz"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzip-compressed: magic 0 0 <type> <ndim>, big-endian sizes, data."""
    try:
        raw = gzip.open(path).read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip IDX file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: {data.size} bytes of data for shape {shape}; the file is truncated")
    return data.reshape(shape)


def fashion_files() -> dict[str, Path]:
    """The four IDX files, or a one-line error naming the Debian package."""
    files = {k: FASHION_DIR / v for k, v in _FILES.items()}
    for path in files.values():
        if not path.is_file():
            raise DataError(f"data.source 'fashion-mnist': {path} is missing; install it with: apt-get install dataset-fashion-mnist")
    return files


class FashionMnistSource(DataSource):
    """(1, 28, 28) uint8 images and their class names; the official test set is the held-out split."""

    fixed_shape = True
    label_order = FASHION_CLASSES

    def files(self) -> list[tuple[Path, str]]:
        return [(p, p.name) for p in fashion_files().values()]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        raw = {k: read_idx(p) for k, p in fashion_files().items()}
        for split in ("train", "val"):
            for image, label in zip(raw[f"{split}_x"], raw[f"{split}_y"]):
                yield {"image": image[None], "label": FASHION_CLASSES[label], "split": split}


register_source("fashion-mnist", FashionMnistSource, provides=[IMAGES])
