"""Is the data loader fast enough? Loader samples/s next to the samples/s training consumes, per recipe.

Usage: python benchmarks/loader.py [text_tiny | CONFIG.toml ...]    (default: every preset but gpt2_124m)

For each recipe, in one process:
  loader    `train_rows` for 300 global batches in step order (what the loop calls each step), on one thread,
            after 10 untimed ones (first touches of the memmaps)
  training  a short run of the recipe as configured (its precision, micro-batching and compile decision for
            the full run), 2 x W steps with the step time taken from the second W-step window (compiling
            and warm-up excluded)
and the ratio loader / training. Recipes whose data needs a missing package are skipped with the install command.
Device-side augmentation (audio) runs inside the training step, so its cost is in the training figure.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from largo.config import load_config
from largo.data import rank_samples
from largo.errors import DataError
from largo.models import get_spec
from largo.presets import preset_names
from largo.observe.metrics import read_metrics
from largo.train.run import compile_mode, train

LOADER_WARM_STEPS = 10  # first touches of the memmaps (page cache) and lazy set-up, as a run's first steps pay them
LOADER_STEPS = 300


def loader_rate(cfg, dataset) -> float:
    """Training samples per second of wall time that dataset.train_rows delivers on one thread."""
    t = cfg.train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = 0.0
        for step in range(LOADER_WARM_STEPS + LOADER_STEPS):
            start = time.perf_counter() if step == LOADER_WARM_STEPS else start
            for samples in rank_samples(step, global_batch=t.global_batch, micro_batch=t.micro_batch, rank=0, world=1):
                dataset.train_rows(samples)
        return LOADER_STEPS * t.global_batch / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def training_rate(path: str, cfg, compiled: str, window: int) -> float:
    """Training samples per second in the second `window`-step window of a short run with the recipe's settings."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"run.out_dir": tmp, "train.steps": str(2 * window), "train.log_every": str(window),
                     "train.compile": "false" if compiled == "off" else "true", "eval.every": "0", "eval.max_batches": "1",
                     "checkpoint.every": "0"}
        short = load_config(path, overrides)
        summary = train(short, log=lambda _m: None)
        last = [r for r in read_metrics(Path(summary["run_dir"]) / "metrics.jsonl") if r.get("kind") == "train"][-1]
        return cfg.train.global_batch / (last["step_time_ms"] / 1000)


def main(paths: list[str]) -> None:
    paths = paths or [name for name in preset_names() if name != "gpt2_124m"]
    print(f"{'recipe':<16} {'batch':>5} {'compile':>7} {'loader/s':>10} {'trained/s':>10} {'ratio':>8}")
    for path in paths:
        cfg = load_config(path)
        spec = get_spec(cfg.model.arch)
        try:
            task = spec.task(cfg.data, cfg.model, spec.prepare(cfg.data, cfg.model, log=lambda _m: None), seed=cfg.run.seed)
        except DataError as e:
            print(f"{Path(path).stem:<16} skipped: {e}")
            continue
        cfg = dataclasses.replace(cfg, model=task.model)
        compiled, _ = compile_mode(cfg, task, "none")
        loads = loader_rate(cfg, task.dataset)
        trains = training_rate(path, cfg, compiled, window=8 if compiled == "off" else 12)
        print(f"{Path(path).stem:<16} {cfg.train.global_batch:>5} {compiled:>7} {loads:>10,.0f} {trains:>10,.1f} {loads / trains:>7,.0f}x",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
