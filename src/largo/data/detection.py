"""Detection data: scenes (composed Fashion-MNIST items, or a COCO set) as cached arrays of pixels and padded boxes.

Stored per split: <split>_x uint8 (n, channels, side, side) and <split>_y float32 (n, max_objects, 5), one row
per object: class id, x0, y0, x1, y1 in the stored image's pixels; rows past a scene's objects are all IGNORE
(-100). Each object thus has five targets (its class and four box sides), which is what the loop counts to
normalise the loss. COCO images of any size are resized to data.canvas square, their boxes scaled with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from largo.data import Batch
from largo.data.arrays import Built, ClassifyData, Prepared, cached_arrays, split_arrays
from largo.data.config import DataConfig
from largo.data.draws import SampleDraws
from largo.data.images import read_images
from largo.data.sources import DataSource, SourceStats, open_source
from largo.data.sources.registry import DETECTION
from largo.errors import ConfigError, DataError

_VERSION = 1  # bump when the preparation below changes what it stores
IGNORE = -100  # a padding row's value: the target value the loop leaves out (data.Batch, models.loss.IGNORE)


@dataclass
class DetectDataConfig(DataConfig):
    """Detection scenes: "fashion-scenes" (composed from Fashion-MNIST) or a COCO annotations JSON with its images."""

    source: str = "fashion-scenes"  # "fashion-scenes", or a COCO .json file (or a folder holding annotations.json)
    dir: str = "data/fashion-scenes"
    test_source: str = "fashion-scenes"  # the test scenes results are scored on ("fashion-scenes": official test images); "" = none
    canvas: int = 96  # scene side in pixels; COCO images are resized to it
    train_scenes: int = 20_000  # fashion-scenes: training scenes (validation: val_fraction of this many more)
    test_scenes: int = 1_000  # fashion-scenes: test scenes
    min_objects: int = 1  # fashion-scenes: items per scene, at least
    max_objects: int = 6  # fashion-scenes: items per scene, at most
    scale_min: float = 0.5  # fashion-scenes: an item's side is 28 px times a factor in [scale_min, scale_max]
    scale_max: float = 1.5
    max_overlap: float = 0.2  # fashion-scenes: largest IoU between two items' boxes
    noise: int = 24  # fashion-scenes: background noise, uniform grey levels in [0, noise]
    fragments: int = 3  # fashion-scenes: up to this many dimmed crops of other items per scene (clutter, no box)
    scene_seed: int = 0  # fashion-scenes: every scene is a pure function of this seed
    hflip: bool = True  # mirror half of the training scenes left-right (boxes mirrored with them)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.canvas < 8 or self.train_scenes < 1 or self.test_scenes < 1:
            raise ConfigError(f"data.canvas ({self.canvas}) must be >= 8, data.train_scenes ({self.train_scenes}) and "
                              f"data.test_scenes ({self.test_scenes}) >= 1")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"data.min_objects ({self.min_objects}) and data.max_objects ({self.max_objects}) must satisfy "
                              f"1 <= min_objects <= max_objects")
        if not 0 < self.scale_min <= self.scale_max <= 16:
            raise ConfigError(f"data.scale_min ({self.scale_min}) and data.scale_max ({self.scale_max}) must satisfy "
                              f"0 < scale_min <= scale_max <= 16")
        if not 0 <= self.max_overlap < 1 or not 0 <= self.noise <= 255 or self.fragments < 0:
            raise ConfigError(f"data.max_overlap ({self.max_overlap}) must be in [0, 1), data.noise ({self.noise}) in "
                              f"[0, 255] and data.fragments ({self.fragments}) >= 0")


def _source(value: str, d: DetectDataConfig, *, test: bool = False) -> DataSource:
    return open_source(value, DETECTION, d, test=test)


def _box_rows(rows: list[dict[str, Any]], classes: list[str], scales: list[tuple[float, float]], source: str) -> np.ndarray:
    """Each row's boxes as (n, max_objects, 5) float32: class id, x0, y0, x1, y1 (scaled), padded with IGNORE."""
    width = max(1, max(len(r["boxes"]) for r in rows))
    out = np.full((len(rows), width, 5), IGNORE, dtype=np.float32)
    index = {c: i for i, c in enumerate(classes)}
    for i, (row, (sx, sy)) in enumerate(zip(rows, scales)):
        for j, (name, x0, y0, x1, y1) in enumerate(row["boxes"]):
            if name not in index:
                raise DataError(f"data.test_source {source!r}: class {name!r} is not among the training classes {classes}")
            out[i, j] = (index[name], x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    return out


def _read(source: DataSource, d: DetectDataConfig, channels: int) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """A source's pixels, boxes (classes in the source's order) and splits; images resized to the canvas where they vary."""
    rows = list(source.rows({"image": "image", "boxes": "boxes"}, SourceStats()))
    if not rows:
        raise DataError(f"{source.key}: no images")
    if source.fixed_shape:
        x, scales = np.stack([r["image"] for r in rows]), [(1.0, 1.0)] * len(rows)
    else:
        x = read_images([r["image"] for r in rows], d.canvas, channels, names=[str(r.get("id")) for r in rows])[0]
        scales = [(d.canvas / r["size"][0], d.canvas / r["size"][1]) for r in rows]
    return x, _box_rows(rows, list(source.label_order or []), scales, source.value), [r.get("split") for r in rows]


def _build(d: DetectDataConfig, in_channels: int) -> Callable[[], Built]:
    def build() -> Built:
        source = _source(d.source, d)
        x, y, splits = _read(source, d, in_channels)
        arrays = split_arrays(x, y, splits, d.val_fraction)
        if d.test_source:
            test = _source(d.test_source, d, test=True)
            if list(test.label_order or []) != list(source.label_order or []):
                raise DataError(f"data.test_source {d.test_source!r}: its classes {test.label_order} differ from the training "
                                f"classes {source.label_order}")
            arrays["test_x"], arrays["test_y"], _ = _read(test, d, arrays["train_x"].shape[1])
        pixels = arrays["train_x"].astype(np.float64) / 255.0
        meta = {"classes": list(source.label_order or []), "mean": pixels.mean(axis=(0, 2, 3)).tolist(),
                "std": pixels.std(axis=(0, 2, 3)).clip(1e-3).tolist()}
        return Built(arrays, meta)

    return build


def prepare_detection(d: DetectDataConfig, *, in_channels: int, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the scenes of d: pixels and padded boxes per split."""
    source = _source(d.source, d)
    test = _source(d.test_source, d, test=True) if d.test_source else None
    keys = sorted(set(source.settings_keys) | set(test.settings_keys if test else ()))
    settings = {"kind": "detection", "version": _VERSION, "source": d.source, "test_source": d.test_source,
                "fingerprint": source.fingerprint() + (test.fingerprint() if test else ""), "val_fraction": d.val_fraction,
                "canvas": d.canvas, "in_channels": in_channels, **{k: getattr(d, k) for k in keys}}
    return cached_arrays(d.dir, settings, _build(d, in_channels), force=force, log=log)


def flip_boxes(boxes: np.ndarray, side: int, flip: np.ndarray) -> np.ndarray:
    """Boxes (b, m, 5) of the rows in `flip` mirrored left-right in an image `side` pixels wide (padding rows kept)."""
    out = boxes.copy()
    real = (out[..., 0] != IGNORE) & flip[:, None]
    x0, x1 = out[..., 1].copy(), out[..., 3].copy()
    out[..., 1] = np.where(real, side - x1, x0)
    out[..., 3] = np.where(real, side - x0, x1)
    return out


class DetectData(ClassifyData):
    """Scenes as a `Dataset`: pixels normalised, boxes as float32 targets; training scenes mirrored at random."""

    def __init__(self, train: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray], *, seed: int,
                 mean: list[float], std: list[float], hflip: bool):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        super().__init__(train, held_out, seed=seed, transform=lambda rows, _draws: self.pixels(rows))
        self.hflip = hflip

    def pixels(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 (b, c, h, w) -> normalised float32."""
        return (torch.from_numpy(np.asarray(rows, dtype=np.float32)) - self.mean) / self.std

    def train_rows(self, samples: range) -> Batch:
        index = np.arange(samples.start, samples.stop)
        epochs, offsets = np.divmod(index, len(self.train_y))
        rows = np.concatenate([self._perm(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])
        x, y = np.array(self.train_x[rows]), np.array(self.train_y[rows])
        if self.hflip:  # a pure function of (seed, sample): a resumed run mirrors the same scenes
            flip = SampleDraws(self.seed, index).uniform(0)[:, 0] < 0.5
            x[flip] = x[flip][..., ::-1]
            y = flip_boxes(y, x.shape[-1], flip)
        return self.pixels(x), torch.from_numpy(y)

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        return scene_batches(self.val_x, self.val_y, self.pixels, micro_batch, max_batches)


def scene_batches(x: np.ndarray, y: np.ndarray, pixels: Callable[[np.ndarray], torch.Tensor], micro_batch: int,
                  max_batches: int = 0) -> Iterator[Batch]:
    """Scenes in stored order, micro_batch at a time; max_batches = 0 means all."""
    total = len(y) if not max_batches else min(len(y), max_batches * micro_batch)
    for start in range(0, total, micro_batch):
        stop = min(start + micro_batch, total)
        yield pixels(np.array(x[start:stop])), torch.from_numpy(np.array(y[start:stop], dtype=np.float32))
