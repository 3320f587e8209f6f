"""A class-conditional image generator's sampler, what it is scored by, and the pictures it draws.

FID-F is the Frechet distance (Heusel et al. 2017's formula, as pytorch-fid computes it, with scipy's sqrtm) between
two sets of images in the feature space of an image classifier trained by largo: the pooled vector its head reads
(the `vision_fashion` ViT's 64 or 128 features) stands where Inception-v3's 2,048 pool features stand in FID, whose
weights cannot be downloaded here. Figures are therefore comparable only with FID-F under the same classifier.
Class agreement is the share of samples that classifier labels as the class they were asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.errors import ConfigError
from largo.models.results import GenerateRequest, TaskResults
from largo.models.scorer_run import load_scorer, locate_scorer, saved_section
from largo.models.spec import Task, get_spec
from largo.optional import require
from largo.precision import autocast

SAMPLE_BATCH = 500  # images sampled (and classified) per batch


# ---------------------------------------------------------------- the judging classifier

class Judge:
    """A trained image classifier as FID-F's feature extractor: pooled features (n, dim) and predicted labels (n,)."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], classes: list[str]):
        self.model, self.classes = model.eval(), classes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self._pooled: list[torch.Tensor] = []
        # the head's input is the pooled vector: taken on its way in, the classifier's code stays as it is
        model.head.register_forward_pre_hook(lambda _m, args: self._pooled.append(args[0].detach().float()))

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray, *, batch: int = SAMPLE_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (n, c, h, w) -> (features (n, dim) float64, predicted class ids (n,))."""
        device = next(self.model.parameters()).device
        feats, labels = [], []
        for start in range(0, len(pixels), batch):
            x = (torch.from_numpy(np.asarray(pixels[start:start + batch], dtype=np.float32)) - self.mean) / self.std
            self._pooled.clear()
            logits = self.model(x.to(device))
            feats.append(self._pooled[-1].cpu())
            labels.append(logits.argmax(-1).cpu())
        return torch.cat(feats).double().numpy(), torch.cat(labels).numpy()


def load_judge(where: str, *, image_size: int, in_channels: int, classes: list[str], device: torch.device,
               log: Callable[[str], None]) -> Judge:
    """The classifier run (or checkpoint) `where` names, checked against the generator's images and classes."""
    hint = "train one with `largo train vision_fashion` and set model.classifier to its run folder"
    path, state = locate_scorer(where, "model.classifier", f"FID-F and class agreement need an image classifier: {hint}", log=log)
    raw = state["config"]
    spec = get_spec(raw["model"]["arch"])
    cfg, data = saved_section(spec.model_config, raw["model"]), saved_section(spec.data_config, raw["data"])
    found = (getattr(cfg, "image_size", None), getattr(cfg, "in_channels", None), getattr(cfg, "num_classes", None))
    if found != (image_size, in_channels, len(classes)):
        raise ConfigError(f"model.classifier {where}: classifies {found[0]}x{found[0]} images of {found[1]} channel(s) into "
                          f"{found[2]} classes; the generator makes {image_size}x{image_size}x{in_channels} of {len(classes)}")
    model = load_scorer(cfg, path, device)
    prepared = spec.prepare(data, cfg, log=log)  # its own normalisation statistics (a cache hit after its training)
    if prepared.classes != classes:
        raise ConfigError(f"model.classifier {where}: its classes {prepared.classes} differ from the generator's {classes}")
    return Judge(model, prepared.meta["mean"], prepared.meta["std"], classes)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d) (pytorch-fid's formula, scipy's sqrtm)."""
    linalg = require("scipy.linalg", "FID-F")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # a singular product: offset both covariances slightly (as pytorch-fid does)
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)  # tiny imaginary parts from numerical error
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# ---------------------------------------------------------------- sampling (flow matching's ODE, with guidance)

def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Generated images in [-1, 1] -> uint8 pixels (clipped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal image per seed (b, *shape): a sample depends on its own seed only, whatever batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def sample(model: nn.Module, labels: torch.Tensor, seeds: list[int], *, steps: int, guidance: float,
           sampler: str = "heun") -> torch.Tensor:
    """Images (b, c, h, w) in about [-1, 1] for `labels`, integrating dx/dt = v from t = 1 to 0 with guidance."""
    cfg = model.cfg  # a DiTConfig
    device = next(model.parameters()).device
    x = initial_noise(seeds, (cfg.in_channels, cfg.image_size, cfg.image_size)).to(device)
    labels = labels.to(device)
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tb = torch.full((x.shape[0],), t, device=device)
        if guidance == 1.0:
            return model(x, tb, labels).float()
        null = torch.full_like(labels, cfg.num_classes)
        v_c, v_u = model(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([labels, null])).float().chunk(2)
        return v_u + guidance * (v_c - v_u)

    for t, t_next in zip(times[:-1], times[1:]):
        v = velocity(x, t)
        x_euler = x + (t_next - t) * v
        # Heun: average the slopes at both ends; the last step (to t = 0) stays Euler, as in EDM's sampler
        x = x + (t_next - t) * 0.5 * (v + velocity(x_euler, t_next)) if sampler == "heun" and t_next > 0 else x_euler
    return x


def generate_pixels(model: nn.Module, labels: list[int], seeds: list[int], *, precision: str,
                    log: Callable[[str], None] | None = None) -> np.ndarray:
    """uint8 samples (n, c, h, w) of the asked labels, each from its own seed, with the model config's sampler."""
    cfg, device = model.cfg, next(model.parameters()).device
    out = []
    for start in range(0, len(labels), SAMPLE_BATCH):
        with autocast(device, precision):
            x = sample(model, torch.tensor(labels[start:start + SAMPLE_BATCH]), seeds[start:start + SAMPLE_BATCH],
                       steps=cfg.sample_steps, guidance=cfg.guidance, sampler=cfg.sampler)
        out.append(to_pixels(x))
        if log and len(labels) > SAMPLE_BATCH:
            log(f"sampled {min(start + SAMPLE_BATCH, len(labels)):,} of {len(labels):,}")
    return np.concatenate(out)


