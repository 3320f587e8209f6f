"""Detection scores by the reference implementation: pycocotools' COCOeval (AP@[.5:.95], AP50, AP75, per-class AP).

References and detections arrive as arrays in pixel coordinates (x0, y0, x1, y1); they are turned into COCO's
dictionaries (bbox = [x, y, width, height]) and scored exactly as COCO scores its own benchmark: 10 IoU thresholds,
101 recall points, at most 100 detections per image. Per-class AP is read from COCOeval's accumulated precision
table the way COCO's summarize() averages it (area "all", 100 detections), one class at a time.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import numpy as np

from largo.optional import require


@dataclass
class Boxes:
    """One image's boxes: (k, 4) x0 y0 x1 y1 pixels, class ids (k,), and scores (k,) for detections (None for truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None


@dataclass
class CocoScores:
    """COCO's figures: AP@[.5:.95] (map), AP50 (map_50), AP75 (map_75), per-class AP, and COCO's own summary lines."""

    map: float
    map_50: float
    map_75: float
    per_class: dict[str, float]  # class name -> AP@[.5:.95] (nan where the test set has none of it)
    summary: list[str]


def class_key(name: str) -> str:
    """A metric name for a class's AP: 'Ankle boot' -> 'ap_ankle_boot'."""
    return "ap_" + (re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class")


def _xywh(b: np.ndarray) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]


def coco_dicts(truth: list[Boxes], detections: list[Boxes], classes: list[str], side: tuple[int, int]) -> tuple[dict, list[dict]]:
    """COCO's ground-truth dataset (image id = position in the list) and its result list for the detections."""
    images = [{"id": i, "width": side[0], "height": side[1]} for i in range(len(truth))]
    objects = [(i, c, b) for i, t in enumerate(truth) for c, b in zip(t.labels, t.boxes)]
    # COCO counts annotation ids from 1 (id 0 reads as "unmatched" inside COCOeval)
    annotations = [{"id": k + 1, "image_id": i, "category_id": int(c), "bbox": _xywh(b),
                    "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0} for k, (i, c, b) in enumerate(objects)]
    results = [{"image_id": i, "category_id": int(c), "bbox": _xywh(b), "score": float(s)}
               for i, d in enumerate(detections) for c, b, s in zip(d.labels, d.boxes, d.scores)]
    return {"images": images, "annotations": annotations, "categories": [{"id": k, "name": n} for k, n in enumerate(classes)]}, results


def coco_map(truth: list[Boxes], detections: list[Boxes], classes: list[str], side: tuple[int, int]) -> CocoScores:
    """Score detections against the truth with pycocotools' COCOeval (bbox), quietly; summary lines kept for people."""
    coco_mod = require("pycocotools.coco", "detection metrics (COCO mAP)")
    cocoeval_mod = require("pycocotools.cocoeval", "detection metrics (COCO mAP)")
    gt_dict, results = coco_dicts(truth, detections, classes, side)
    if not results:  # COCO's loadRes refuses an empty list: nothing detected scores 0 everywhere
        return CocoScores(0.0, 0.0, 0.0, {n: 0.0 for n in classes}, ["no detections: every AP is 0"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = coco_mod.COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluation = cocoeval_mod.COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # (iou thresholds, recall points, classes, areas, max detections)
    per_class = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    summary = [line for line in printed.getvalue().splitlines() if line.startswith(" Average")]
    stats = evaluation.stats
    return CocoScores(float(stats[0]), float(stats[1]), float(stats[2]), per_class, summary)
