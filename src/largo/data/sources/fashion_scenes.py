"""data.source = "fashion-scenes": detection scenes composed from real Fashion-MNIST items, boxes and classes known.

Each scene is a square grey canvas (data.canvas pixels) holding data.min_objects..data.max_objects items, each an
official Fashion-MNIST image scaled by a factor in [data.scale_min, data.scale_max] and placed at random, so that
no two items' boxes overlap by more than data.max_overlap IoU. Behind them: uniform noise up to data.noise and up to
data.fragments dimmed crops of other items (clutter that has no box). An item's box is tight around its non-zero
pixels on the canvas. Training and validation scenes draw their items from the 60,000 training images (disjoint
shares: every 1/val_fraction-th image goes to validation); opened as data.test_source, the scenes draw only from the
10,000 official test images. Everything is a pure function of data.scene_seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from largo.data.sources.fashion_mnist import FASHION_CLASSES, fashion_files, read_idx
from largo.data.sources.registry import DETECTION, DataSource, Roles, Row, SourceStats, register_source
from largo.data.split import is_validation
from largo.errors import DataError

ITEM = 28  # Fashion-MNIST's side in pixels
PLACE_TRIES = 30  # placements tried per item before the scene keeps fewer items
SCENE_KEYS = ("canvas", "train_scenes", "test_scenes", "min_objects", "max_objects", "scale_min", "scale_max",
              "max_overlap", "noise", "fragments", "scene_seed", "val_fraction")


@dataclass(frozen=True)
class SceneSettings:
    """How scenes are composed (the [data] keys of the same names)."""

    canvas: int = 96  # scene side in pixels
    min_objects: int = 1  # items per scene, at least
    max_objects: int = 6  # items per scene, at most
    scale_min: float = 0.5  # an item's side is 28 * a factor drawn from [scale_min, scale_max]
    scale_max: float = 1.5
    max_overlap: float = 0.2  # largest IoU between two items' boxes
    noise: int = 24  # background: uniform grey levels in [0, noise]
    fragments: int = 3  # clutter: up to this many dimmed crops of other items, without boxes


@dataclass
class Scene:
    """One composed scene: pixels (canvas, canvas) uint8, boxes (k, 4) x0 y0 x1 y1, classes (k,), source items (k,)."""

    pixels: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    items: np.ndarray  # indices into the image pool the items came from


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box a (4,) with boxes b (k, 4), all x0 y0 x1 y1."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    """A (28, 28) uint8 item resized bilinearly to (side, side)."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("composing detection scenes needs Pillow; install it with: pip install pillow") from None
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def _tight(item: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive ends) of the item's non-zero pixels."""
    rows, cols = np.flatnonzero(item.any(1)), np.flatnonzero(item.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _clutter(canvas: np.ndarray, rng: np.random.Generator, images: np.ndarray, s: SceneSettings) -> None:
    """Noise, then dimmed fragments (6-12 pixel crops) of random items pasted anywhere: things that are not objects."""
    canvas[:] = rng.integers(0, s.noise + 1, canvas.shape)
    for _ in range(int(rng.integers(0, s.fragments + 1))):
        size = int(rng.integers(6, 13))
        src = images[int(rng.integers(len(images)))]
        y, x = (int(v) for v in rng.integers(0, ITEM - size + 1, 2))
        crop = src[y:y + size, x:x + size] * rng.uniform(0.3, 0.6)
        cy, cx = (int(v) for v in rng.integers(0, s.canvas - size + 1, 2))
        np.maximum(canvas[cy:cy + size, cx:cx + size], crop.astype(np.uint8), out=canvas[cy:cy + size, cx:cx + size])


def compose_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, s: SceneSettings) -> Scene:
    """One scene from the pool (images (n, 28, 28) uint8, labels (n,)): clutter first, then the items on top."""
    canvas = np.zeros((s.canvas, s.canvas), dtype=np.uint8)
    _clutter(canvas, rng, images, s)
    wanted = int(rng.integers(s.min_objects, s.max_objects + 1))
    boxes: list[tuple[int, int, int, int]] = []
    classes, items = [], []
    for _ in range(wanted * PLACE_TRIES):
        if len(boxes) == wanted:
            break
        k = int(rng.integers(len(images)))
        item = _resized(images[k], max(2, round(ITEM * rng.uniform(s.scale_min, s.scale_max))))
        if not item.any():
            continue
        x0, y0, x1, y1 = _tight(item)
        if x1 - x0 > s.canvas or y1 - y0 > s.canvas:
            continue
        # the item's box lies inside the canvas; its empty margin may hang over the edge
        dx, dy = int(rng.integers(-x0, s.canvas - x1 + 1)), int(rng.integers(-y0, s.canvas - y1 + 1))
        box = np.array([x0 + dx, y0 + dy, x1 + dx, y1 + dy], dtype=np.float64)
        if boxes and box_iou(box, np.array(boxes, dtype=np.float64)).max() > s.max_overlap:
            continue
        _paste(canvas, item, dx, dy)
        boxes.append(tuple(int(v) for v in box))
        classes.append(int(labels[k]))
        items.append(k)
    return Scene(canvas, np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(classes, dtype=np.int64),
                 np.array(items, dtype=np.int64))