# ---------------------------------------------------------------- metrics, baselines, predictions

def baseline_sets(train_x: np.ndarray, train_y: np.ndarray, asked: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """train_images: a training image of each asked class (the floor); mean_image: its class's mean image plus Gaussian
    noise with the class's per-pixel standard deviation (clipped to the pixel range)."""
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(train_y == c) for c in np.unique(asked)}
    picks = np.array([rng.choice(by_class[c]) for c in asked])
    train_images = np.asarray(train_x[np.sort(picks)])[np.argsort(np.argsort(picks))]  # read in file order, then put back
    stats = {c: (np.asarray(train_x[i], dtype=np.float64).mean(0), np.asarray(train_x[i], dtype=np.float64).std(0))
             for c, i in by_class.items()}
    mean_image = np.stack([stats[c][0] + stats[c][1] * rng.standard_normal(stats[c][0].shape) for c in asked])
    return {"train_images": train_images, "mean_image": mean_image.clip(0, 255).round().astype(np.uint8)}


def scored(judge: Judge, pixels: np.ndarray, asked: np.ndarray, reference: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """FID-F against the reference features and class agreement with the asked classes; and the judge's labels."""
    feats, labels = judge(pixels)
    return {"fid_f": frechet_distance(feats, reference), "class_agreement": float((labels == asked).mean())}, labels


def generation_results(model: nn.Module, task: Task, *, device: torch.device, precision: str, limit: int | None,
                       log: Callable[[str], None]) -> TaskResults:
    """Samples of the test set's classes (one per test image, or `limit`) scored against the whole test set, with baselines."""
    cfg, a, classes = model.cfg, task.prepared.arrays, task.prepared.classes
    judge = load_judge(cfg.classifier, image_size=cfg.image_size, in_channels=cfg.in_channels, classes=classes,
                       device=device, log=log)
    test_x, test_y = np.asarray(a["val_x"]), np.asarray(a["val_y"])
    reference, test_labels = judge(test_x)
    n = len(test_y) if limit is None else max(2, min(limit, len(test_y)))
    asked, seeds = test_y[:n], list(range(n))  # the test set's class mix; sample i from seed i
    log(f"FID-F: {n:,} samples ({cfg.sampler}, {cfg.sample_steps} steps, guidance {cfg.guidance:g}) against "
        f"{len(test_y):,} test images; classifier {cfg.classifier} ({100 * float((test_labels == test_y).mean()):.1f}% on them)")
    pixels = generate_pixels(model, asked.tolist(), seeds, precision=precision, log=log)
    metrics, labels = scored(judge, pixels, asked, reference)
    baselines = {name: scored(judge, x, asked, reference)[0]
                 for name, x in baseline_sets(a["train_x"], a["train_y"], asked, seed=0).items()}
    predictions = [{"input": {"class": int(c), "seed": s}, "reference": classes[int(c)], "output": classes[int(p)]}
                   for c, s, p in zip(asked, seeds, labels)]
    lines = [f"FID-F: Frechet distance of {judge.model.cfg.dim}-d pooled features of the classifier {cfg.classifier} "
             f"(not Inception); reference: the {len(test_y):,} test images",
             "class agreement per class: " + ", ".join(f"{classes[c]} {float((labels[asked == c] == c).mean()):.2f}"
                                                      for c in np.unique(asked))]
    return TaskResults(metrics, baselines, predictions, lines)


# ---------------------------------------------------------------- pictures

def grid_figure(pixels: np.ndarray, rows: int, row_names: list[str], path: Path) -> None:
    """A grid of uint8 images (rows * cols, c, h, w), one row per name, saved as a PNG (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, c, h, w = pixels.shape
    cols = n // rows
    tiles = pixels.reshape(rows, cols, c, h, w).transpose(0, 3, 1, 4, 2)  # (rows, h, cols, w, c)
    pad = np.pad(tiles, ((0, 0), (1, 1), (0, 0), (1, 1), (0, 0)), constant_values=255).reshape(rows * (h + 2), cols * (w + 2), c)
    fig, ax = plt.subplots(figsize=(0.4 * cols + 1.3, 0.4 * rows + 0.2), dpi=150)  # about 2 screen pixels per image pixel
    ax.imshow(pad[..., 0] if c == 1 else pad, cmap="gray" if c == 1 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([(h + 2) * (r + 0.5) for r in range(rows)], row_names, fontsize=7)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout(pad=0.2)
    tmp = path.with_name(f".{path.name}.tmp.png")  # written whole, then renamed: never half a picture
    fig.savefig(tmp, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    tmp.replace(path)


def write_class_grid(model: nn.Module, class_ids: list[int], per_class: int, path: Path, classes: list[str], *,
                     seed: int, precision: str) -> None:
    """per_class samples of each class, one row per class (seeds seed, seed + 1, ... along each row)."""
    labels = [c for c in class_ids for _ in range(per_class)]
    seeds = [seed + i for _ in class_ids for i in range(per_class)]
    pixels = generate_pixels(model, labels, seeds, precision=precision)
    grid_figure(pixels, len(class_ids), [f"{c} {classes[c]}" for c in class_ids], path)


def class_names(cfg: Any, k: int) -> list[str]:
    """The class names of a run's prepared data (its manifest), or the class numbers when the data folder is gone."""
    from largo.data.arrays import MANIFEST

    if not (Path(cfg.data.dir) / MANIFEST).is_file():
        return [str(c) for c in range(k)]
    names = get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, log=lambda _m: None).classes
    return names if len(names) == k else [str(c) for c in range(k)]


