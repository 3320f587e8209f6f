"""What every contender of the race shares: its command line, the training clock, the prepared corpus and the result.

A contender is `python -m benchmarks.race.NAME --budget-s S --lr LR --data DIR --out FILE.json [--points N]`:
it trains for S seconds of training time (its first step, which compiles, and its evaluations are not counted),
scores the held-out text in bits per byte (race/heldout.py) every S / N seconds of training, and writes one JSON:
{"name", "lr", "compile_s", "setup_s", "train_s", "steps", "params", "points": [[train_s, bpb], ...], "final_bpb"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from largo.config import load_config
from largo.data.prepare import read_manifest
from largo.data.tokens import LMBatches, TokenShards
from largo.models.gpt import GPTConfig

from benchmarks.race.heldout import HELD_OUT_BYTES, HeldOut, held_out

SEED = 1337
PRESET = "text_speedrun"  # its [data] section names the corpus, split and tokenizer every contender reads
CALIBRATION_STEPS = 4  # timed steps after the first before a contender fixes its schedule's length


def parse_args(description: str) -> argparse.Namespace:
    """The command line every contender takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--budget-s", type=float, required=True, help="seconds of training (first step and evaluations excluded)")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--data", required=True, help="the prepared stdlib folder (largo prepare text_speedrun)")
    p.add_argument("--out", required=True, help="the result JSON")
    p.add_argument("--points", type=int, default=8, help="held-out scores along the way")
    p.add_argument("--held-bytes", type=int, default=HELD_OUT_BYTES)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--extra", default="", help="contender-specific settings, key=value,... (largo: dotted overrides)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    return a


def extra(a: argparse.Namespace) -> dict[str, str]:
    """--extra key=value,key=value as a dict."""
    return dict(kv.split("=", 1) for kv in a.extra.split(",") if kv)


# The peers' model: text_tiny's as it was before it took text_speedrun's recipe (width 256, context 256, tied head;
# 4.0M parameters), the shape every recorded race gave plain and hf.
PEER_MODEL = {"model.dim": "256", "model.max_seq_len": "256", "model.tie_embeddings": "true", "model.zero_init_head": "false"}


def model_shape(a: argparse.Namespace) -> GPTConfig:
    """The peers' model (PEER_MODEL), with any model.* keys of --extra (a smaller model for smoke tests)."""
    return load_config("text_tiny", {**PEER_MODEL, **{k: v for k, v in extra(a).items() if k.startswith("model.")}}).model


def the_held_out(held_bytes: int) -> HeldOut:
    """The race's held-out documents (the preset's corpus and split)."""
    return held_out(load_config(PRESET).data, held_bytes)


@dataclass
class Corpus:
    """The prepared folder: train-split batches by step, the tokenizer and its end-of-text id."""

    dir: Path
    seq_len: int
    batches: LMBatches = field(init=False)
    tokenizer: Tokenizer = field(init=False)
    eot: int = field(init=False)

    def __post_init__(self) -> None:
        manifest = read_manifest(self.dir)
        self.batches = LMBatches(TokenShards(self.dir, "train", manifest), self.seq_len, SEED)
        self.tokenizer = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self.eot = int(manifest["tokenizer"]["eot_id"])
        self.vocab_size = int(manifest["tokenizer"]["vocab_size"])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (size, seq_len) of a step: largo's (seed, step) -> windows mapping."""
        return self.batches.rows(range(step * size, (step + 1) * size))


class Clock:
    """Training time against the budget: the first step counts as long as the second (the rest of it is compile_s);
    evaluation pauses are not counted. Scores the held-out text every budget / points seconds and at the end."""

    def __init__(self, budget_s: float, points: int, evaluate: Callable[[], float]):
        self.budget_s, self.every_s, self.evaluate = budget_s, budget_s / max(points, 1), evaluate
        self.train_s, self.compile_s, self.steps = 0.0, 0.0, 0
        self.step_s: list[float] = []
        self.points: list[list[float]] = []
        self._next, self._t = self.every_s, time.perf_counter()

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> bool:
        """End of a step: count it, score if a point is due; True when the budget is spent."""
        dt = time.perf_counter() - self._t
        self.steps += 1
        if self.steps == 1:
            self.compile_s = dt
        elif self.steps == 2:  # the first step's share of training: as long as this one
            self.compile_s, self.train_s = max(0.0, self.compile_s - dt), self.train_s + 2 * dt
        else:
            self.train_s += dt
        self.step_s.append(dt)
        done = self.train_s >= self.budget_s
        if self.steps > 1 and (self.train_s >= self._next or done):
            self.points.append([round(self.train_s, 3), self.evaluate()])
            self._next = self.train_s + self.every_s
        return done

    def planned_steps(self) -> int | None:
        """Steps that fit the budget at the median step time so far; None until CALIBRATION_STEPS steps were timed."""
        timed = self.step_s[1:]
        if len(timed) < CALIBRATION_STEPS:
            return None
        return self.steps + max(1, int((self.budget_s - self.train_s) / statistics.median(timed)))


def write_result(a: argparse.Namespace, name: str, clock: Clock, *, params: int, setup_s: float, **more: Any) -> None:
    """The contender's JSON record."""
    record = {"name": name, "lr": a.lr, "budget_s": a.budget_s, "compile_s": round(clock.compile_s, 2), "setup_s": round(setup_s, 2),
              "train_s": round(clock.train_s, 2), "steps": clock.steps, "params": params, "points": clock.points,
              "final_bpb": clock.points[-1][1] if clock.points else float("nan"), **more}
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name} lr {a.lr:g}: {clock.steps} steps in {clock.train_s:.1f} s (+{clock.compile_s:.1f} s compile) -> "
          f"{record['final_bpb']:.4f} bits/byte", flush=True)
