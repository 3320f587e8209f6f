"""Object detection: the ViT stem and trunk with a dense per-patch head (CenterNet-style), scored by COCOeval.

Every patch of the grid predicts, for each class, how likely an object's centre falls in it (a heatmap), and the
distances from its centre to the four sides of that object's box. Training (CenterNet, Zhou et al. 2019): the
target heatmap is a Gaussian bump at each object's centre cell, learned with the penalty-reduced focal loss; the
box is learned with GIoU plus L1 (DETR's box terms) at the cells inside it, weighted by the bump (TTFNet). Decoding keeps the local maxima of
the heatmap (a 3x3 max-pool: no NMS), the top `model.max_detections` of them with their boxes.

Why dense and not DETR's set prediction: on a CPU budget DETR is known to converge slowly (hundreds of epochs; the
Hungarian matching changes its targets from step to step), while a dense head gives every patch a fixed,
local target from the first step, and the trunk stays the encoder every other architecture shares (no decoder).

Loss bookkeeping: an object has five targets (its class and four box sides, data/detection.py), so the loop's
divisor is five per object; the loss sums the focal heatmap term (one per object, as CenterNet normalises it)
and the box terms (GIoU and L1 over the four sides).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from largo.data.arrays import Prepared
from largo.data.detection import DetectData, DetectDataConfig, prepare_detection, scene_batches
from largo.data.images import IMAGE_SUFFIXES, read_image
from largo.errors import ConfigError
from largo.models.coco_eval import Boxes, class_key, coco_map
from largo.models.config import ModelConfig
from largo.models.loss import IGNORE, Scored
from largo.models.results import TaskResults
from largo.models.spec import ArchSpec, DataShape, MemoryTerms, Task, register, resolved_field
from largo.models.trunk import Trunk
from largo.models.vit import ConvStem, PatchStem, conv_stem_macs_per_patch
from largo.optional import require
from largo.precision import Layout, autocast

PRIOR = 0.01  # initial heatmap probability (RetinaNet's prior): the first steps are not swamped by the background
GIOU_WEIGHT, L1_WEIGHT = 2.0, 0.5  # box terms per object (L1 in units of the patch stride); DETR weighs GIoU 2
MIN_SIGMA = 0.5  # smallest Gaussian bump, in cells (tiny objects still spread a little)


@dataclass
class DetectConfig(ModelConfig):
    """A detector: square images cut into patches, one prediction per patch."""

    arch: str = "detect"
    num_classes: int = 0  # object classes; 0 = the data's
    image_size: int = 0  # square input side in pixels; 0 = the data's (data.canvas)
    in_channels: int = 0  # image channels; 0 = the data's (1 grey, 3 colour)
    patch_size: int = 8  # side of the square patches, the stride of the prediction grid; must divide image_size
    max_detections: int = 50  # boxes kept per image when decoding (COCO scores at most 100)
    stem: str = "patch"  # "patch": ViT's linear patchify; "conv": stacked small convolutions to the same grid (ConvStem)
    flip_test: bool = False  # evaluate on each image and its mirror, outputs averaged (CenterNet's flip test): 2x the cost

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_classes", "image_size", "in_channels"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} ({getattr(self, key)}) must be >= 0 (0 = from the data)")
        if self.patch_size < 1 or not 1 <= self.max_detections <= 100:
            raise ConfigError(f"model.patch_size ({self.patch_size}) must be >= 1 and model.max_detections "
                              f"({self.max_detections}) in [1, 100]")
        if self.stem not in ("patch", "conv"):
            raise ConfigError(f"model.stem = {self.stem!r} is not valid; choose 'patch' or 'conv'")
        if self.image_size and self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must divide by model.patch_size ({self.patch_size})")

    @property
    def grid(self) -> int:
        """Cells per side of the prediction grid."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


