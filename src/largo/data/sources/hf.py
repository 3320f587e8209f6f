"""data.source = "hf:NAME": rows of a Hugging Face `datasets` dataset, for every architecture's preparation.

NAME is one of
  a folder written by `save_to_disk` (a Dataset, or a DatasetDict whose data.split is read),
  a builder with local files: `hf:parquet`, `hf:json`, `hf:csv`, `hf:text`, `hf:imagefolder`, ... reading data.data_files,
  a local folder of data files (datasets picks the builder from their extensions),
  a hub name: refused in one line while Hugging Face is offline (largo's default; HF_HUB_OFFLINE=0 opts in).
data.streaming reads rows as they come (an IterableDataset) instead of building datasets' Arrow cache first.
Image and audio columns are read undecoded ({bytes, path}) and decoded by largo (Pillow; WAV, or soundfile
for FLAC/OGG/MP3), so no video/audio backend of datasets is needed. The dataset's fingerprint (datasets' own
for saved folders, the builder's config id and the files' sizes and times otherwise) goes into the prepared
manifest's settings: a changed dataset rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from largo.data.config import DataConfig
from largo.data.sources.registry import AUDIO, IMAGES, LABELLED_TEXT, TEXT, DataSource, Roles, Row, SourceStats, register_prefix
from largo.errors import DataError
from largo.optional import hub_offline, require

PREFIX = "hf:"
_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict, Dataset)


@dataclass(frozen=True)
class HFSource:
    """One split of one dataset, as the [data] section names it."""

    source: str  # "hf:NAME", for messages
    split: str
    config: str = ""
    data_files: tuple[str, ...] = ()
    streaming: bool = False

    @property
    def name(self) -> str:
        return self.source[len(PREFIX):]

    @property
    def key(self) -> str:
        """How messages name this source and its key."""
        return f"data.source {self.source!r}"


def hf_source(cfg: DataConfig, *, test: bool = False) -> HFSource:
    """The training source of a [data] section, or (test=True) its test_source with test_split and test_files."""
    if test:
        return HFSource(cfg.test_source, cfg.test_split, cfg.config, tuple(getattr(cfg, "test_files", ())), cfg.streaming)
    return HFSource(cfg.source, cfg.split, cfg.config, tuple(cfg.data_files), cfg.streaming)


def _datasets(src: HFSource) -> Any:
    datasets = require("datasets", src.key)
    datasets.disable_progress_bars()  # one bar per split and file is noise in a preparation log
    return datasets


def _saved(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS)


def _files(src: HFSource) -> dict[str, list[str]] | None:
    """data_files for datasets: local paths made absolute (the builder resolves them against its own base otherwise)."""
    if not src.data_files:
        return None
    return {src.split: [f if "://" in f else str(Path(f).expanduser().absolute()) for f in src.data_files]}


def _check_name(src: HFSource, datasets: Any) -> None:
    """Refuse, before datasets tries the network, a name that is neither local nor a builder while the hub is offline."""
    if not src.name:
        raise DataError(f"{src.key}: name a dataset after 'hf:' (a save_to_disk folder, a builder such as parquet, or a hub name)")
    builders = set(datasets.packaged_modules._PACKAGED_DATASETS_MODULES)
    if src.name in builders:
        if not src.data_files:
            raise DataError(f"{src.key}: the {src.name} builder reads local files; list them in data.data_files "
                            f"(or data.test_files for a test_source), e.g. [\"corpus/*.{src.name}\"]")
        return
    if Path(src.name).exists():
        return
    if hub_offline():
        raise DataError(f"{src.key}: {src.name!r} is not a local folder or file, and the Hugging Face Hub is offline "
                        f"(HF_HUB_OFFLINE=1, largo's default); give hf:<folder from save_to_disk>, hf:<folder of data files> "
                        f"or hf:parquet|json|csv|text with data.data_files, or set HF_HUB_OFFLINE=0 to allow the download")


def _one_line(src: HFSource, e: BaseException) -> DataError:
    reason = " ".join(str(e).split())[:300] or type(e).__name__
    return DataError(f"{src.key} (split {src.split!r}): {reason}")


def load(src: HFSource) -> Any:
    """The split as a datasets.Dataset (memory-mapped Arrow) or, with streaming, an IterableDataset."""
    datasets = _datasets(src)
    _check_name(src, datasets)
    path = Path(src.name)
    try:
        if _saved(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(f"{src.key}: no split {src.split!r}; it has {', '.join(ds)} (set data.split)")
                ds = ds[src.split]
            return ds.to_iterable_dataset() if src.streaming else ds
        return datasets.load_dataset(src.name, src.config or None, data_files=_files(src), split=src.split, streaming=src.streaming)
    except DataError:
        raise
    except (ValueError, KeyError, OSError, TypeError, datasets.exceptions.DatasetGenerationError) as e:
        # ConnectionError and FileNotFoundError are OSErrors; an unknown split or config is a ValueError
        raise _one_line(src, e) from None


def fingerprint(src: HFSource) -> str:
    """What identifies the dataset's content: datasets' own fingerprint of a saved folder, or the builder's config id
    (which hashes its data files) plus each local file's size and modification time."""
    datasets = _datasets(src)
    _check_name(src, datasets)
    path, h = Path(src.name), hashlib.sha256(f"{src.name}\0{src.config}\0{src.split}\n".encode())
    if _saved(path):
        for state in sorted(path.rglob("state.json")):
            h.update(str(json.loads(state.read_text()).get("_fingerprint")).encode())
        files = [p for p in path.rglob("*") if p.is_file()]
    else:
        try:
            builder = datasets.load_dataset_builder(src.name, src.config or None, data_files=_files(src))
        except (ValueError, KeyError, OSError, TypeError) as e:
            raise _one_line(src, e) from None
        h.update(builder.config_id.encode())
        listed = builder.config.data_files or {}
        files = [Path(f) for split in listed.values() for f in split if "://" not in str(f) and Path(f).is_file()]
    for p in sorted(files):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _check_columns(src: HFSource, ds: Any, columns: dict[str, str]) -> None:
    """Every named column present, else one line naming the key and the columns the dataset has."""
    names = list(ds.features) if getattr(ds, "features", None) is not None else None
    if names is None:
        return  # a stream without declared features: checked on the first row
    for key, column in columns.items():
        if column not in names:
            raise DataError(f"{src.key}: no column {column!r} (data.{key}); has {names}")


