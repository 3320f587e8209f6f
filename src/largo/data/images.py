"""Images: Fashion-MNIST (Debian IDX files), scikit-learn's digits, folders of images; shift/flip augmentation.

Images are stored as uint8 (n, channels, size, size); the loader normalises them with the
training set's per-channel mean and std, and augments training rows only.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from largo.data.arrays import Built, Prepared, Transform, cached_arrays, even_subset, files_fingerprint, labels_to_ids
from largo.data.hf import fingerprint, hf_source, is_hf, read_hf_media
from largo.data.prepare import is_validation
from largo.data.config import ClassDataConfig, check_non_negative
from largo.data.draws import SampleDraws
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

    source: str = "fashion-mnist"  # "fashion-mnist", "digits", a folder with one subfolder per class, or "hf:NAME"
    dir: str = "data/images"
    image_column: str = "image"  # hf: sources: column holding the images (decoded by Pillow)
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


ImageRef = Path | bytes  # an image file, or an encoded image's bytes (a dataset row)


def read_image_folder(root: Path, size: int, channels: int, *, multiple_of: int = 1) -> tuple[np.ndarray, list[str], int, int]:
    """All images as uint8 (n, channels, size, size), their class names.

    size 0 = the first image's width rounded to a multiple of `multiple_of` (the ViT patch);
    channels 0 = 1 if every image is grey, else 3.
    """
    files = class_folders(root, IMAGE_SUFFIXES, "images")
    x, size, channels = read_images([f for f, _ in files], size, channels, multiple_of=multiple_of)
    return x, [c for _, c in files], size, channels


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


def _read_source(source: str, cfg: RunConfig, size: int, channels: int, *, test: bool = False) -> tuple[np.ndarray, list[str]]:
    """A folder or a dataset split: uint8 images and their class names."""
    if is_hf(source):
        d = cfg.data
        src = hf_source(d, test=test)
        refs, names = read_hf_media(src, d.image_column, "image", d.label_column, "image_column")
        x, _, _ = read_images(refs, size, channels, multiple_of=1 if test else cfg.model.patch_size,
                              names=[f"{source} row {i}" for i in range(len(refs))])
        return x, names
    x, names, _, _ = read_image_folder(Path(source), size, channels, multiple_of=1 if test else cfg.model.patch_size)
    return x, names


def _build(cfg: RunConfig) -> Callable[[], Built]:
    """The preparation for cfg.data.source, as a function the cache calls on a miss."""
    source, d = cfg.data.source, cfg.data

    def build() -> Built:
        if source == "fashion-mnist":
            arrays, classes = fashion_mnist()
        elif source == "digits":
            arrays, classes = sklearn_digits(d.val_fraction)
        else:
            x, names = _read_source(source, cfg, cfg.model.image_size, cfg.model.in_channels)
            y, classes = labels_to_ids(names)
            arrays = _split(x, y, d.val_fraction)
        if d.test_source:
            x, names = _read_source(d.test_source, cfg, arrays["train_x"].shape[-1], arrays["train_x"].shape[1], test=True)
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


def _fingerprint(source: str, cfg: RunConfig, *, test: bool = False) -> str:
    if is_hf(source):
        return fingerprint(hf_source(cfg.data, test=test))
    return files_fingerprint(_source_files(source))


def _source_files(source: str) -> list[Path]:
    if source == "fashion-mnist":
        return list(_fashion_files().values())
    if source == "digits":
        return []
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"data.source {source!r}: use 'fashion-mnist', 'digits', a folder with one subfolder of images per class, or 'hf:NAME'")
    return [p for p in path.rglob("*") if p.is_file()]


def prepare_images(cfg: RunConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Prepared:
    """Prepare (or load from the cache) the image arrays for cfg."""
    d = cfg.data
    test = _fingerprint(d.test_source, cfg, test=True) if d.test_source else ""
    settings = {
        "kind": "images", "version": _VERSION, "source": d.source, "test_source": d.test_source,
        "fingerprint": _fingerprint(d.source, cfg) + test, "val_fraction": d.val_fraction,
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