class Detector(nn.Module):
    """Images (b, c, s, s) -> per-cell outputs (b, cells, classes + 4): heatmap logits, then log side distances."""

    def __init__(self, cfg: DetectConfig):
        super().__init__()
        if cfg.num_classes < 1:
            raise ValueError("DetectConfig.num_classes must be resolved (>= 1) before building a detector")
        self.cfg = cfg
        self.stem = ConvStem(cfg) if cfg.stem == "conv" else PatchStem(cfg)
        self.pos = nn.Parameter(torch.empty(cfg.num_patches, cfg.dim))
        self.trunk = Trunk(cfg, causal=False, rotary=False)
        self.head = nn.Linear(cfg.dim, cfg.num_classes + 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, _ = self.stem(images)  # (b, cells, dim), cells in row-major order
        return self.head(self.trunk(x + self.pos.to(x.dtype)))  # (b, cells, classes + 4)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Stem, unit-scale positions (as the ViT), trunk; head weights zero: heatmap at the prior, boxes one stride."""
        self.stem.init_weights()
        nn.init.normal_(self.pos, std=1.0)
        self.trunk.init_weights()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.bias[: self.cfg.num_classes] = -math.log((1 - PRIOR) / PRIOR)


# ---- targets, loss and decoding: three named pieces, each testable alone


@dataclass
class Objects:
    """The true objects of a batch, padded: which are real (b, m), class (b, m), box (b, m, 4), centre cell (b, m) and its
    column and row (b, m)."""

    real: torch.Tensor
    classes: torch.Tensor
    boxes: torch.Tensor
    cell: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor


def objects(targets: torch.Tensor, cfg: DetectConfig) -> Objects:
    """Targets (b, m, 5) (class, x0, y0, x1, y1; padding rows IGNORE) -> the objects and the cell holding each centre."""
    real = targets[..., 0] != IGNORE
    boxes = targets[..., 1:].float()
    col = ((boxes[..., 0] + boxes[..., 2]) / (2 * cfg.patch_size)).floor().clamp(0, cfg.grid - 1)
    row = ((boxes[..., 1] + boxes[..., 3]) / (2 * cfg.patch_size)).floor().clamp(0, cfg.grid - 1)
    return Objects(real, targets[..., 0].clamp_min(0).long(), boxes, (row * cfg.grid + col).long(), col, row)


def bumps(obj: Objects, cfg: DetectConfig) -> torch.Tensor:
    """Each object's Gaussian bump over the grid (b, m, cells): 1 at its centre cell, sigma a quarter of the box's short
    side (in cells); padding objects are all zero."""
    g = torch.arange(cfg.grid, device=obj.boxes.device, dtype=torch.float32)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    d2 = (gx.flatten()[None, None] - obj.col[..., None]) ** 2 + (gy.flatten()[None, None] - obj.row[..., None]) ** 2
    side = torch.minimum(obj.boxes[..., 2] - obj.boxes[..., 0], obj.boxes[..., 3] - obj.boxes[..., 1])
    sigma = (side / (4 * cfg.patch_size)).clamp_min(MIN_SIGMA)
    return torch.exp(-d2 / (2 * sigma[..., None] ** 2)) * obj.real[..., None]


def heatmap(obj: Objects, cfg: DetectConfig, bump: torch.Tensor | None = None) -> torch.Tensor:
    """Target heatmap (b, cells, classes): per class the largest of its objects' Gaussian bumps."""
    bump = bumps(obj, cfg) if bump is None else bump
    onehot = F.one_hot(obj.classes, cfg.num_classes).float() * obj.real[..., None]  # (b, m, classes)
    return (bump[..., None] * onehot[:, :, None, :]).amax(1)  # (b, cells, classes)


def box_weights(obj: Objects, cfg: DetectConfig, bump: torch.Tensor) -> torch.Tensor:
    """Where each object's box is learned (b, m, cells): every cell whose centre lies inside the box and whose strongest
    bump is this object's, weighted by the bump and normalised to sum to 1 per object (TTFNet, Liu et al. 2020: many
    Gaussian-weighted cells teach the box faster than CenterNet's single centre cell). The centre cell always counts."""
    s = cfg.patch_size
    centre = (torch.arange(cfg.grid, device=bump.device, dtype=torch.float32) + 0.5) * s
    cy, cx = torch.meshgrid(centre, centre, indexing="ij")
    b = obj.boxes[..., None, :]
    inside = ((cx.flatten() > b[..., 0]) & (cx.flatten() < b[..., 2]) & (cy.flatten() > b[..., 1]) & (cy.flatten() < b[..., 3]))
    owner = bump == bump.amax(1, keepdim=True)  # overlapping objects: a cell teaches the box of the nearer centre
    at_centre = F.one_hot(obj.cell, cfg.num_patches).bool()
    w = bump * ((inside & owner) | at_centre) * obj.real[..., None]
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed: (1-p)^2 log p at the peaks, (1-y)^4 p^2 log(1-p) elsewhere."""
    logits = logits.float()
    p = logits.sigmoid()
    peak = target == 1.0
    pos = (1 - p) ** 2 * F.logsigmoid(logits)
    neg = (1 - target) ** 4 * p**2 * F.logsigmoid(-logits)
    return -torch.where(peak, pos, neg).sum()


def cell_boxes(distances: torch.Tensor, cell: torch.Tensor, cfg: DetectConfig) -> torch.Tensor:
    """Log side distances (..., 4) predicted at cells (...) -> boxes (..., 4) x0 y0 x1 y1 in pixels."""
    s = cfg.patch_size
    cx, cy = ((cell % cfg.grid).float() + 0.5) * s, ((cell // cfg.grid).float() + 0.5) * s
    d = s * distances.float().clamp(-6, 6).exp()  # the clamp keeps an early wild step finite
    return torch.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], dim=-1)


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalised IoU of matching boxes a, b (..., 4) x0 y0 x1 y1 (Rezatofighi et al. 2019)."""
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area_a + area_b - inter).clamp_min(1e-6)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0)
    hull_area = (hull[..., 0] * hull[..., 1]).clamp_min(1e-6)
    iou = inter / union
    return iou, iou - (hull_area - union) / hull_area


