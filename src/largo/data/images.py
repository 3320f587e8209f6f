"""Images: Fashion-MNIST (Debian IDX files), scikit-learn's digits, folders of images; shift/flip augmentation.

Images are stored as uint8 (n, channels, size, size); the loader normalises them with the
training set's per-channel mean and std, and augments training rows only.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, files_fingerprint, labels_to_ids
from largo.data.prepare import is_validation
from largo.data.config import ClassDataConfig, check_non_negative
from largo.errors import DataError

if TYPE_CHECKING:  # the run config is handed in at run time; only its [data] and [model] fields are read
    from largo.config import RunConfig

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_VERSION = 1  # bump when the preparation below changes what it stores


@dataclass
class ImageDataConfig(ClassDataConfig):
    """Images: Fashion-MNIST, scikit-learn's digits or a folder with one subfolder of images per class."""

    source: str = "fashion-mnist"  # "fashion-mnist", "digits", or a folder with one subfolder per class
    dir: str = "data/images"
    shift_px: int = 0  # translate training images by up to this many pixels (zero fill)
    hflip: bool = False  # mirror half of the training images left-right

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "shift_px")


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


def _fashion_files() -> dict[str, Path]:
    names = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
             "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}
    files = {k: FASHION_DIR / v for k, v in names.items()}
    for path in files.values():
        if not path.is_file():
            raise DataError(f"data.source 'fashion-mnist': {path} is missing; install it with: apt-get install dataset-fashion-mnist")
    return files


def fashion_mnist() -> tuple[dict[str, np.ndarray], list[str]]:
    """The official 60k/10k split as (n, 1, 28, 28) uint8 images and int64 labels."""
    raw = {k: read_idx(p) for k, p in _fashion_files().items()}
    arrays = {"train_x": raw["train_x"][:, None], "train_y": raw["train_y"].astype(np.int64),
              "val_x": raw["test_x"][:, None], "val_y": raw["test_y"].astype(np.int64)}
    return arrays, FASHION_CLASSES


