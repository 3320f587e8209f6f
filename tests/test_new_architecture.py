"""A modality is one room: an architecture defined in one test-local module (tests/_series_arch.py), registered from
outside src/, trains, resumes bitwise, plans (its memory within the classifiers' tolerance), evaluates and exports to ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from largo.checkpoint.restore import restore
from largo.cli import main
from largo.config import build_config
from largo.models import build_model, count_params, get_spec, trainable
from largo.observe.metrics import read_metrics
from largo.plan import estimate as est
from largo.plan.devices import get_device
from largo.plan.planner import build_plan, workload_from_config
from largo.train.run import train
from tests import _series_arch
from tests.test_plan import _profiled_steps

quiet = dict(log=lambda _m: None)


def series_config(tmp_path: Path, **train: object) -> object:
    return build_config({
        "run": {"name": "series", "out_dir": str(tmp_path / "runs"), "seed": 3},
        "data": {"dir": str(tmp_path / "data")},
        "model": {"arch": "series", "dim": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 5, "weight_decay": 0.0},
        "train": {"steps": 100, "global_batch": 32, "micro_batch": 16, "log_every": 5, "threads": 1, **train},
        "eval": {"every": 0, "max_batches": 0}, "checkpoint": {"every": 50, "keep_last": 3},
    })


def test_the_spec_is_registered_from_outside_src() -> None:
    assert get_spec("series") is _series_arch.SPEC and not _series_arch.__file__.startswith(str(Path(__file__).parents[1] / "src"))
    cfg = series_config(Path("/tmp"))
    assert type(cfg.model).__name__ == "SeriesConfig" and cfg.data.length == 24  # its own [model] and [data] keys


def test_trains_resumes_evaluates_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    whole = series_config(tmp_path / "whole")
    summary = train(whole, **quiet)
    torch.set_num_threads(2)
    assert summary["val_accuracy"] > 0.9  # three frequencies; chance is 1/3

    split = series_config(tmp_path / "split")
    train(split, stop_at=50, **quiet)
    train(split, resume="auto", **quiet)
    torch.set_num_threads(2)
    a, b = restore(whole.run_dir)[0].state_dict(), restore(split.run_dir)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(c.run_dir / "metrics.jsonl", "train")] for c in (whole, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 20

    capsys.readouterr()
    assert main(["eval", str(whole.run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Test Loss: {summary['val_loss']:.3f} | Acc: {100 * summary['val_accuracy']:.3f}% " \
                                                      f"({summary['val_accuracy']:.3f})"
    assert main(["export", str(whole.run_dir), str(tmp_path / "onnx"), "--format", "onnx"]) == 0  # raises if onnxruntime differs
    assert "parity vs onnxruntime" in capsys.readouterr().out
    assert main(["export", str(whole.run_dir), str(tmp_path / "hf"), "--format", "hf"]) == 2  # a classifier has no Llama form
    rows = {r["quantity"]: r for r in json.loads((whole.run_dir / "plan_vs_measured.json").read_text())["rows"]}
    assert rows["params"]["estimate"] == rows["params"]["measured"] == trainable(restore(whole.run_dir)[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_plan_counts_it_and_its_memory_matches_the_allocator(precision: str, tmp_path: Path) -> None:
    cfg = series_config(tmp_path, precision=precision)
    spec = get_spec("series")
    spec.prepare(cfg.data, cfg.model, **quiet)
    workload = workload_from_config(cfg, devices=1, device=get_device("h100"), mfu=0.4)
    assert workload.seq_len == 24 and workload.model.n_features == 2 and workload.model.num_classes == 3
    plan = build_plan(workload)
    model = workload.model
    assert plan["params"]["total"] == count_params(model).total == trainable(build_model(model))
    assert plan["flops"]["per_token"] == 6 * (2 * model.block_params() + 2 * 32 + 32 * 3 // 24) + 12 * 2 * 32 * 24

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 24, 2, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    measured = _profiled_steps(model, precision, lambda: batches)
    m = est.memory(model, seq_len=24, micro_batch=16, accum_steps=2, layout=est.layout_for(precision))
    assert m.peak - est.RUNTIME_WORKSPACE_BYTES == pytest.approx(measured, rel=0.05)  # the classifiers' tolerance