@dataclass
class DetectionLoss:
    """One batch's summed loss terms and how many objects were found at their centre (right class, IoU >= 0.5)."""

    heat: torch.Tensor
    box: torch.Tensor
    found: torch.Tensor
    objects: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.heat + self.box


def detection_loss(out: torch.Tensor, targets: torch.Tensor, cfg: DetectConfig) -> DetectionLoss:
    """Focal heatmap loss over every cell and class, plus GIoU and L1 box terms at each object's centre cell."""
    obj = objects(targets, cfg)
    logits, distances = out[..., : cfg.num_classes], out[..., cfg.num_classes:]
    bump = bumps(obj, cfg)
    heat = focal_loss(logits, heatmap(obj, cfg, bump))
    cells = torch.arange(cfg.num_patches, device=out.device)
    pred = cell_boxes(distances, cells, cfg)[:, None]  # (b, 1, cells, 4): every cell's box
    iou, g = giou(pred, obj.boxes[:, :, None])  # (b, m, cells)
    l1 = (pred - obj.boxes[:, :, None]).abs().sum(-1) / cfg.patch_size
    box = ((GIOU_WEIGHT * (1 - g) + L1_WEIGHT * l1) * box_weights(obj, cfg, bump)).sum()
    best = logits.gather(1, obj.cell[..., None].expand(-1, -1, cfg.num_classes)).argmax(-1)  # (b, m)
    iou = iou.gather(2, obj.cell[..., None])[..., 0]  # at each object's centre cell
    found = ((best == obj.classes) & (iou >= 0.5) & obj.real).sum()
    return DetectionLoss(heat, box, found, obj.real.sum())


