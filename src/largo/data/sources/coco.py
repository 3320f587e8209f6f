"""Bring your own detection data: a COCO-format annotations JSON (or a folder holding annotations.json) and its images.

The file is COCO's object-detection layout: "images" (id, file_name, width, height), "annotations" (image_id,
category_id, bbox = [x, y, width, height] in pixels) and "categories" (id, name). Image files are found relative
to the JSON's folder. Every annotation is checked before anything is prepared: a box outside its image (beyond
EDGE_TOLERANCE_PX, which absorbs the rounding common in exported sets), an unknown category or image id, or an
empty annotation list is one line naming the file, the annotation and what is valid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from largo.data.sources.registry import DETECTION, DataSource, Roles, Row, SourceStats, register_path_kind
from largo.errors import DataError
from largo.fileio import read_json

EDGE_TOLERANCE_PX = 0.5  # a box may reach this far past its image's edge (rounding in exported sets), no further
ANNOTATIONS = "annotations.json"  # the file looked for in a folder


def coco_file(value: str) -> Path:
    """The annotations JSON a data.source value names: the file itself, or annotations.json in the folder."""
    path = Path(value)
    found = path / ANNOTATIONS if path.is_dir() else path
    if not found.is_file():
        raise DataError(f"data.source {value!r}: no {found}; give a COCO annotations .json file or a folder holding {ANNOTATIONS}")
    return found


def _list(doc: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(f"{path}: {key!r} must be a list of objects (COCO detection format: images, annotations, categories)")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_coco(path: Path) -> tuple[list[str], list[dict[str, Any]], dict[int, list[tuple[str, float, float, float, float]]]]:
    """Category names in id order, the images, and each image id's boxes (class, x0, y0, x1, y1); checked whole."""
    doc = read_json(path, DataError, " (a COCO annotations file)")
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a COCO annotations object (images, annotations, categories)")
    images, annotations, categories = (_list(doc, k, path) for k in ("images", "annotations", "categories"))
    if not annotations:
        raise DataError(f"{path}: 'annotations' is empty; a detection set needs at least one box")
    names = {}
    for c in categories:
        if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DataError(f"{path}: category {c!r} needs an integer 'id' and a 'name'")
        names[c["id"]] = c["name"]
    if len(set(names.values())) < len(names):
        raise DataError(f"{path}: category names must be unique; found {sorted(names.values())}")
    sizes = {}
    for im in images:
        if not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str) or not all(
                _number(im.get(k)) and im[k] > 0 for k in ("width", "height")):
            raise DataError(f"{path}: image {im!r} needs an integer 'id', a 'file_name' and positive 'width' and 'height'")
        sizes[im["id"]] = (float(im["width"]), float(im["height"]))
    boxes: dict[int, list[tuple[str, float, float, float, float]]] = {i: [] for i in sizes}
    for k, ann in enumerate(annotations):
        boxes[_image_of(ann, k, sizes, path)].append(_checked_box(ann, k, names, sizes, path))
    return [names[i] for i in sorted(names)], images, boxes


def _image_of(ann: dict[str, Any], k: int, sizes: dict[int, tuple[float, float]], path: Path) -> int:
    image_id = ann.get("image_id")
    if image_id not in sizes:
        raise DataError(f"{path}: annotation {k} (id {ann.get('id')}): image_id {image_id!r} is not among the {len(sizes)} images")
    return image_id


def _checked_box(ann: dict[str, Any], k: int, names: dict[int, str], sizes: dict[int, tuple[float, float]],
                 path: Path) -> tuple[str, float, float, float, float]:
    """(class, x0, y0, x1, y1) of one annotation, or one line saying what is wrong with it."""
    where = f"{path}: annotation {k} (id {ann.get('id')})"
    if ann.get("category_id") not in names:
        raise DataError(f"{where}: category_id {ann.get('category_id')!r} is unknown; the categories are "
                        f"{', '.join(f'{i} ({n})' for i, n in sorted(names.items()))}")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_number, bbox)) and bbox[2] > 0 and bbox[3] > 0):
        raise DataError(f"{where}: bbox {bbox!r} must be [x, y, width, height] with width and height > 0")
    x, y, w, h = (float(v) for v in bbox)
    width, height = sizes[ann["image_id"]]
    t = EDGE_TOLERANCE_PX
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise DataError(f"{where}: bbox [x {x:g}, y {y:g}, w {w:g}, h {h:g}] falls outside its {width:g}x{height:g} image "
                        f"(image_id {ann['image_id']})")
    return (names[ann["category_id"]], max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height))


class CocoSource(DataSource):
    """A COCO detection set: one row per image (its file, its size, its boxes); largo holds out its own validation share."""

    def __init__(self, value: str, data: Any, *, test: bool = False, log: Any = print):
        super().__init__(value, data, test=test, log=log)
        self.path = coco_file(value)
        self.label_order, self.images, self.boxes = read_coco(self.path)

    @property
    def key(self) -> str:
        return f"{'data.test_source' if self.test else 'data.source'} {self.value!r}"

    def _image_file(self, im: dict[str, Any]) -> Path:
        file = self.path.parent / im["file_name"]
        if not file.is_file():
            raise DataError(f"{self.path}: image {im['id']}'s file {file} is missing")
        return file

    def files(self) -> list[tuple[Path, str]]:
        ordered = sorted(self.images, key=lambda im: im["file_name"])
        return [(self.path, self.path.name)] + [(self._image_file(im), im["file_name"]) for im in ordered]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        for im in sorted(self.images, key=lambda im: im["id"]):
            yield {"id": im["file_name"], "image": self._image_file(im), "size": (float(im["width"]), float(im["height"])),
                   "boxes": self.boxes[im["id"]]}


def _is_coco(value: str) -> bool:
    path = Path(value)
    return path.suffix.lower() == ".json" or (path / ANNOTATIONS).is_file()


register_path_kind(CocoSource, accepts=_is_coco, describe={DETECTION: "a COCO annotations .json (or a folder with annotations.json)"})
