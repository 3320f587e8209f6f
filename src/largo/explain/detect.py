"""`largo explain` for detectors: why each box was found.

For each detection of a scene (score >= --min-score, the top_k best, or only those of the --target class), integrated
gradients of that detection's heatmap logit (its class at its centre cell) over the pixels, from the blank image, with
the completeness check; and attention rollout from its cell as the second view. Each record carries the share of the
positive attribution that falls inside the detection's box (grown by one patch, clipped to the image) next to that
region's share of the image: a detector that looks at the object it names has the first well above the second.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.config import RunConfig
from largo.errors import ConfigError
from largo.explain import render
from largo.explain.attribute import Attributed, integrated_gradients
from largo.explain.inputs import Example, expand_sources, output_name
from largo.explain.rollout import attention_rollout
from largo.models.detect import DetectConfig, DetectSpec, decode, peaks
from largo.models.spec import Attribution

MIN_SCORE = 0.3  # detections below this heatmap score are not explained (as detections.png leaves them out)


def detector_examples(spec: DetectSpec, cfg: RunConfig, ckpt: Path, arrays: dict[str, Any], sources: list[str],
                      split: str | None, limit: int) -> list[Example]:
    """The scenes: a split's first `limit`, then each image file (resized to the model's canvas)."""
    examples = []
    if split is not None:
        if f"{split}_x" not in arrays:
            have = sorted(k[:-2] for k in arrays if k.endswith("_x"))
            raise ConfigError(f"--split {split}: the prepared data has no such split; it has {', '.join(have)}")
        x = arrays[f"{split}_x"]
        examples += [Example(f"{split}[{i}]", np.asarray(x[i])) for i in range(min(limit, len(x)))]
    examples += [Example(src, spec.read_example(cfg.data, cfg.model, ckpt, src)) for src in expand_sources(spec, sources, limit)]
    return examples


def chosen(out: torch.Tensor, cfg: DetectConfig, top_k: int, target: int | None) -> list[tuple[int, int, float, list[float]]]:
    """One scene's detections to explain: (cell, class, score, box) of the best top_k peaks above MIN_SCORE (of one class)."""
    scores, classes, cells = (t[0] for t in peaks(out, cfg))
    boxes = decode(out, cfg)[0][0]
    keep = [(int(c), int(k), float(s), boxes[i].tolist()) for i, (s, k, c) in enumerate(zip(scores, classes, cells))
            if s >= MIN_SCORE and (target is None or int(k) == target)]
    return keep[:top_k]


def heat_logits(model: nn.Module, cfg: DetectConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> every heatmap logit (b, cells x classes): detection (cell, class) is output cell x classes + class."""
    return lambda x: model(x)[..., : cfg.num_classes].flatten(1)


def inside_share(attributions: np.ndarray, box: list[float], grow: int) -> tuple[float, float]:
    """(share of the positive attribution inside the box grown by `grow` pixels, that region's share of the image)."""
    h, w = attributions.shape
    x0, y0 = max(0, int(box[0]) - grow), max(0, int(box[1]) - grow)
    x1, y1 = min(w, int(np.ceil(box[2])) + grow), min(h, int(np.ceil(box[3])) + grow)
    positive = np.clip(attributions, 0, None)
    total = float(positive.sum()) or 1.0
    return float(positive[y0:y1, x0:x1].sum()) / total, (x1 - x0) * (y1 - y0) / (h * w)


def explain_detector(model: nn.Module, cfg: RunConfig, ckpt: Path, spec: DetectSpec, sources: list[str], out_dir: Path, *,
                     split: str | None, limit: int, target: str | None, steps: int, max_steps: int, top_k: int,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Integrated gradients and rollout for each explained detection of each scene; one record (and PNG) per detection."""
    prepared = spec.prepare(cfg.data, cfg.model, log=lambda _m: None)  # the run's data: its normalisation, classes, splits
    classes, det = prepared.classes, model.cfg
    if target is not None and target not in classes:
        raise ConfigError(f"--target {target!r} is not a class of this model; its classes: {', '.join(classes)}")
    pixels = spec.dataset(cfg.data, cfg.model, prepared, seed=cfg.run.seed).pixels
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    for i, e in enumerate(detector_examples(spec, cfg, ckpt, prepared.arrays, sources, split, limit)):
        x = pixels(e.row[None]).to(device)
        with torch.no_grad():
            found = chosen(model(x), det, top_k, classes.index(target) if target is not None else None)
        if not found:
            log(f"{e.name}: no detection with score >= {MIN_SCORE}{f' of class {target}' if target else ''}")
            continue
        n = len(found)
        att = Attribution("image", heat_logits(model, det), x.expand(n, -1, -1, -1), pixels(np.zeros_like(e.row[None])).to(device)
                          .expand(n, -1, -1, -1), lambda a: a.sum(1))
        wanted = torch.tensor([cell * det.num_classes + k for cell, k, _, _ in found], device=device)
        result = integrated_gradients(att, wanted, steps=steps, max_steps=max_steps)
        rolled = cell_rollout(model, x, [cell for cell, *_ in found], det)
        for j, (cell, k, score, box) in enumerate(found):
            records.append(detection_record(e, i, j, classes[k], score, box, result, rolled[j], det, out_dir, log))
    return records


def cell_rollout(model: nn.Module, x: torch.Tensor, cells: list[int], cfg: DetectConfig) -> np.ndarray:
    """Attention rollout from each detection's cell, drawn on the pixels: (n, side, side)."""
    rows = attention_rollout(model, lambda: model(x))[0, cells]  # (n, cells)
    grid = rows.reshape(len(cells), cfg.grid, cfg.grid)
    return grid.repeat_interleave(cfg.patch_size, 1).repeat_interleave(cfg.patch_size, 2).cpu().numpy()


def detection_record(e: Example, i: int, j: int, name: str, score: float, box: list[float], result: Attributed,
                     rolled: np.ndarray, cfg: DetectConfig, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """One detection's figures and its PNG (the scene, the attribution and the rollout, its box outlined)."""
    a = result.maps[j].cpu().numpy()
    inside, area = inside_share(a, box, cfg.patch_size)
    record = {"input": e.name, "detection": j, "predicted": name, "probability": score, "target": name,
              "box": [round(v, 1) for v in box], "inside_share": inside, "box_area_share": area,
              "score": float(result.score[j]), "baseline_score": float(result.baseline_score[j]), "steps": int(result.steps[j]),
              "attribution_sum": float(result.total[j]), "completeness_error": float(result.completeness_error[j])}
    title = (f"{name} ({score:.2f}) | {100 * inside:.0f}% of the positive attribution inside the box (+1 patch), which is "
             f"{100 * area:.0f}% of the image | completeness error {100 * record['completeness_error']:.1f}%")
    path = out_dir / output_name(i, f"{e.name}_{j}", ".png")
    record["file"] = render.image_png(path, e.row, a, rolled, title, boxes=[tuple(box)]).name
    log(f"{e.name} #{j}: {title} -> {path}")
    return record

