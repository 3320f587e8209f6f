"""Images: any image source (Fashion-MNIST, scikit-learn's digits, class folders, "hf:" datasets) as cached uint8 arrays;
shift/flip augmentation.

Images are stored as uint8 (n, channels, size, size); the loader normalises them with the
training set's per-channel mean and std, and augments training rows only.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, labelled_rows, labels_to_ids, split_arrays, test_ids
from largo.data.config import ClassDataConfig, check_non_negative
from largo.data.draws import SampleDraws
from largo.data.sources import IMAGES, DataSource, Row, open_source
from largo.data.sources.files import IMAGE_SUFFIXES  # noqa: F401  (what `largo explain` picks out of a folder for a ViT)
from largo.errors import DataError

_VERSION = 1  # bump when the preparation below changes what it stores


@dataclass
class ImageDataConfig(ClassDataConfig):
    """Images: Fashion-MNIST, scikit-learn's digits or a folder with one subfolder of images per class."""

    source: str = "fashion-mnist"  # "fashion-mnist", "digits", a folder with one subfolder per class, or "hf:NAME"
    dir: str = "data/images"
    image_column: str = "image"  # hf: sources: column holding the images (decoded by Pillow)
    shift_px: int = 0  # translate training images by up to this many pixels (zero fill)
    hflip: bool = False  # mirror half of the training images left-right

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "shift_px")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow; install it with: pip install pillow") from None
    return Image


ImageRef = Path | bytes  # an image file, or an encoded image's bytes (a dataset row)


def read_images(refs: list[ImageRef], size: int, channels: int, *, multiple_of: int = 1,
                names: list[str] | None = None) -> tuple[np.ndarray, int, int]:
    """Images (files or encoded bytes) as uint8 (n, channels, size, size); size and channels 0 as in read_image_folder."""
    Image = _pillow()
    names = names or [str(r) for r in refs]
    if size == 0 or channels == 0:
        with _open(Image, refs[0], names[0]) as first:
            size = size or max(1, round(first.size[0] / multiple_of)) * multiple_of
        grey = all(_is_grey(Image, r, n) for r, n in zip(refs, names))
        channels = channels or (1 if grey else 3)
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(refs), channels, size, size), dtype=np.uint8)
    for i, (ref, name) in enumerate(zip(refs, names)):
        try:
            with _open(Image, ref, name) as img:
                pixels = np.asarray(img.convert(mode).resize((size, size), Image.BILINEAR))
        except OSError as e:
            raise DataError(f"{name}: not a readable image ({e})") from None
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out, size, channels


def _open(Image: Any, ref: ImageRef, name: str) -> Any:
    try:
        return Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
    except OSError as e:
        raise DataError(f"{name}: not a readable image ({e})") from None


def _is_grey(Image: Any, ref: ImageRef, name: str) -> bool:
    with _open(Image, ref, name) as img:
        return img.mode in ("1", "L", "LA", "I", "I;16", "F")


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): converted to grey (1) or RGB (3), resized bilinearly."""
    return read_images([path], size, channels)[0][0]


def _source(value: str, d: ImageDataConfig, *, test: bool = False) -> DataSource:
    return open_source(value, IMAGES, d, test=test)


def _pixels(source: DataSource, rows: list[Row], size: int, channels: int, multiple_of: int) -> np.ndarray:
    """The rows' images as uint8 (n, channels, size, size): decoded ones stacked as they are, files and bytes read here."""
    images = [r["image"] for r in rows]
    if source.fixed_shape:
        return np.stack(images)
    names = [r.get("id") or f"{source.value} row {k}" for k, r in enumerate(rows)]
    return read_images(images, size, channels, multiple_of=multiple_of, names=names)[0]


