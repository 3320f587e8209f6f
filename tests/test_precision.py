"""train.precision = "auto": decided by measuring this machine, bounded measurements, announced waits, time budgets.

The slow-bf16 CPU class (AVX2 without AVX-512 BF16: a bf16 matmul ~100x slower than fp32) is forced by
mocking the measurement, so these tests hold on either class of CPU.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from largo import precision
from largo.observe import throughput
from largo.observe.metrics import read_metrics
from largo.observe.progress import beating_through_first, heartbeat
from largo.train import run as run_module
from largo.train.run import train
from tests.conftest import tiny_config

CPU = torch.device("cpu")
SLOW_BF16 = {"bf16": 1.0e9, "fp32": 157e9, "shape": [512, 64, 192]}  # the AVX2-only EPYC of the issue
FAST_BF16 = {"bf16": 300e9, "fp32": 150e9, "shape": [512, 64, 192]}  # AVX-512 BF16 / AMX


def _rates(monkeypatch: pytest.MonkeyPatch, rates: dict) -> list[tuple]:
    """Mock the bf16-vs-fp32 measurement; returns the shapes it was asked for."""
    asked: list[tuple] = []

    def fake(device, rows, k, n, log=print):
        asked.append((rows, k, n))
        return rates
    monkeypatch.setattr(precision, "matmul_rates", fake)
    return asked


def test_auto_takes_fp32_where_bf16_is_slow_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _rates(monkeypatch, SLOW_BF16)
    choice = precision.choose("auto", CPU, (512, 64, 192), log=None)
    assert choice.precision == "fp32" and not choice.warning
    assert choice.line == "precision: fp32 (auto: bf16 matmul 1.0 vs fp32 157.0 GFLOP/s on this CPU at 512x64x192)"
    assert asked == [(512, 64, 192)]  # the run's own matmul shape, not a square peak


def test_auto_takes_bf16_only_where_it_is_clearly_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    _rates(monkeypatch, FAST_BF16)
    assert precision.choose("auto", CPU, (512, 64, 192), log=None).precision == "bf16"
    _rates(monkeypatch, {"bf16": 1.1e9, "fp32": 1.0e9, "shape": [1, 1, 1]})  # 1.1x: casts would eat the gain
    assert precision.choose("auto", CPU, (1, 1, 1), log=None).precision == "fp32"


def test_an_explicit_bf16_trains_as_asked_but_warns_where_it_is_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    _rates(monkeypatch, SLOW_BF16)
    choice = precision.choose("bf16", CPU, (512, 64, 192), log=None)
    assert choice.precision == "bf16"
    assert choice.warning.startswith("warning: train.precision = 'bf16' runs 157x slower than fp32 here")
    assert "--train.precision auto (or fp32) trains faster" in choice.warning
    _rates(monkeypatch, FAST_BF16)
    assert precision.choose("bf16", CPU, (512, 64, 192), log=None).warning == ""


def test_an_explicit_fp32_measures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _rates(monkeypatch, SLOW_BF16)
    assert precision.choose("fp32", CPU, (512, 64, 192), log=None).line == "precision: fp32 (train.precision)"
    assert asked == []


@pytest.mark.parametrize("rates,expected", [(SLOW_BF16, "fp32"), (FAST_BF16, "bf16")])
def test_a_run_resolves_auto_says_it_and_records_what_it_ran(rates: dict, expected: str, tmp_path: Path, tiny_data: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _rates(monkeypatch, rates)
    cfg = tiny_config(tmp_path, tiny_data, train={"precision": "auto", "steps": 2})
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert any(line.startswith(f"precision: {expected} (auto: bf16 matmul") for line in lines)
    assert asked == [(4 * 32, 64, cfg.model.hidden)]  # micro-batch x positions rows through the MLP's first matmul
    saved = json.loads((cfg.run_dir / "config.json").read_text())
    assert saved["train"]["precision"] == expected  # the run folder says what ran, not "auto"


def test_an_explicit_slow_bf16_run_prints_the_warning(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _rates(monkeypatch, SLOW_BF16)
    cfg = tiny_config(tmp_path, tiny_data, train={"precision": "bf16", "steps": 1})
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert any(line.startswith("warning: train.precision = 'bf16' runs 157x slower") for line in lines)


def test_the_measurement_is_cached_per_cpu_and_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throughput, "_CACHE", tmp_path / "peak_flops.json")
    monkeypatch.setattr(throughput, "_load", lambda: None)  # a quiet machine
    calls: list[tuple] = []

    def fake(device, rows, k, n, clock=None):
        calls.append((rows, k, n))
        return dict(SLOW_BF16)
    monkeypatch.setattr(throughput, "measure_matmul_rates", fake)
    said: list[str] = []
    assert throughput.matmul_rates(CPU, 64, 32, 96, log=said.append)["fp32"] == 157e9
    assert throughput.matmul_rates(CPU, 64, 32, 96, log=said.append)["bf16"] == 1e9
    assert calls == [(64, 32, 96)] and len(said) == 1 and said[0].startswith("measuring this machine once")
    key = next(iter(json.loads((tmp_path / "peak_flops.json").read_text())))
    assert throughput.cpu_identity() in key  # CPU model, flags, ISA limits and torch version decide it
    (tmp_path / "peak_flops.json").write_text(json.dumps({key: {"bf16": "x"}}))  # a damaged entry is measured again
    throughput.matmul_rates(CPU, 64, 32, 96, log=said.append)
    assert len(calls) == 2


def test_a_measurement_taken_on_a_busy_machine_is_used_but_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throughput, "_CACHE", tmp_path / "peak_flops.json")
    monkeypatch.setattr(throughput, "_load", lambda: 6.5)  # others' threads on a 2-core machine skew small timings 10-100x
    calls: list[int] = []
    monkeypatch.setattr(throughput, "measure_matmul_rates", lambda *a, **k: calls.append(1) or dict(SLOW_BF16))
    said: list[str] = []
    for _ in range(2):
        assert throughput.matmul_rates(CPU, 64, 32, 96, log=said.append)["bf16"] == 1e9
    assert len(calls) == 2 and not (tmp_path / "peak_flops.json").exists()
    assert said[1] == "this machine is busy (load 6.5 on %d cores): the measurement is used but not cached" % os.cpu_count()


class _FakeClock:
    """Seconds advanced by the fake work, not by the machine: the sizing logic, checked on any CPU."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("gflops", [1.0, 1000.0])  # a slow-bf16 CPU and a fast one
