"""DCP's checkpoint index as JSON: largo writes and reads it itself, so opening a sharded checkpoint never unpickles.

torch.distributed.checkpoint describes where every chunk of every tensor lives in a `Metadata`
object, which its file system writer pickles to `.metadata`. Unpickling runs whatever the file
says, and no allowlist of modules is tight enough (any name reachable from an allowed module is
callable). So largo's writer stores the same facts as plain JSON (`index.json`: dtypes, shapes,
chunks, file/offset/length of each chunk) and its reader rebuilds DCP's dataclasses from that
JSON after checking every field's type and range. No `.metadata` is written or read.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta, TensorProperties, TensorStorageMetadata,
)

from largo.errors import CheckpointError
from largo.fileio import write_json_atomic

INDEX = "index.json"
INDEX_FORMAT = "largo-dcp-index-v1"
MAX_INDEX_BYTES = 64 << 20  # a 70B model's index is a few MB; a larger file is not ours
_MAX_DIMS = 8
_DATA_FILE = re.compile(r"__\d{1,6}_\d{1,6}\.distcp")  # what FileSystemWriter names its per-rank files
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def index_to_json(metadata: Metadata) -> dict[str, Any]:
    """The facts of a DCP Metadata (tensors only) as a JSON-able dict."""
    tensors = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata):
            raise CheckpointError(f"sharded checkpoint entry {fqn!r} is not a tensor; largo's DCP files hold tensors only")
        tensors[fqn] = {"dtype": _DTYPE_NAMES[meta.properties.dtype], "size": list(meta.size),
                        "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in meta.chunks]}
    storage = []
    for index, info in metadata.storage_data.items():
        if info.transform_descriptors:
            raise CheckpointError(f"sharded checkpoint entry {index.fqn!r} uses stream transforms, which largo does not write")
        storage.append({"fqn": index.fqn, "offset": list(index.offset), "index": index.index,
                        "file": info.relative_path, "start": info.offset, "length": info.length})
    planner = {fqn: list(path) for fqn, path in (metadata.planner_data or {}).items()}
    return {"format": INDEX_FORMAT, "version": metadata.version, "tensors": tensors, "storage": storage, "planner_data": planner}


# ---------------------------------------------------------------- reading, with every field checked


def _fail(where: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; the sharded checkpoint index is damaged or was not written by largo")


def _ints(value: Any, where: Path, what: str, *, length: int | None = None) -> list[int]:
    """A list of non-negative ints (not bools), of `length` if given."""
    ok = isinstance(value, list) and len(value) <= _MAX_DIMS and all(type(v) is int and v >= 0 for v in value)
    if not ok or (length is not None and len(value) != length):
        raise _fail(where, f"{what} must be a list of {length if length is not None else 'up to 8'} non-negative integers")
    return value


def _tensor(fqn: str, entry: Any, where: Path) -> TensorStorageMetadata:
    """One tensor's dtype, shape and chunks; every chunk inside the shape."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "size", "chunks"} or entry["dtype"] not in DTYPES:
        raise _fail(where, f"tensor {fqn!r} must hold exactly dtype (one of {', '.join(DTYPES)}), size and chunks")
    size = _ints(entry["size"], where, f"tensor {fqn!r} size")
    if not isinstance(entry["chunks"], list) or not entry["chunks"]:
        raise _fail(where, f"tensor {fqn!r} has no chunks")
    chunks = []
    for chunk in entry["chunks"]:
        if not isinstance(chunk, dict) or set(chunk) != {"offsets", "sizes"}:
            raise _fail(where, f"tensor {fqn!r}: a chunk must hold exactly offsets and sizes")
        offsets = _ints(chunk["offsets"], where, f"tensor {fqn!r} chunk offsets", length=len(size))
        sizes = _ints(chunk["sizes"], where, f"tensor {fqn!r} chunk sizes", length=len(size))
        if any(o + s > n for o, s, n in zip(offsets, sizes, size)):
            raise _fail(where, f"tensor {fqn!r}: a chunk reaches past the tensor's size {size}")
        chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
    return TensorStorageMetadata(properties=TensorProperties(dtype=DTYPES[entry["dtype"]]), size=torch.Size(size), chunks=chunks)