@torch.no_grad()
def peaks(out: torch.Tensor, cfg: DetectConfig, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs (b, cells, classes + 4) -> the top-k heatmap peaks per image: scores (b, k), classes (b, k), cells (b, k).

    A peak is a cell whose score is the largest in its 3x3 neighbourhood for that class (CenterNet's max-pool in place
    of non-maximum suppression)."""
    b, c, g = out.shape[0], cfg.num_classes, cfg.grid
    heat = out[..., :c].float().sigmoid().transpose(1, 2).reshape(b, c, g, g)
    top = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = top.flatten(1).topk(min(k or cfg.max_detections, c * g * g), dim=1)  # over classes x cells
    return scores, index // (g * g), index % (g * g)


@torch.no_grad()
def flip_averaged(model: nn.Module, images: torch.Tensor, cfg: DetectConfig) -> torch.Tensor:
    """Outputs (b, cells, classes + 4) averaged over the images and their mirrors (CenterNet's flip test): the mirror's
    grid flipped back, its left and right distances swapped; heatmap probabilities and log distances averaged."""
    b, c, g = images.shape[0], cfg.num_classes, cfg.grid
    out = model(images).float()
    mirror = model(images.flip(-1)).float().reshape(b, g, g, -1).flip(2).reshape(b, g * g, -1)
    heat = (out[..., :c].sigmoid() + mirror[..., :c].sigmoid()) / 2
    distances = (out[..., c:] + mirror[..., c:][..., [2, 1, 0, 3]]) / 2
    return torch.cat([torch.logit(heat, eps=1e-6), distances], dim=-1)


@torch.no_grad()
def decode(out: torch.Tensor, cfg: DetectConfig, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs (b, cells, classes + 4) -> the top-k peaks' boxes (b, k, 4) clipped to the image, scores (b, k), classes (b, k)."""
    scores, classes, cell = peaks(out, cfg, k)
    at = out[..., cfg.num_classes:].gather(1, cell[..., None].expand(-1, -1, 4))
    boxes = cell_boxes(at, cell, cfg).clamp(0, cfg.image_size)
    return boxes, scores, classes


# ---- a baseline on the same scenes: where the bright blobs are, each named every class at its training frequency


def component_boxes(image: np.ndarray, *, threshold: int = 64, min_pixels: int = 12) -> np.ndarray:
    """Boxes (k, 4) around the connected bright regions of an image (c, h, w) uint8 (scipy.ndimage, 8-connectivity)."""
    ndimage = require("scipy.ndimage", "the components_prior detection baseline")
    mask = image.max(0) > threshold
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    out = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for k, s in enumerate(ndimage.find_objects(labels), start=1)
           if s is not None and sizes[k] >= min_pixels]
    return np.array(out, dtype=np.float32).reshape(-1, 4)


def components_prior(images: np.ndarray, prior: np.ndarray) -> list[Boxes]:
    """The `components_prior` baseline: each bright region's box, once per class, scored by the class's training share."""
    out = []
    for image in images:
        boxes = component_boxes(image)
        k = len(prior)
        out.append(Boxes(np.repeat(boxes, k, axis=0), np.tile(np.arange(k), len(boxes)), np.tile(prior, len(boxes))))
    return out


def truth_boxes(y: np.ndarray) -> list[Boxes]:
    """Stored targets (n, m, 5) -> each scene's true boxes and classes."""
    real = y[..., 0] != IGNORE
    return [Boxes(row[keep, 1:].astype(np.float64), row[keep, 0].astype(np.int64)) for row, keep in zip(y, real)]


class DetectSpec(ArchSpec):
    """Object detection on composed Fashion-MNIST scenes or a COCO set: ViT trunk, dense CenterNet-style head."""

    name = "detect"
    model_config = DetectConfig
    data_config = DetectDataConfig
    about = "object detection: ViT patches, a dense per-patch head (CenterNet-style), scored by COCOeval"
    export_formats = ("safetensors",)

    def build(self, cfg: DetectConfig) -> nn.Module:
        return Detector(cfg)

    def prepare(self, data: DetectDataConfig, model: DetectConfig, *, force: bool = False,
                log: Callable[[str], None] = print) -> Prepared:
        return prepare_detection(data, in_channels=model.in_channels, force=force, log=log)

    def resolve(self, model: DetectConfig, prepared: Prepared) -> DetectConfig:
        x = prepared.arrays["train_x"]  # (n, channels, side, side)
        return dataclasses.replace(model, num_classes=resolved_field("num_classes", model.num_classes, len(prepared.classes)),
                                   image_size=resolved_field("image_size", model.image_size, x.shape[-1]),
                                   in_channels=resolved_field("in_channels", model.in_channels, x.shape[1]))

    def positions(self, cfg: DetectConfig, prepared: Any) -> int:
        return cfg.num_patches

    def dataset(self, data: DetectDataConfig, model: DetectConfig, prepared: Prepared, *, seed: int) -> DetectData:
        a = prepared.arrays
        return DetectData((a["train_x"], a["train_y"]), (a["val_x"], a["val_y"]), seed=seed, mean=prepared.meta["mean"],
                          std=prepared.meta["std"], hflip=data.hflip)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return detection_loss(model(inputs), targets, _cfg(model)).total

    def score(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Scored:
        """Summed loss over five targets per object; "accuracy": objects found at their centre cell (right class, IoU >= .5)."""
        parts = detection_loss(model(inputs), targets, _cfg(model))
        return Scored(parts.total, 5 * parts.found, 5 * parts.objects)

    def data_shape(self, data: DetectDataConfig, model: DetectConfig) -> DataShape:
        if not (Path(data.dir) / "manifest.json").is_file():
            raise ConfigError(f"model.arch = 'detect' takes its classes and image size from the data; run `largo prepare` on "
                              f"this config first (data.dir {data.dir} is not prepared)")
        prepared = self.prepare(data, model, log=lambda _m: None)
        resolved = self.resolve(model, prepared)
        return DataShape(resolved, resolved.num_patches, resolved.num_patches * len(prepared.arrays["train_y"]))

    # ---- results: COCO mAP on the test scenes, the baseline on the same scenes, one prediction per scene
    def results(self, model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None = None,
                log: Callable[[str], None] = print) -> TaskResults:
        prepared, cfg = task.prepared, _cfg(model)
        split = "test" if "test_x" in prepared.arrays else "val"
        x, y = prepared.arrays[f"{split}_x"], prepared.arrays[f"{split}_y"]
        if limit:
            x, y = x[:limit], y[:limit]
        classes, side = prepared.classes, (cfg.image_size, cfg.image_size)
        truth, found = truth_boxes(np.asarray(y)), self.detect(model, task, x, device=device, precision=precision)
        scores = coco_map(truth, found, classes, side)
        prior = _class_prior(np.asarray(prepared.arrays["train_y"]), len(classes))
        base = coco_map(truth, components_prior(np.asarray(x), prior), classes, side)
        metrics = {"map": scores.map, "map_50": scores.map_50, "map_75": scores.map_75,
                   **{class_key(n): v for n, v in scores.per_class.items()}}
        lines = [f"COCOeval (pycocotools) on {len(truth):,} {split} scenes, {sum(len(t.labels) for t in truth):,} objects:",
                 *scores.summary, "per-class AP@[.5:.95]: " + ", ".join(f"{n} {v:.3f}" for n, v in scores.per_class.items())]
        return TaskResults(metrics, {"components_prior": {"map": base.map, "map_50": base.map_50, "map_75": base.map_75}},
                           [_prediction(i, split, t, d, classes) for i, (t, d) in enumerate(zip(truth, found))], lines)

    @torch.no_grad()
    def detect(self, model: nn.Module, task: Task, x: np.ndarray, *, device: torch.device, precision: str,
               batch: int = 64) -> list[Boxes]:
        """The model's decoded detections for stored scenes x (n, c, s, s) uint8."""
        was_training, cfg = model.training, _cfg(model)
        model.eval()
        out: list[Boxes] = []
        dummy = np.zeros((len(x), 1, 5), dtype=np.float32)
        for inputs, _ in scene_batches(x, dummy, task.dataset.pixels, batch):
            with autocast(device, precision):
                raw = flip_averaged(model, inputs.to(device), cfg) if cfg.flip_test else model(inputs.to(device))
            boxes, scores, classes = (t.cpu().numpy() for t in decode(raw.float(), cfg))
            out += [Boxes(b.astype(np.float64), c, s.astype(np.float64)) for b, s, c in zip(boxes, scores, classes)]
        model.train(was_training)
        return out

    def after_training(self, model: nn.Module, task: Task, run_dir: Path, *, device: torch.device, precision: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
        """detections.png: 16 test scenes with their true and predicted boxes."""
        from largo.observe.detections import draw_detections

        prepared = task.prepared
        split = "test" if "test_x" in prepared.arrays else "val"
        x, y = np.asarray(prepared.arrays[f"{split}_x"][:16]), np.asarray(prepared.arrays[f"{split}_y"][:16])
        found = self.detect(model, task, x, device=device, precision=precision)
        truth = [(t.boxes, t.labels) for t in truth_boxes(y)]
        path = draw_detections(run_dir / "detections.png", x, truth, [(d.boxes, d.labels, d.scores) for d in found],
                               prepared.classes)
        if path is None:
            return {}
        log(f"detections: {path}")
        return {"detections_png": str(path)}

    # ---- explanations: a scene from the split or an image file (resized to the canvas); explain/detect.py does the rest
    example_suffixes = tuple(sorted(IMAGE_SUFFIXES))

    def read_example(self, data: DetectDataConfig, model: DetectConfig, ckpt: Path, source: str) -> np.ndarray:
        return read_image(Path(source), model.image_size, model.in_channels)

    # ---- planner terms
    def extra_matmul_params(self, cfg: DetectConfig, seq_len: int) -> int:
        stem = conv_stem_macs_per_patch(cfg) if cfg.stem == "conv" else cfg.in_channels * cfg.patch_size**2 * cfg.dim
        return stem + cfg.dim * (cfg.num_classes + 4)  # stem and head, per cell

    def memory_terms(self, cfg: DetectConfig, micro_batch: int, seq_len: int, layout: Layout) -> MemoryTerms:
        pixels = cfg.in_channels * cfg.image_size**2
        tokens = micro_batch * seq_len
        residual = 2 if layout.name == "mixed" or layout.autocast else 4
        outputs = cfg.num_classes + 4
        return MemoryTerms(
            buffers=0,
            inputs=micro_batch * (4 * pixels + 4 * 5 * 8),  # pixels and (about) eight padded objects of five floats
            stem_saved=(2 * micro_batch * pixels if layout.compute_bytes == 2 else 0) + (
                2 * cfg.in_channels * cfg.patch_size**2 * cfg.dim if layout.autocast else 0),
            head_saved=tokens * ((4 + residual) * cfg.dim + 4) + tokens * cfg.dim * layout.compute_bytes,
            output_rows=tokens, outputs=outputs, head_params=(cfg.dim + 1) * outputs,
            residual_bytes=residual, rotary=False, causal=False,
            loss_grads=8 * tokens * outputs * 4,  # the focal loss's fp32 temporaries over every cell and class
        )


def _cfg(model: nn.Module) -> DetectConfig:
    """The detector's config, through wrappers (compiled, DDP)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return inner.cfg


def _class_prior(train_y: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's share of the training objects."""
    labels = train_y[..., 0][train_y[..., 0] != IGNORE].astype(np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return counts / max(1.0, counts.sum())


def _prediction(i: int, split: str, truth: Boxes, found: Boxes, classes: list[str]) -> dict[str, Any]:
    """One scene's line for --predictions: enough to re-score with pycocotools (boxes x0 y0 x1 y1 in pixels)."""
    return {"input": {"split": split, "scene": i},
            "reference": {"boxes": np.round(truth.boxes, 2).tolist(), "labels": [classes[int(c)] for c in truth.labels]},
            "output": {"boxes": np.round(found.boxes, 2).tolist(), "labels": [classes[int(c)] for c in found.labels],
                       "scores": np.round(found.scores, 5).tolist()}}


register(DetectSpec())
