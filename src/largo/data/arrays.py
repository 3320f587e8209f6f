"""Classification data: prepared arrays cached as .npy beside a manifest, and the Dataset that serves them.

Output folder (data.dir):
  train_x.npy train_y.npy val_x.npy val_y.npy [test_x.npy test_y.npy]   one array per file
  manifest.json   settings (incl. a fingerprint of the source), shapes, dtypes, classes, metadata
The manifest is written last; it is rebuilt whenever the settings differ, so changing the source
or a preparation setting re-prepares and anything else is a cache hit (a memmap open).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from largo.data import Batch
from largo.data.draws import SampleDraws
from largo.data.sources import DataSource, Roles, Row, SourceStats
from largo.data.split import even_subset, is_validation  # noqa: F401  (the classifiers' preparers take even_subset from here)
from largo.data.staging import staged_dir
from largo.errors import DataError
from largo.fileio import write_json_atomic

FORMAT = "largo-arrays-v1"
MANIFEST = "manifest.json"
# transform(rows, draws): a batch of stored rows -> model input; draws (per-row random numbers) only when training
Transform = Callable[[np.ndarray, SampleDraws | None], torch.Tensor]


@dataclass
class Built:
    """What a preparation makes, all in memory until it is complete: arrays, manifest metadata, extra files."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # e.g. tokenizer.json, written beside the arrays


@dataclass
class Prepared:
    """A prepared folder: arrays by name (memmapped) and the manifest's metadata (classes, statistics)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The folder's manifest if it is a readable arrays manifest, else None (rebuilt, never trusted)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _load(out: Path, manifest: dict[str, Any]) -> Prepared:
    """Memmap every array listed in the manifest, checking shape and dtype."""
    arrays = {}
    for name, info in manifest["arrays"].items():
        path = out / info["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable ({e}); run `largo prepare --force`") from None
        if list(arr.shape) != info["shape"] or arr.dtype.name != info["dtype"]:
            raise DataError(f"{path}: shape {arr.shape} {arr.dtype} differs from manifest.json; run `largo prepare --force`")
        arrays[name] = arr
    return Prepared(arrays, manifest["meta"])


def cached_arrays(
    out_dir: str | Path,
    settings: dict[str, Any],
    build: Callable[[], Built],
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Prepared:
    """Load out_dir if its manifest holds exactly `settings`; else run build() and store what it made.

    build() runs before anything in out_dir is touched, and the result is written beside it and swapped in whole:
    a source that fails to read (a corrupt image, a missing package) leaves the previous cache, or no folder at all.
    """
    out = Path(out_dir)
    manifest = None if force else _read_manifest(out)
    if manifest is not None and manifest["settings"] == json.loads(json.dumps(settings)):
        return _load(out, manifest)
    built = build()
    listed = {name: {"file": f"{name}.npy", "shape": list(arr.shape), "dtype": arr.dtype.name} for name, arr in built.arrays.items()}
    manifest = {"format": FORMAT, "settings": settings, "arrays": listed, "meta": built.meta}
    with staged_dir(out, owns=(MANIFEST, "*.npy", *built.files)) as tmp:  # the old cache stays whole until this one is
        for name, arr in built.arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        for name, data in built.files.items():
            (tmp / name).write_bytes(data)
        write_json_atomic(tmp / MANIFEST, manifest)
    sizes = ", ".join(f"{n} {len(a):,}" for n, a in built.arrays.items() if n.endswith("_y"))
    log(f"prepare: {sizes} examples, {len(built.meta['classes'])} classes -> {out}")
    return _load(out, json.loads(json.dumps(manifest)))


def labelled_rows(source: DataSource, roles: Roles) -> list[Row]:
    """A source's rows that hold every asked role (a row with a missing cell is left out)."""
    return [r for r in source.rows(roles, SourceStats()) if all(r[role] is not None for role in roles)]


def split_arrays(x: np.ndarray, y: np.ndarray, splits: list[str | None], val_fraction: float) -> dict[str, np.ndarray]:
    """train_x/y and val_x/y: the source's own split where every row names one, else every 1/val_fraction-th row held out."""
    if splits and all(s is not None for s in splits):
        val = np.array([s == "val" for s in splits], dtype=bool)
    else:
        val = np.array([is_validation(i, val_fraction) for i in range(len(y))], dtype=bool)
    return {"train_x": x[~val], "train_y": y[~val], "val_x": x[val], "val_y": y[val]}


def test_ids(names: list[str], classes: list[str], test_source: str, what: str = "classes") -> np.ndarray:
    """A test set's labels as the training classes' ids, or one line naming the labels the training set lacks."""
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"data.test_source {test_source!r}: {what} {unknown} are not among the training {what} {classes}")
    return np.array([classes.index(n) for n in names], dtype=np.int64)


def labels_to_ids(labels: list[str], order: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """String labels -> int64 ids in `order` (a source's own class order) or sorted label order, and the class names."""
    classes = list(order) if order is not None else sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[label] for label in labels], dtype=np.int64), classes


def fixed_batches(x: np.ndarray, y: np.ndarray, transform: Transform, micro_batch: int, max_batches: int = 0) -> Iterator[Batch]:
    """Rows in stored order, micro_batch at a time, without augmentation; max_batches = 0 means all."""
    total = len(y) if not max_batches else min(len(y), max_batches * micro_batch)
    for start in range(0, total, micro_batch):
        stop = min(start + micro_batch, total)
        yield transform(np.array(x[start:stop]), None), torch.from_numpy(np.array(y[start:stop], dtype=np.int64))


class ClassifyData:
    """Training and held-out arrays as a `Dataset`.

    Sample s of training is row perm_e[s mod n] with perm_e a permutation seeded by (seed, epoch),
    and its augmentation draws are a pure function of (seed, s) (data/draws.py): a resumed or
    multi-rank run sees exactly the rows and augmentations an uninterrupted one sees.
    """

    def __init__(self, train: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray], *, seed: int, transform: Transform):
        (self.train_x, self.train_y), (self.val_x, self.val_y) = train, held_out
        if len(self.train_y) == 0 or len(self.val_y) == 0:
            raise DataError(f"{len(self.train_y)} training and {len(self.val_y)} held-out examples; both splits need at least one")
        self.seed, self.transform = seed, transform
        self._perms: dict[int, np.ndarray] = {}  # epoch -> permutation (the two most recent)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_y))
        return self._perms[epoch]

    def train_rows(self, samples: range) -> Batch:
        index = np.arange(samples.start, samples.stop)
        epochs, offsets = np.divmod(index, len(self.train_y))
        rows = np.concatenate([self._perm(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])
        order = np.argsort(rows, kind="stable")  # memmaps read fastest in file order; put the batch back afterwards
        x = np.empty((len(rows), *self.train_x.shape[1:]), dtype=self.train_x.dtype)
        x[order] = self.train_x[rows[order]]
        x = self.transform(x, SampleDraws(self.seed, index))
        return x, torch.from_numpy(np.asarray(self.train_y[rows], dtype=np.int64))

    def eval_batches(self, micro_batch: int, max_batches: int) -> Iterator[Batch]:
        return fixed_batches(self.val_x, self.val_y, self.transform, micro_batch, max_batches)
