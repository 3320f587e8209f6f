"""Contender: largo's own trainer on a preset (text_speedrun by default; --extra takes dotted overrides, e.g. for ablations).

What `largo plan text_speedrun && largo train text_speedrun --train.time_budget_s S` does, in one process: the plan's
timed steps of this very configuration (probe_step; setup, not counted) give the step time, train.steps is what fits
the budget (re-fitted by the trainer to the step time it measures, until the decay starts: train/budget.py), and the
run checkpoints every planned steps / points steps. Each step is logged (log_every = 1; on a CPU a
loss read costs nothing), so training time at step n is metrics.jsonl's elapsed_s minus compile_s (step 1's time
less step 2's). Each checkpoint is then scored in bits per byte on the race's held-out text.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from largo.checkpoint.restore import restore
from largo.config import load_config
from largo.observe.metrics import read_metrics
from largo.train.probe import probe_step
from largo.train.run import train

from benchmarks.race.common import PRESET, Clock, Corpus, extra, parse_args, the_held_out, write_result
from benchmarks.race.heldout import HeldOut, score


def overrides(a: argparse.Namespace, out_dir: str) -> dict[str, str]:
    """The preset as the race runs it: the swept lr, no eval, fixed precision and compile, per-step logs."""
    chosen = {k: v for k, v in extra(a).items() if k != "preset"}
    return {"run.out_dir": out_dir, "data.dir": a.data, "optim.lr": repr(a.lr), "train.time_budget_s": repr(a.budget_s),
            "train.precision": a.precision, "train.compile": "true", "train.log_every": "1", "train.threads": str(a.threads),
            "eval.every": "0", "eval.max_batches": "1", "checkpoint.keep_last": "100000", **chosen}


def main() -> None:
    a = parse_args(__doc__.splitlines()[0])
    t0 = time.perf_counter()
    preset = extra(a).get("preset", PRESET)
    held = the_held_out(a.held_bytes)
    with tempfile.TemporaryDirectory(prefix="largo-race-") as out:
        cfg = load_config(preset, overrides(a, out))
        step_s = float(probe_step(cfg, log=print)["step_s"])
        steps = max(2, int(a.budget_s / step_s))  # what the trainer's fit will plan: the checkpoints' spacing
        cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, every=max(1, steps // a.points)))
        setup_s = time.perf_counter() - t0
        summary = train(cfg, log=print)  # every step a line: the race's log of the run
        clock, params = curve(Path(summary["run_dir"]), a, held, cfg.model.max_seq_len)
    write_result(a, f"largo:{preset}", clock, params=params, setup_s=setup_s, planned_step_s=step_s,
                 overrides=extra(a))


def curve(run_dir: Path, a: argparse.Namespace, held: HeldOut, seq_len: int) -> tuple[Clock, int]:
    """The race clock from metrics.jsonl, every checkpoint's held-out bits per byte, and the model's parameters."""
    records = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"}
    clock = Clock(a.budget_s, a.points, lambda: float("nan"))
    clock.compile_s = max(0.0, records[1]["step_time_ms"] - records[2]["step_time_ms"]) / 1000 if 2 in records else 0.0
    corpus = Corpus(Path(a.data), seq_len)
    for folder in sorted((run_dir / "checkpoints").glob("step_*")):
        step = int(folder.name.removeprefix("step_"))
        model, _, _ = restore(folder)
        clock.points.append([round(records[step]["elapsed_s"] - clock.compile_s, 3), score(model, held, corpus.encode, corpus.eot, seq_len)])
    clock.steps = max(records)
    clock.train_s = records[clock.steps]["elapsed_s"] - clock.compile_s
    return clock, sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