def sklearn_digits(val_fraction: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """scikit-learn's bundled 1,797 8x8 digits (no download), 0..16 scaled to uint8, split systematically."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data.source 'digits' needs scikit-learn; install it with: pip install scikit-learn") from None
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (n, 1, 8, 8)
    return _split(images, digits.target.astype(np.int64), val_fraction), [str(d) for d in range(10)]


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float) -> dict[str, np.ndarray]:
    """Systematic train/val split over the stored order (every 1/val_fraction-th row held out)."""
    val = np.array([is_validation(i, val_fraction) for i in range(len(y))], dtype=bool)
    return {"train_x": x[~val], "train_y": y[~val], "val_x": x[val], "val_y": y[val]}


def class_folders(root: Path, suffixes: set[str], what: str) -> list[tuple[Path, str]]:
    """(file, class name) for every file with a matching suffix under root/<class>/, sorted."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [(f, c.name) for c in classes for f in sorted(c.rglob("*")) if f.is_file() and f.suffix.lower() in suffixes]
    if len({c for _, c in found}) < 2:
        raise DataError(f"data.source {str(root)!r}: needs one subfolder of {what} per class, at least two classes with {sorted(suffixes)} files")
    return found


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow; install it with: pip install pillow") from None
    return Image


def read_image_folder(root: Path, size: int, channels: int, *, multiple_of: int = 1) -> tuple[np.ndarray, list[str], int, int]:
    """All images as uint8 (n, channels, size, size), their class names.

    size 0 = the first image's width rounded to a multiple of `multiple_of` (the ViT patch);
    channels 0 = 1 if every image is grey, else 3.
    """
    Image = _pillow()
    files = class_folders(root, IMAGE_SUFFIXES, "images")
    if size == 0 or channels == 0:
        with Image.open(files[0][0]) as first:
            size = size or max(1, round(first.size[0] / multiple_of)) * multiple_of
        grey = all(_is_grey(Image, f) for f, _ in files)
        channels = channels or (1 if grey else 3)
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        out[i] = read_image(f, size, channels)
    return out, [c for _, c in files], size, channels


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): converted to grey (1) or RGB (3), resized bilinearly."""
    Image = _pillow()
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR))
    except OSError as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _is_grey(Image: Any, path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return img.mode in ("1", "L", "LA", "I", "I;16", "F")
    except OSError as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _build(cfg: RunConfig) -> Callable[[], Built]:
    """The preparation for cfg.data.source, as a function the cache calls on a miss."""
    source, d = cfg.data.source, cfg.data

    def build() -> Built:
        if source == "fashion-mnist":
            arrays, classes = fashion_mnist()
        elif source == "digits":
            arrays, classes = sklearn_digits(d.val_fraction)
        else:
            x, names, _, _ = read_image_folder(Path(source), cfg.model.image_size, cfg.model.in_channels, multiple_of=cfg.model.patch_size)
            y, classes = labels_to_ids(names)
            arrays = _split(x, y, d.val_fraction)
        if d.test_source:
            x, names, _, _ = read_image_folder(Path(d.test_source), arrays["train_x"].shape[-1], arrays["train_x"].shape[1])
            index = {c: i for i, c in enumerate(classes)}
            unknown = sorted(set(names) - set(index))
            if unknown:
                raise DataError(f"data.test_source {d.test_source!r}: classes {unknown} are not among the training classes {classes}")
            arrays["test_x"], arrays["test_y"] = x, np.array([index[n] for n in names], dtype=np.int64)
        keep = even_subset(len(arrays["train_y"]), d.max_rows)
        arrays["train_x"], arrays["train_y"] = arrays["train_x"][keep], arrays["train_y"][keep]
        pixels = arrays["train_x"].astype(np.float64) / 255.0
        meta = {"classes": classes, "mean": pixels.mean(axis=(0, 2, 3)).tolist(), "std": pixels.std(axis=(0, 2, 3)).clip(1e-3).tolist()}
        return Built(arrays, meta)

    return build


def _source_files(source: str) -> list[Path]:
    if source == "fashion-mnist":
        return list(_fashion_files().values())
    if source == "digits":
        return []
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"data.source {source!r}: use 'fashion-mnist', 'digits' or a folder with one subfolder of images per class")
    return [p for p in path.rglob("*") if p.is_file()]


def prepare_images(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the image arrays for cfg."""
    d = cfg.data
    test_files = _source_files(d.test_source) if d.test_source else []
    settings = {
        "kind": "images", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": files_fingerprint(_source_files(d.source) + test_files), "val_fraction": d.val_fraction,
        "max_rows": d.max_rows, "image_size": cfg.model.image_size, "in_channels": cfg.model.in_channels,
        "patch_size": cfg.model.patch_size,
    }
    if d.source in ("fashion-mnist", "digits"):  # fixed-size built-ins: the model's size is checked, not applied
        settings.update(image_size=0, in_channels=0, patch_size=0)
    return cached_arrays(d.dir, settings, _build(cfg), force=force, log=log)


def image_transform(mean: list[float], std: list[float], *, shift_px: int, hflip: bool) -> Transform:
    """uint8 rows (b, c, h, w) -> normalised float32; training rows are shifted (zero fill) and maybe mirrored."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def transform(rows: np.ndarray, rngs: list[np.random.Generator] | None) -> torch.Tensor:
        if rngs is not None and (shift_px or hflip):
            rows = augment_images(rows, rngs, shift_px=shift_px, hflip=hflip)
        return (torch.from_numpy(np.array(rows, dtype=np.float32)) - mean_t) / std_t

    return transform


def augment_images(rows: np.ndarray, rngs: list[np.random.Generator], *, shift_px: int, hflip: bool) -> np.ndarray:
    """Each row translated by its own random (dy, dx) in [-shift_px, shift_px] and mirrored with probability 1/2."""
    b, _, h, w = rows.shape
    s = shift_px
    padded = np.pad(rows, ((0, 0), (0, 0), (s, s), (s, s)))  # zeros: the background of the built-in sets
    out = np.empty_like(rows)
    for i, rng in enumerate(rngs):
        dy, dx = rng.integers(0, 2 * s + 1, size=2)
        img = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = img[..., ::-1] if hflip and rng.random() < 0.5 else img
    return out
