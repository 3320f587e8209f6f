"""Shared fixtures: a tiny prepared corpus and a tiny run config, so every test runs in seconds on CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Tests must not read or write the user's cache (measured peaks, MFU history): set before largo is imported.
os.environ["LARGO_CACHE"] = tempfile.mkdtemp(prefix="largo-test-cache-")
# Nothing may reach a model or dataset hub, and datasets' Arrow cache stays out of the user's home.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="largo-test-hf-datasets-")

import pytest
import torch

from largo.config import RunConfig, build_config
from largo.data.prepare import prepare

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; a second one mostly spins while the shared cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~250 KB of the standard library, a 512-token BPE, prepared once per test session."""
    out = tmp_path_factory.mktemp("data") / "stdlib"
    cfg = build_config({"data": {"source": "stdlib", "dir": str(out), "vocab_size": 512, "max_bytes": 300_000, "val_fraction": 0.2}})
    prepare(cfg.data, log=lambda _m: None)
    return out


def tiny_config(tmp_path: Path, data_dir: Path, **sections: dict) -> RunConfig:
    """A 2-layer, 64-wide GPT run in tmp_path; `sections` update the TOML-shaped dict."""
    raw = {
        "run": {"name": "t", "out_dir": str(tmp_path / "runs"), "seed": 7},
        "data": {"source": "stdlib", "dir": str(data_dir), "vocab_size": 512, "max_bytes": 300_000, "val_fraction": 0.2},
        "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        # fp32 named: the suite's figures are the same on every CPU (auto's choice is tested with its measurement mocked)
        "train": {"steps": 6, "global_batch": 8, "micro_batch": 4, "log_every": 1, "peak_tflops": 1.0, "precision": "fp32"},
        "eval": {"every": 0, "max_batches": 2},
        "checkpoint": {"every": 3, "keep_last": 5},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return build_config(raw)
