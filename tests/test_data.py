"""Preparation: the tokenizer and shards give back the exact text; sources and the split are deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from largo.config import build_config
from largo.data import rank_samples
from largo.data.prepare import checked_tokenizer_file, prepare, read_manifest
from largo.data.tokens import LMBatches, TokenShards
from largo.errors import DataError


def load_tokenizer(data_dir: Path, manifest: dict) -> Tokenizer:
    """The prepared tokenizer, checked against the manifest's hash."""
    return Tokenizer.from_file(str(checked_tokenizer_file(data_dir, manifest)))

def _prep(tmp_path: Path, source: str, **data) -> Path:
    out = tmp_path / "prepared"
    cfg = build_config({"data": {"source": source, "dir": str(out), "vocab_size": 300, "val_fraction": 0.3, **data}})
    prepare(cfg.data, log=lambda _m: None)
    return out


def _docs_from_shards(out: Path) -> set[str]:
    manifest = read_manifest(out)
    tok = load_tokenizer(out, manifest)
    eot = manifest["tokenizer"]["eot_id"]
    docs: set[str] = set()
    for split in ("train", "val"):
        ids = TokenShards(out, split, manifest).read(0, manifest["splits"][split]["tokens"])
        cuts = np.flatnonzero(ids == eot)
        starts = np.concatenate([[0], cuts[:-1] + 1])
        docs |= {tok.decode(ids[s:e].tolist()) for s, e in zip(starts, cuts)}
    return docs


def test_text_folder_round_trips_exactly(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    src.mkdir()
    texts = {f"f{i}.txt": f"Doc {i}: naïve café — ünïcode ✓ and spaces  \n\tline two {i * 7}\n" for i in range(20)}
    for name, text in texts.items():
        (src / name).write_text(text)
    out = _prep(tmp_path, str(src))
    assert _docs_from_shards(out) == set(texts.values())
    manifest = read_manifest(out)
    assert manifest["splits"]["val"]["tokens"] > 0 and manifest["dtype"] == "uint16"


def test_jsonl_csv_and_parquet_columns(tmp_path: Path) -> None:
    rows = [{"body": f"row {i} says hello {'x' * i}"} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert _docs_from_shards(_prep(tmp_path, str(tmp_path / "d.jsonl"), text_column="body")) == {r["body"] for r in rows}
    pd = pytest.importorskip("pandas")
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    assert _docs_from_shards(_prep(tmp_path, str(tmp_path / "d.csv"), text_column="body")) == {r["body"] for r in rows}
    pytest.importorskip("pyarrow")
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    assert _docs_from_shards(_prep(tmp_path, str(tmp_path / "d.parquet"), text_column="body")) == {r["body"] for r in rows}


def test_missing_column_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match="no column 'body'"):
        _prep(tmp_path, str(tmp_path / "d.jsonl"), text_column="body")


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "c"
    src.mkdir()
    for i in range(10):
        (src / f"{i}.txt").write_bytes(b"caf\xe9 latin-1 bytes " + str(i).encode() * 40)
    manifest = read_manifest(_prep(tmp_path, str(src)))
    assert manifest["source"]["replaced_invalid_utf8"] == 10


def test_prepare_is_cached_and_deterministic(tiny_data: Path) -> None:
    before = (tiny_data / "train_000.bin").stat().st_mtime_ns
    cfg = build_config({"data": {"source": "stdlib", "dir": str(tiny_data), "vocab_size": 512, "max_bytes": 300_000, "val_fraction": 0.2}})
    prepare(cfg.data, log=lambda _m: None)
    assert (tiny_data / "train_000.bin").stat().st_mtime_ns == before


def test_shards_roll_over_and_read_across_boundaries(tmp_path: Path) -> None:
    src = tmp_path / "c"
    src.mkdir()
    for i in range(12):
        (src / f"{i}.txt").write_text(f"document number {i} " * 50)
    out = _prep(tmp_path, str(src), shard_tokens=100)
    manifest = read_manifest(out)
    assert len(manifest["splits"]["train"]["shards"]) > 2
    shards = TokenShards(out, "train", manifest)
    whole = np.concatenate([np.fromfile(out / s["file"], dtype=np.uint16) for s in manifest["splits"]["train"]["shards"]])
    assert np.array_equal(shards.read(95, 120), whole[95:215])


def test_global_batch_is_the_same_for_any_world_size(tiny_data: Path) -> None:
    batches = LMBatches(TokenShards(tiny_data, "train"), seq_len=16, seed=1)
    one = [i for r in rank_samples(3, global_batch=8, micro_batch=4, rank=0, world=1) for i in r]
    two = [i for rank in range(2) for r in rank_samples(3, global_batch=8, micro_batch=2, rank=rank, world=2) for i in r]
    assert one == two == list(range(24, 32))
    x, y = batches.rows(range(24, 32))
    assert x.shape == (8, 16) and torch_equal_shift(x, y)


def torch_equal_shift(x, y) -> bool:
    return bool((x[:, 1:] == y[:, :-1]).all())


def test_prepare_reports_progress_as_plain_lines_in_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from largo.observe import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line after every encoded batch
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02d}.txt").write_text(f"document {i} " * 4000)  # ~50 KB each: several encoding batches
    lines: list[str] = []
    cfg = build_config({"data": {"source": str(src), "dir": str(tmp_path / "out"), "vocab_size": 300, "val_fraction": 0.1}})
    prepare(cfg.data, log=lines.append)
    progress_lines = [ln for ln in lines if ln.startswith("prepare: encoding: ")]
    total_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
    assert progress_lines and f"% of {total_mb:,.1f} MB, ETA " in progress_lines[0]
    assert "100% of" in progress_lines[-1] and "40 documents" in progress_lines[-1]