def _build(d: ImageDataConfig, *, image_size: int, in_channels: int, patch_size: int) -> Callable[[], Built]:
    """The preparation for d.source, as a function the cache calls on a miss (sizes 0 = the first image's, rounded to the patch)."""
    roles = {"image": d.image_column, "label": d.label_column}

    def build() -> Built:
        source = _source(d.source, d)
        rows = labelled_rows(source, roles)
        x = _pixels(source, rows, image_size, in_channels, patch_size)
        y, classes = labels_to_ids([r["label"] for r in rows], source.label_order)
        arrays = split_arrays(x, y, [r.get("split") for r in rows], d.val_fraction)
        if d.test_source:
            test = _source(d.test_source, d, test=True)
            test_rows = labelled_rows(test, roles)
            arrays["test_x"] = _pixels(test, test_rows, arrays["train_x"].shape[-1], arrays["train_x"].shape[1], 1)
            arrays["test_y"] = test_ids([r["label"] for r in test_rows], classes, d.test_source)
        keep = even_subset(len(arrays["train_y"]), d.max_rows)
        arrays["train_x"], arrays["train_y"] = arrays["train_x"][keep], arrays["train_y"][keep]
        pixels = arrays["train_x"].astype(np.float64) / 255.0
        meta = {"classes": classes, "mean": pixels.mean(axis=(0, 2, 3)).tolist(), "std": pixels.std(axis=(0, 2, 3)).clip(1e-3).tolist()}
        return Built(arrays, meta)

    return build


def prepare_images(d: ImageDataConfig, *, image_size: int, in_channels: int, patch_size: int, force: bool = False,
                   log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the image arrays of d; the sizes are the model's (0 = the data's own)."""
    source = _source(d.source, d)
    test = _source(d.test_source, d, test=True).fingerprint() if d.test_source else ""
    settings = {
        "kind": "images", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": source.fingerprint() + test, "val_fraction": d.val_fraction,
        "max_rows": d.max_rows, "image_size": image_size, "in_channels": in_channels, "patch_size": patch_size,
    }
    if source.fixed_shape:  # fixed-size built-ins: the model's size is checked, not applied
        settings.update(image_size=0, in_channels=0, patch_size=0)
    build = _build(d, image_size=image_size, in_channels=in_channels, patch_size=patch_size)
    return cached_arrays(d.dir, settings, build, force=force, log=log)


def image_transform(mean: list[float], std: list[float], *, shift_px: int, hflip: bool) -> Transform:
    """uint8 rows (b, c, h, w) -> normalised float32; training rows are shifted (zero fill) and maybe mirrored."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def transform(rows: np.ndarray, draws: SampleDraws | None) -> torch.Tensor:
        if draws is not None and (shift_px or hflip):
            rows = augment_images(rows, draws, shift_px=shift_px, hflip=hflip)
        return (torch.from_numpy(np.asarray(rows, dtype=np.float32)) - mean_t) / std_t

    return transform


def augment_images(rows: np.ndarray, draws: SampleDraws, *, shift_px: int, hflip: bool) -> np.ndarray:
    """Each row translated by its own (dy, dx) in [-shift_px, shift_px] (zero fill) and mirrored with probability 1/2.

    One gather for the whole batch: output pixel (y, x) of row i reads padded pixel (y + dy_i, x + dx_i),
    with x reversed first for the mirrored rows.
    """
    b, _, h, w = rows.shape
    s = shift_px
    padded = np.pad(rows, ((0, 0), (0, 0), (s, s), (s, s)))  # zeros: the background of the built-in sets
    dy, dx = draws.integers(0, 0, 2 * s, count=2).T  # offsets into the padded image, (b,) each
    cols = np.arange(w)[None, :].repeat(b, 0)
    if hflip:
        flip = draws.uniform(1)[:, 0] < 0.5
        cols[flip] = cols[flip, ::-1]
    ys = (np.arange(h)[None, :] + dy[:, None])[:, None, :, None]  # (b, 1, h, 1)
    xs = (cols + dx[:, None])[:, None, None, :]  # (b, 1, 1, w)
    return padded[np.arange(b)[:, None, None, None], np.arange(rows.shape[1])[None, :, None, None], ys, xs]