def test_a_matmul_measurement_sizes_itself_and_stays_bounded(gflops: float) -> None:
    clock, longest = _FakeClock(), []

    def make(n: int):
        def call() -> None:
            took = 2 * n**3 / (gflops * 1e9)
            longest.append(took)
            clock.now += took
        return call

    start = clock()
    size, fn, _ = throughput._sized(make, [256, 512, 1024, 2048], CPU, clock, growth=8.0)
    best = throughput._best_time(fn, CPU, 5, clock, throughput.BUDGET_S)
    assert clock() - start <= 2.0  # the bound for any CPU
    assert max(longest) <= 2 * throughput.CALL_S
    assert best == pytest.approx(2 * size**3 / (gflops * 1e9))
    assert size == (256 if gflops == 1.0 else 2048)


def test_heartbeat_says_a_long_phase_still_runs() -> None:
    said: list[str] = []
    twice = threading.Event()

    def log(line: str) -> None:
        said.append(line)
        if len(said) >= 2:
            twice.set()

    with heartbeat("compiling", log, every_s=0.01):
        assert twice.wait(timeout=60)  # the block waits on the beats themselves, not on a sleep
    count = len(said)
    assert all(line.startswith("compiling: still running (") for line in said)
    with heartbeat("quick", log, every_s=60):
        pass
    assert len(said) == count  # a block shorter than the interval says nothing


def test_beating_through_first_stops_after_the_first_item() -> None:
    said: list[str] = []
    items = list(beating_through_first(range(3), "step 1", said.append))
    assert items == [0, 1, 2]
    assert not any(t.name == "largo-heartbeat" for t in threading.enumerate())


def test_a_time_budget_lowers_the_steps_and_a_resume_keeps_them(tmp_path: Path, tiny_data: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "planned_step", lambda cfg, **kw: (0.5, 0.3, "mocked: 0.5 s"))
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 6, "time_budget_s": 2.0}, checkpoint={"every": 1})
    lines: list[str] = []
    summary = train(cfg, log=lines.append, stop_at=2)
    assert "time budget: 4 of 6 steps fit train.time_budget_s = 2 at 0.5 s per step (mocked: 0.5 s)" in lines
    assert summary["stopped"] and summary["step"] == 2
    monkeypatch.setattr(run_module, "planned_step", lambda cfg, **kw: (0.1, 0.3, "a faster guess"))
    lines.clear()
    summary = train(cfg, resume="auto", log=lines.append)
    assert "time budget: 4 steps, as the run started with" in lines and summary["step"] == 4


@pytest.mark.parametrize("budget,steps", [(1e-6, 1), (1e6, 6)])
def test_largo_plan_shows_the_steps_a_time_budget_leaves(budget: float, steps: int, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from largo.cli import main

    cfg = tiny_config(tmp_path, tmp_path / "not_prepared", train={"steps": 6, "time_budget_s": budget})  # vocabulary from the config
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["plan", str(tmp_path / "cfg.json"), "--no-measure", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["batch"]["steps"] == steps  # stdout holds only the JSON; what was measured went to stderr
    assert f"time budget: {steps} of 6 steps fit train.time_budget_s" in out.err


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(tmp_path: Path, tiny_data: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy machine can measure bf16 differently on resume; the resume must still compute like the run it continues."""
    def run(name: str, **kw) -> tuple[dict, list[str]]:
        cfg = tiny_config(tmp_path, tiny_data, run={"name": name}, train={"steps": 4, "precision": "auto"},
                          checkpoint={"every": 2})
        lines: list[str] = []
        return train(cfg, log=lines.append, **kw), lines

    _rates(monkeypatch, FAST_BF16)
    whole, _ = run("whole")
    run("part", stop_at=2)
    _rates(monkeypatch, SLOW_BF16)  # measured again now, auto would take fp32
    part, lines = run("part", resume="auto")
    assert "precision: bf16 chosen when the run started (train.precision = auto)" in lines
    assert "precision: bf16 (train.precision; bf16 matmul 1.0 vs fp32 157.0 GFLOP/s on this CPU at 512x64x192)" in lines
    losses = lambda d: [r["loss"] for r in read_metrics(Path(d) / "metrics.jsonl", "train")]  # noqa: E731
    assert losses(part["run_dir"]) == losses(whole["run_dir"])  # bitwise: both computed every step in bf16
