"""A time-budgeted run re-fits its steps to the step time it measures (train/budget.py), without changing a rate it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from largo.config import OptimConfig
from largo.observe.metrics import read_metrics
from largo.train import run as run_module
from largo.train.budget import StepBudget
from largo.train.optim import Schedule, lr_multiplier
from largo.train.run import train
from tests.conftest import tiny_config

WSD = OptimConfig(name="adamw", lr=1e-2, warmup_steps=3, schedule="wsd", decay_fraction=0.3, min_lr_ratio=0.0)


def _schedule(cfg: OptimConfig, total: int) -> Schedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    return Schedule([opt], cfg, total, torch.device("cpu"))


def test_a_host_that_slows_down_gets_fewer_steps_and_every_rate_used_is_the_final_layouts() -> None:
    """A 30 s budget planned at 0.1 s/step (300 steps); the first step compiles (3 s), the host then runs at 0.1 s for 50
    steps and 0.2 s after: the total falls to what the remaining seconds allow, the decay starts where it then should,
    and the rates the run used are exactly those of a schedule laid out for the final total from the start."""
    schedule, total, done, used, seconds = _schedule(WSD, 300), 300, 0, [], 0.0
    budget = StepBudget(30.0, cap=10_000)
    while done < total:
        used.append(schedule.lr())
        schedule.advance(False)
        done += 1
        step_s = 3.0 if done == 1 else 0.1 if done <= 50 else 0.2
        seconds += step_s if done > 1 else 0.1  # the budget counts the compiling step at a typical step's time
        total = budget.refit(done, total, 1, step_s, schedule)
    expected = [WSD.lr * lr_multiplier(i, WSD, total) for i in range(total)]
    assert used == pytest.approx(expected, abs=0)  # bitwise: no rate the run used was changed by a re-fit
    assert 50 < total < 300 and seconds == pytest.approx(30.0, abs=0.2 + 1e-9)  # the budget held, to a step's time
    assert total - int(WSD.decay_fraction * total) > 50  # the decay began after the slow-down was seen


def test_no_refit_once_the_rates_depend_on_the_total() -> None:
    """In the decay (WSD) or after the warm-up (cosine) the total stays: changing it would change rates already used."""
    assert StepBudget(1e6, cap=1000).refit(50, 100, 1, 0.1, _schedule(WSD, 100)) == 100  # the first (compiling) window alone: no re-fit
    budget = StepBudget(1e6, cap=1000)
    budget.windows.append((1, 0.1))
    assert budget.refit(80, 100, 1, 0.1, _schedule(WSD, 100)) == 100  # step 80 of 100 is in the last 30%
    assert budget.refit(50, 100, 1, 0.1, _schedule(WSD, 100)) == 1000  # the stable phase: the cap, as seconds allow
    cosine = OptimConfig(name="adamw", lr=1e-2, warmup_steps=3, schedule="cosine")
    assert budget.refit(5, 100, 1, 0.1, _schedule(cosine, 100)) == 100


def test_a_budgeted_run_is_refitted_and_a_resume_heads_for_the_refitted_total(tmp_path: Path, tiny_data: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned at 10 s per step, a 40 s budget gives 4 of 6 steps; the tiny steps take milliseconds, so the loop re-fits
    the run to all 6 (the cap) in the stable phase; a run stopped at step 3 resumes towards 6, its lrs are the 6-step
    layout's, and the last checkpoint's config says 6."""
    monkeypatch.setattr(run_module, "planned_step", lambda cfg, **kw: (10.0, 0.3, "mocked: 10 s"))
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 6, "time_budget_s": 40.0}, checkpoint={"every": 1},
                      optim={"schedule": "wsd", "decay_fraction": 0.3, "min_lr_ratio": 0.0, "warmup_steps": 1})
    lines: list[str] = []
    summary = train(cfg, log=lines.append, stop_at=3)
    assert "time budget: 4 of 6 steps fit train.time_budget_s = 40 at 10 s per step (mocked: 10 s)" in lines
    assert summary["stopped"] and summary["step"] == 3
    run_dir = Path(summary["run_dir"])
    state = json.loads((run_dir / "checkpoints" / "step_0000003" / "state.json").read_text())
    assert state["config"]["train"]["steps"] == 6
    lines.clear()
    summary = train(cfg, resume="auto", log=lines.append)
    assert "time budget: 6 steps, as the run started with" in lines and summary["step"] == 6
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"}
    layout = cfg.optim  # each train record logs the rate set for the next step
    assert [lrs[s] for s in range(1, 7)] == pytest.approx([layout.lr * lr_multiplier(s, layout, 6) for s in range(1, 7)])