def _storage(entry: Any, tensors: dict[str, TensorStorageMetadata], folder: Path, where: Path) -> tuple[MetadataIndex, _StorageInfo]:
    """Where one chunk's bytes are: a data file of this folder, an offset and a length inside it."""
    if not isinstance(entry, dict) or set(entry) != {"fqn", "offset", "index", "file", "start", "length"}:
        raise _fail(where, "a storage entry must hold exactly fqn, offset, index, file, start and length")
    fqn, name = entry["fqn"], entry["file"]
    if fqn not in tensors:
        raise _fail(where, f"storage entry for unknown tensor {fqn!r}")
    offset = _ints(entry["offset"], where, f"storage offset of {fqn!r}", length=len(tensors[fqn].size))
    if not (entry["index"] is None or type(entry["index"]) is int and entry["index"] >= 0):
        raise _fail(where, f"storage index of {fqn!r} must be null or a non-negative integer")
    if not isinstance(name, str) or not _DATA_FILE.fullmatch(name) or not (folder / name).is_file() or (folder / name).is_symlink():
        raise _fail(where, f"storage file {name!r} of {fqn!r} is not a data file of this folder")
    start, length = _ints([entry["start"], entry["length"]], where, f"storage start/length of {fqn!r}", length=2)
    if start + length > (folder / name).stat().st_size:
        raise _fail(where, f"storage of {fqn!r} reaches past the end of {name}")
    return MetadataIndex(fqn, offset, entry["index"]), _StorageInfo(relative_path=name, offset=start, length=length)


def _planner_data(value: Any, where: Path) -> dict[str, tuple[str | int, ...]]:
    ok = isinstance(value, dict) and all(
        isinstance(path, list) and 0 < len(path) <= 16 and all(isinstance(p, str) or type(p) is int for p in path)
        for path in value.values())
    if not ok:
        raise _fail(where, "planner_data must map names to short lists of keys")
    return {fqn: tuple(path) for fqn, path in value.items()}


def _check_sizes(tensors: dict[str, TensorStorageMetadata], storage: dict[MetadataIndex, _StorageInfo], where: Path) -> None:
    """Every tensor fits in the bytes its chunks occupy in the data files: a reader allocates what the index claims."""
    stored: dict[str, int] = {}
    for index, info in storage.items():
        stored[index.fqn] = stored.get(index.fqn, 0) + info.length
    for fqn, meta in tensors.items():
        claimed = math.prod(meta.size) * meta.properties.dtype.itemsize
        if claimed > stored[fqn]:
            raise _fail(where, f"tensor {fqn!r} of size {list(meta.size)} claims {claimed:,} bytes, "
                               f"more than its chunks hold in the data files")


def read_index(folder: Path) -> Metadata:
    """DCP's Metadata rebuilt from folder/index.json, every field checked; nothing is unpickled."""
    where = folder / INDEX
    try:
        if where.is_symlink() or where.stat().st_size > MAX_INDEX_BYTES:
            raise _fail(where, f"a link, or larger than {MAX_INDEX_BYTES >> 20} MiB")
        raw = json.loads(where.read_bytes())
    except OSError as e:
        raise CheckpointError(f"{where}: cannot read ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise _fail(where, "not valid JSON") from None
    keys = {"format", "version", "tensors", "storage", "planner_data"}
    if not isinstance(raw, dict) or set(raw) != keys or raw["format"] != INDEX_FORMAT or not isinstance(raw["version"], str):
        raise _fail(where, f"expected exactly the keys {sorted(keys)} with format {INDEX_FORMAT!r}")
    if not isinstance(raw["tensors"], dict) or not isinstance(raw["storage"], list):
        raise _fail(where, "tensors must be an object and storage a list")
    tensors = {fqn: _tensor(fqn, entry, where) for fqn, entry in raw["tensors"].items()}
    storage = dict(_storage(entry, tensors, folder, where) for entry in raw["storage"])
    stored = {index.fqn for index in storage}
    if stored != set(tensors):
        raise _fail(where, f"tensors without stored chunks: {sorted(set(tensors) - stored)[:3]}")
    _check_sizes(tensors, storage, where)
    return Metadata(state_dict_metadata=dict(tensors), planner_data=_planner_data(raw["planner_data"], where),
                    storage_data=storage, storage_meta=StorageMeta(), version=raw["version"])


class IndexWriter(FileSystemWriter):
    """DCP's file system writer, with the index written as largo's JSON instead of a pickle."""

    def finish(self, metadata: Metadata, results: list[list[Any]]) -> None:
        from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION

        metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = {r.index: r.storage_data for rank_results in results for r in rank_results}
        write_json_atomic(Path(self.path) / INDEX, index_to_json(metadata))


class IndexReader(FileSystemReader):
    """DCP's file system reader, with the index read from largo's checked JSON."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_index(Path(os.fspath(self.path)))
        metadata.storage_meta.load_id = self.load_id
        return metadata