def rows(src: HFSource, columns: dict[str, str], *, media: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows holding only `columns` (data key -> column); `media` columns ("image" or "audio") come undecoded as {bytes, path}."""
    datasets = _datasets(src)
    ds = load(src)
    _check_columns(src, ds, columns)
    for column, kind in (media or {}).items():  # largo decodes these itself (Pillow, soundfile)
        feature = datasets.Image(decode=False) if kind == "image" else datasets.Audio(decode=False)
        if isinstance(ds.features.get(column) if ds.features else None, (datasets.Image, datasets.Audio)):
            ds = ds.cast_column(column, feature)
    wanted = list(dict.fromkeys(columns.values()))
    try:
        for i, row in enumerate(ds):
            if i == 0:
                missing = [(k, c) for k, c in columns.items() if c not in row]
                if missing:
                    raise DataError(f"{src.key}: no column {missing[0][1]!r} (data.{missing[0][0]}); has {sorted(row)}")
            yield {c: row[c] for c in wanted}
    except DataError:
        raise
    except (ValueError, KeyError, OSError, TypeError, ImportError, datasets.exceptions.DatasetGenerationError) as e:
        raise _one_line(src, e) from None


def label_names(src: HFSource, column: str) -> list[str] | None:
    """The class names of a ClassLabel column (its integer values index them), else None."""
    datasets = _datasets(src)
    features = getattr(load(src), "features", None)
    feature = features.get(column) if features else None
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def media_ref(value: Any, src: HFSource, column: str, row: int) -> bytes | Path:
    """A dataset cell of an image or audio column ({bytes, path} undecoded, or a bare path) as bytes or a file."""
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and Path(path).is_file():
        return Path(path)
    raise DataError(f"{src.key}: row {row} of column {column!r} holds no encoded file bytes or readable path")


class HFDataSource(DataSource):
    """One split of a Hugging Face dataset: data.split (data.test_split for a test_source), config, files, streaming."""

    settings_keys = ("split", "config", "data_files", "streaming")

    @property
    def dataset(self) -> HFSource:
        return hf_source(self.data, test=self.test)

    def fingerprint(self) -> str:
        return fingerprint(self.dataset)

    def expected_bytes(self) -> int | None:
        return None

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        """Rows of the asked columns; a ClassLabel's integers become its class names; unlabelled rows are left out."""
        src = self.dataset
        stats.files.append(self.value)
        media = {roles[r]: r for r in ("image", "audio") if r in roles}
        names = label_names(src, roles["label"]) if "label" in roles else None
        kept = 0
        for i, row in enumerate(rows(src, {f"{r}_column": c for r, c in roles.items()}, media=media)):
            if "label" in roles and row[roles["label"]] is None:
                continue
            out = {role: row[column] for role, column in roles.items()}
            if names is not None:
                out["label"] = names[out["label"]]
            for column, role in media.items():
                out[role] = media_ref(out[role], src, column, i)
            yield out if media else {"id": f"{src.name}#{i}", **out}
            kept += 1
        if "label" in roles and not kept:
            raise DataError(f"{src.key}: no labelled rows in split {src.split!r}")


register_prefix(PREFIX, HFDataSource, provides=[TEXT, LABELLED_TEXT, IMAGES, AUDIO], describe="'hf:NAME'")
