"""largo itself: the real `python -m largo train` on a config written for the shape, read back from metrics.jsonl.

The config sets the shape, the shared prepared data folder, the harness's precision, a constant learning rate without
warm-up, the shared AdamW settings and `train.log_every = 1`, so every step's `step_time_ms` and loss
are in metrics.jsonl. largo times a step from the batch read to the optimizer step, before any
logging; the final evaluation (one batch) and checkpoint come after the last step and are not in
any step time. `--compile default` leaves train.compile at the config default; true/false set it.
`--attention sdpa` sets model.attention (default: the config default, auto) for the ablation rows.
Peak memory is the largo process's own (the largest child this wrapper waited for).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open

from benchmarks.contenders.common import (BETAS, EPS, GRAD_CLIP, LR, SHAPES, WEIGHT_DECAY, data_settings, parse_args,
                                          peak_rss_bytes, write_result)
from largo.checkpoint.store import checkpoint_candidates

VARIANTS = {"default": "largo", "true": "largo_compile", "false": "largo_eager"}


def toml_value(value: object) -> str:
    """A Python scalar as TOML (the values here are strings, numbers and booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string or number is valid TOML


def write_config(args: argparse.Namespace, out_dir: Path) -> Path:
    """The run's TOML: the shape, the shared data, the shared optimizer and a step-by-step log."""
    s = SHAPES[args.shape]
    sections = {
        "run": {"name": f"bench_{args.shape}", "out_dir": str(out_dir), "seed": args.seed},
        "data": {**data_settings(), "dir": str(Path(args.data).resolve())},
        "model": {"dim": s.dim, "n_layers": s.n_layers, "n_heads": s.n_heads, "n_kv_heads": 0, "mlp_hidden": s.mlp_hidden,
                  "max_seq_len": s.context, "tie_embeddings": True, "norm_eps": 1e-5, "rope_theta": 10000.0},
        "optim": {"name": "adamw", "lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS, "weight_decay": WEIGHT_DECAY,
                  "grad_clip": GRAD_CLIP, "warmup_steps": 0, "schedule": "constant"},
        "train": {"steps": args.steps, "global_batch": s.batch, "micro_batch": s.batch, "precision": args.precision,
                  "device": "cpu", "log_every": 1},
        "eval": {"every": 0, "max_batches": 1},
        "checkpoint": {"every": 0, "keep_last": 1},
    }
    if args.compile != "default":
        sections["train"]["compile"] = args.compile == "true"
    if args.attention != "default":
        sections["model"]["attention"] = args.attention
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()) + "\n"
                   for name, keys in sections.items())
    path = out_dir / "bench.toml"
    path.write_text(text)
    return path


def checkpoint_params(run_dir: Path) -> int:
    """Parameters in the final checkpoint's model.safetensors (largo stores a tied weight once)."""
    newest = checkpoint_candidates(run_dir / "checkpoints")[0]
    with safe_open(newest / "model.safetensors", framework="pt") as f:
        total = 0
        for key in f.keys():
            numel = 1
            for n in f.get_slice(key).get_shape():
                numel *= n
            total += numel
        return total


def run(args: argparse.Namespace) -> None:
    """Train through the CLI, then turn its metrics.jsonl into the contender result."""
    name = VARIANTS[args.compile] + ("" if args.attention == "default" else f"_{args.attention}")
    with tempfile.TemporaryDirectory(prefix="bench-largo-") as tmp:
        config = write_config(args, Path(tmp))
        cmd = [sys.executable, "-m", "largo", "train", str(config), "--overwrite"]
        proc = subprocess.run(cmd, env=os.environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(proc.stdout)
        if proc.returncode:
            raise SystemExit(f"{name}: largo train exited with {proc.returncode}")
        run_dir = Path(tmp) / f"bench_{args.shape}"
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
        if [r["step"] for r in train] != list(range(1, args.steps + 1)):
            raise SystemExit(f"{name}: metrics.jsonl lacks per-step train records (train.log_every must be 1)")
        params = checkpoint_params(run_dir)
        decided = re.search(r"^compile: (\S+)", proc.stdout, re.M)  # what train.compile (auto by default) chose
    write_result(args, name, params=params, step_times_s=[r["step_time_ms"] / 1000 for r in train],
                 losses=[r["loss"] for r in train], peak_rss=peak_rss_bytes(children=True), precision=args.precision,
                 compiled=decided.group(1) if decided else args.compile)


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0], [("--compile", {"choices": sorted(VARIANTS), "default": "default",
                                                            "help": "train.compile: the config default, true or false"}),
                                             ("--attention", {"choices": ["default", "sdpa", "math"], "default": "default",
                                                              "help": "model.attention: the config default (auto), sdpa or math"})]))
