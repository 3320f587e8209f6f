"""Contender: nanoGPT's train.py from a fetched snapshot, unmodified, with its own CPU recipe; only the data is ours.

The snapshot (--extra repo=DIR: a checkout, or a bare git folder such as the `fetch` tool's mirror) is copied into
a scratch folder; data/speedrun/ gets what train.py reads: train.bin (largo's train split of the stdlib corpus as
uint16 tokens), val.bin (the race's held-out token stream) and meta.pkl (the vocabulary size). The recipe is the
README's "I only have a macbook" line on top of config/train_shakespeare_char.py (4 layers, 4 heads, width 128,
context 64, batch 12, dropout 0, no compile on CPU), with the swept learning rate (min_lr = lr / 10) and
max_iters = lr_decay_iters = what fits the budget at the step time of a short calibration run.

Timing comes from train.py's own per-iteration lines: its iteration 0 (first eval, first step) is compile_s;
an iteration that began with an evaluation counts as the median iteration. The curve is train.py's own val-loss
estimate (20 random batches of the held-out stream, converted with the stream's tokens per byte: approximate);
the final point is exact: the checkpoint train.py saved at its last evaluation, scored by race/heldout.py.
"""

from __future__ import annotations

import math
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from largo.data.tokens import TokenShards

from benchmarks.race.common import Clock, Corpus, extra, parse_args, the_held_out, write_result
from benchmarks.race.heldout import HeldOut, bits_per_byte, score, token_stream

DEFAULT_REPO = "/work/.mirror/karpathy+nanoGPT/repo"
FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")
# README.md, "I only have a macbook": the CPU recipe, as train.py command-line flags.
# --dtype=float32: train.py runs CPU steps without autocast anyway; its float16 default would only ask for a CUDA GradScaler.
CPU_RECIPE = ["--device=cpu", "--dtype=float32", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
              "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
ITER = re.compile(r"^iter (\d+): loss [-\d.naninf]+, time ([\d.]+)ms")
EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
CALIBRATION_ITERS = 12


def materialise(repo: str, into: Path) -> None:
    """The snapshot's train.py, model.py, configurator.py and config, byte for byte."""
    for name in FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        if (Path(repo) / name).is_file():
            (into / name).write_bytes((Path(repo) / name).read_bytes())
        else:
            (into / name).write_bytes(subprocess.run(["git", "--git-dir", repo, "show", f"HEAD:{name}"], check=True,
                                                     capture_output=True).stdout)


def write_data(corpus: Corpus, stream: list[int], into: Path) -> None:
    """data/speedrun/{train,val}.bin and meta.pkl as nanoGPT's prepare scripts write them."""
    into.mkdir(parents=True, exist_ok=True)
    train = TokenShards(corpus.dir, "train")
    train.read(0, len(train)).astype(np.uint16).tofile(into / "train.bin")
    np.asarray(stream, dtype=np.uint16).tofile(into / "val.bin")
    with open(into / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": corpus.vocab_size}, f)


def command(lr: float, iters: int, eval_interval: int, out_dir: str) -> list[str]:
    """train.py with the shakespeare_char config, the CPU recipe and the race's settings."""
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", *CPU_RECIPE, "--dataset=speedrun",
            f"--learning_rate={lr!r}", f"--min_lr={lr / 10!r}", f"--max_iters={iters}", f"--lr_decay_iters={iters}",
            f"--eval_interval={eval_interval}", "--always_save_checkpoint=True", f"--out_dir={out_dir}"]


def calibrate(work: Path, lr: float) -> float:
    """Median seconds per iteration of a short run (iteration 0 excluded)."""
    out = subprocess.run(command(lr, CALIBRATION_ITERS, 10**9, "calibration"), cwd=work, capture_output=True, text=True, check=True)
    times = [float(m.group(2)) / 1000 for m in map(ITER.match, out.stdout.splitlines()) if m and int(m.group(1)) > 0]
    return statistics.median(times)


def race(work: Path, lr: float, iters: int, eval_interval: int, clock: Clock, per_token: float) -> None:
    """Run train.py, keeping the race clock from its lines; stop it at the first iteration past the budget."""
    proc = subprocess.Popen(command(lr, iters, eval_interval, "out"), cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    typical: list[float] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        if m := EVAL.match(line):
            if int(m.group(1)) > 0:  # train.py's estimate, in bits per byte of the held-out text
                clock.points.append([round(clock.train_s, 3), float(m.group(2)) * per_token])
        elif m := ITER.match(line):
            step, dt = int(m.group(1)), float(m.group(2)) / 1000
            clock.steps = step + 1
            if step == 0:
                clock.compile_s = dt
                continue
            evaluated = step % eval_interval == 0  # that iteration began with an evaluation (and a checkpoint)
            clock.train_s += statistics.median(typical) if evaluated and typical else dt
            typical = (typical + [dt])[-50:] if not evaluated else typical
            if clock.train_s >= clock.budget_s:
                proc.terminate()
                break
    proc.wait()


def rescore(work: Path, held: HeldOut, corpus: Corpus) -> tuple[float, int]:
    """The exact bits per byte of the checkpoint train.py saved at its last evaluation, and the model's parameters."""
    sys.path.insert(0, str(work))
    from model import GPT, GPTConfig  # noqa: PLC0415  (the snapshot's model.py)

    ckpt = torch.load(work / "out" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    bpb = score(lambda x: model(x, x)[0], held, corpus.encode, corpus.eot, ckpt["model_args"]["block_size"])
    return bpb, sum(p.numel() for p in model.parameters())


def main() -> None:
    a = parse_args(__doc__.splitlines()[0])
    t0 = time.perf_counter()
    held = the_held_out(a.held_bytes)
    corpus = Corpus(Path(a.data), 64)
    stream = token_stream(held.docs, corpus.encode, corpus.eot)
    per_token = bits_per_byte(len(stream) - 1, held.n_bytes)  # mean nats per token -> bits per byte
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as tmp:
        work = Path(tmp)
        materialise(extra(a).get("repo", DEFAULT_REPO), work)
        write_data(corpus, stream, work / "data" / "speedrun")
        iters = max(2, int(a.budget_s / calibrate(work, a.lr)))
        eval_interval = max(1, math.ceil(iters / a.points))
        setup_s = time.perf_counter() - t0
        clock = Clock(a.budget_s, a.points, lambda: float("nan"))
        race(work, a.lr, iters, eval_interval, clock, per_token)
        params = 0
        if clock.points:  # the last evaluation, scored exactly from its checkpoint
            clock.points[-1][1], params = rescore(work, held, corpus)
    write_result(a, "nanogpt", clock, params=params, setup_s=setup_s, max_iters=iters, eval_interval=eval_interval,
                 curve="train.py's 20-batch val estimate; last point exact")


if __name__ == "__main__":
    main()