def respond_pictures(model: nn.Module, cfg: Any, request: GenerateRequest) -> list[str]:
    """`largo generate RUN [--class C] --n N --out FILE.png`: N samples of class C (every class without --class)."""
    k = model.cfg.num_classes
    classes = class_names(cfg, k)
    if request.class_id is not None and not 0 <= request.class_id < k:
        raise ConfigError(f"--class {request.class_id}: this model generates classes 0..{k - 1}")
    out = Path(request.out or ("samples.png" if request.class_id is None else f"class_{request.class_id}.png"))
    if out.suffix.lower() != ".png" or out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"--out {out}: give a .png file in an existing folder")
    if request.class_id is None:
        write_class_grid(model, list(range(k)), request.n, out, classes, seed=request.seed, precision=cfg.train.precision)
        return [f"{request.n} samples of each of {k} classes -> {out}"]
    cols = min(request.n, 8)
    rows = -(-request.n // cols)
    seeds = list(range(request.seed, request.seed + rows * cols))
    pixels = generate_pixels(model, [request.class_id] * len(seeds), seeds, precision=cfg.train.precision)
    pixels[request.n:] = 255  # a ragged last row is left white
    grid_figure(pixels, rows, [f"{request.class_id} {classes[request.class_id]}"] + [""] * (rows - 1), out)
    return [f"{request.n} samples of class {request.class_id} -> {out}"]