def _paste(canvas: np.ndarray, item: np.ndarray, dx: int, dy: int) -> None:
    """Lay item on the canvas at offset (dx, dy) (brightest pixel wins), cut at the canvas edges."""
    h, w = item.shape
    ys, xs = slice(max(dy, 0), min(dy + h, canvas.shape[0])), slice(max(dx, 0), min(dx + w, canvas.shape[1]))
    part = item[ys.start - dy:ys.stop - dy, xs.start - dx:xs.stop - dx]
    np.maximum(canvas[ys, xs], part, out=canvas[ys, xs])


def compose_scenes(images: np.ndarray, labels: np.ndarray, count: int, s: SceneSettings, *, seed: list[int]) -> Iterator[Scene]:
    """`count` scenes from one pool, a pure function of the seed."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield compose_scene(rng, images, labels, s)


def scene_settings(data: object) -> SceneSettings:
    """The composition settings of a [data] section (its keys of the same names; defaults where it has none)."""
    return SceneSettings(**{k: getattr(data, k) for k in SceneSettings.__dataclass_fields__ if hasattr(data, k)})


def scene_row(scene: Scene, index: int, split: str | None, pool: str) -> Row:
    """A scene as a source row: its pixels (1, canvas, canvas), its boxes with class names, where its items came from."""
    boxes = [(FASHION_CLASSES[c], *map(float, b)) for c, b in zip(scene.classes, scene.boxes)]
    return {"id": f"{pool} scene {index}", "image": scene.pixels[None], "boxes": boxes, "split": split,
            "items": [(pool, int(k)) for k in scene.items]}


class FashionScenesSource(DataSource):
    """Composed scenes: training and validation scenes from the training images, test scenes from the test images."""

    fixed_shape = True
    label_order = FASHION_CLASSES
    settings_keys = SCENE_KEYS

    def files(self) -> list[tuple[Path, str]]:
        return [(p, p.name) for p in fashion_files().values()]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        s, data = scene_settings(self.data), self.data
        seed, files = int(getattr(data, "scene_seed", 0)), fashion_files()
        if self.test:  # the official test images only
            images, labels = read_idx(files["val_x"]), read_idx(files["val_y"])
            for i, scene in enumerate(compose_scenes(images, labels, int(getattr(data, "test_scenes", 1000)), s, seed=[seed, 2])):
                yield scene_row(scene, i, None, "test")
            return
        images, labels = read_idx(files["train_x"]), read_idx(files["train_y"])
        val = np.array([is_validation(i, data.val_fraction) for i in range(len(labels))], dtype=bool)
        train_scenes = int(getattr(data, "train_scenes", 20_000))
        val_scenes = max(1, round(train_scenes * data.val_fraction))
        for split, keep, count, stream in (("train", ~val, train_scenes, 0), ("val", val, val_scenes, 1)):
            index = np.flatnonzero(keep)  # pool position -> training-image index
            for i, scene in enumerate(compose_scenes(images[index], labels[index], count, s, seed=[seed, stream])):
                row = scene_row(scene, i, split, split)
                row["items"] = [("train", int(index[k])) for k in scene.items]
                yield row


register_source("fashion-scenes", FashionScenesSource, provides=[DETECTION])
