"""Does Muon reach AdamW's validation loss in at most 75% of the steps? A learning-rate sweep of each, on one recipe.

Usage: python benchmarks/muon_sweep.py [--config text_tiny] [--steps 400] [--fraction 0.75]
                                       [--adamw-lrs 1e-3,2e-3,4e-3] [--muon-lrs 2e-3,4e-3,8e-3,1.6e-2] [--out FILE.json]

Every run is the recipe as configured (same model, batch, schedule shape, seed and data order) except
optim.name, optim.lr and train.steps: AdamW runs the full `--steps`, Muon `fraction` of them with its
schedule compressed to fit (warm-up unchanged). Every run ends with the same validation batches
(eval.max_batches). The best AdamW run sets the target; the claim holds when the best Muon run at the
shorter length ends at or below it. One row per run, then the verdict; --out keeps the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from largo.config import load_config
from largo.observe.metrics import read_metrics
from largo.train.run import train


def run(config: str, name: str, lr: float, steps: int, eval_batches: int) -> dict:
    """Train one sweep point; returns its settings, final validation loss and the evaluation curve."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"run.out_dir": tmp, "optim.name": name, "optim.lr": str(lr), "train.steps": str(steps),
                     "eval.every": str(max(steps // 4, 1)), "eval.max_batches": str(eval_batches), "checkpoint.every": "0"}
        summary = train(load_config(config, overrides), log=lambda _m: None)
        curve = [(r["step"], r["loss"]) for r in read_metrics(Path(summary["run_dir"]) / "metrics.jsonl") if r.get("kind") == "eval"]
    return {"optim": name, "lr": lr, "steps": steps, "val_loss": summary["val_loss"], "curve": curve,
            "train_s": round(summary["train_s"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="text_tiny")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--fraction", type=float, default=0.75)
    p.add_argument("--adamw-lrs", default="1e-3,2e-3,4e-3")
    p.add_argument("--muon-lrs", default="2e-3,4e-3,8e-3,1.6e-2")
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--out", default="")
    a = p.parse_args()
    muon_steps = round(a.steps * a.fraction)
    grid = [("adamw", float(lr), a.steps) for lr in a.adamw_lrs.split(",")] + \
           [("muon", float(lr), muon_steps) for lr in a.muon_lrs.split(",")]
    rows = []
    print(f"{'optim':<6} {'lr':>8} {'steps':>5} {'val loss':>9}  curve (step: val loss)")
    for name, lr, steps in grid:
        row = run(a.config, name, lr, steps, a.eval_batches)
        rows.append(row)
        curve = "  ".join(f"{s}: {v:.3f}" for s, v in row["curve"])
        print(f"{name:<6} {lr:>8.3g} {steps:>5} {row['val_loss']:>9.4f}  {curve}", flush=True)
    best = {n: min((r for r in rows if r["optim"] == n), key=lambda r: r["val_loss"]) for n in ("adamw", "muon")}
    target, reached = best["adamw"]["val_loss"], best["muon"]["val_loss"] <= best["adamw"]["val_loss"]
    print(f"target: AdamW lr {best['adamw']['lr']:.3g}, {a.steps} steps -> {target:.4f}; "
          f"Muon lr {best['muon']['lr']:.3g}, {muon_steps} steps ({100 * a.fraction:.0f}%) -> {best['muon']['val_loss']:.4f}: "
          f"{'reached' if reached else 'NOT reached'}")
    if a.out:
        Path(a.out).write_text(json.dumps({"config": a.config, "rows": rows, "reached": reached}, indent=1) + "\n")


if __name__ == "__main__":
    main()
