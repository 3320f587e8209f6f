"""A data source is one room: a source defined in one test-local module (tests/_toy_source.py), registered from outside
src/, feeds a language model that trains, resumes bitwise, evaluates and exports, and a text classifier that prepares.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from largo.checkpoint.restore import restore
from largo.cli import main
from largo.config import build_config
from largo.data.prepare import read_manifest
from largo.data.sources import source_names
from largo.errors import DataError
from largo.models import get_spec
from largo.observe.metrics import read_metrics
from largo.train.run import train
from tests import _toy_source

quiet = dict(log=lambda _m: None)


def toy_config(tmp_path: Path, **data: object) -> object:
    return build_config({
        "run": {"name": "toy", "out_dir": str(tmp_path / "runs"), "seed": 5},
        "data": {"source": "toy-counting", "dir": str(tmp_path / "data"), "vocab_size": 300, "val_fraction": 0.1, **data},
        "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 12, "global_batch": 8, "micro_batch": 4, "log_every": 1, "threads": 1, "peak_tflops": 1.0},
        "eval": {"every": 0, "max_batches": 2}, "checkpoint": {"every": 6, "keep_last": 3},
    })


def test_the_source_is_registered_from_outside_src() -> None:
    assert "toy-counting" in source_names()
    assert not _toy_source.__file__.startswith(str(Path(__file__).parents[1] / "src"))


def test_a_language_model_on_it_trains_resumes_evaluates_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    whole = toy_config(tmp_path / "whole")
    summary = train(whole, **quiet)
    torch.set_num_threads(2)
    manifest = read_manifest(whole.data.dir)
    assert manifest["source"]["documents"] == _toy_source.DOCUMENTS and manifest["settings"]["fingerprint"] == "counting-v1-400"

    split = toy_config(tmp_path / "split")
    train(split, stop_at=6, **quiet)
    train(split, resume="auto", **quiet)
    torch.set_num_threads(2)
    a, b = restore(whole.run_dir)[0].state_dict(), restore(split.run_dir)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(c.run_dir / "metrics.jsonl", "train")] for c in (whole, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 12

    capsys.readouterr()
    assert main(["eval", str(whole.run_dir), "--max-batches", "2"]) == 0  # the run's own final evaluation: 2 batches
    assert f"loss {summary['val_loss']:.4f}" in capsys.readouterr().out
    assert main(["export", str(whole.run_dir), str(tmp_path / "st"), "--format", "safetensors"]) == 0
    assert (tmp_path / "st" / "model.safetensors").is_file() and (tmp_path / "st" / "tokenizer.json").is_file()


def test_a_text_classifier_prepares_from_it_and_a_wrong_role_is_refused(tmp_path: Path) -> None:
    cfg = build_config({"data": {"source": "toy-counting", "dir": str(tmp_path / "tc"), "vocab_size": 300},
                        "model": {"arch": "text_classifier", "dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}})
    prepared = get_spec("text_classifier").prepare(cfg.data, cfg.model, **quiet)
    assert prepared.classes == ["even", "odd"] and len(prepared.arrays["train_y"]) + len(prepared.arrays["val_y"]) == 400
    images = build_config({"data": {"source": "toy-counting", "dir": str(tmp_path / "im")}, "model": {"arch": "vit"}})
    with pytest.raises(DataError, match=r"^data.source 'toy-counting': use 'fashion-mnist', 'digits', a folder"):
        get_spec("vit").prepare(images.data, images.model, **quiet)
