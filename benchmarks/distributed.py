"""1 process vs 2-process DDP vs 2-process FSDP on the same global batch: tokens/s and per-rank peak memory.

    python benchmarks/distributed.py                 # CPU (gloo), the text_tiny preset, 2 cores shared by all runs
    python benchmarks/distributed.py --gpu           # 1 CUDA GPU, the gpt2_124m preset: tokens/s and MFU

Each run is a real `largo train` (under torchrun for 2 processes); figures come from its metrics.jsonl:
steady-state tokens/s uses the median step time of the log windows after the first (warmup,
compilation; the median resists other jobs' bursts on a shared machine), and peak memory is each
rank's own (resident set on CPU, max allocated on CUDA), reported for the largest rank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CPU_RUNS = [("1 process", []), ("1 process, 1 thread", ["--train.threads", "1"]),
            ("DDP x2", ["--nproc", "2", "--parallel.strategy", "ddp"]), ("FSDP x2", ["--nproc", "2", "--parallel.strategy", "fsdp"])]


def run(config: str, name: str, extra: list[str], out_dir: Path, overrides: list[str]) -> dict:
    """Train once; return steady tokens/s, MFU and the largest rank's peak memory from its metrics."""
    cmd = [sys.executable, "-m", "largo", "train", str(config), "--overwrite", "--run.out_dir", str(out_dir),
           "--run.name", name, *overrides, *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"][1:]  # drop the first window: warmup, compilation
    memory = [r for r in records if r["kind"] == "memory"][-1]
    step_s = statistics.median(r["step_time_ms"] for r in train) / 1000
    tokens_per_step = train[0]["tokens_per_s"] * train[0]["step_time_ms"] / 1000
    return {"tokens_per_s": tokens_per_step / step_s, "mfu": statistics.median(r["mfu"] for r in train),
            "peak_mib": max(memory["rank_peak_bytes"]) / 2**20, "state_mib": max(
                p + o for p, o in zip(memory["rank_param_bytes"], memory["rank_optim_bytes"], strict=True)) / 2**20,
            "world": len(memory["rank_peak_bytes"]), "loss": [r for r in records if r["kind"] == "summary"][0]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="1 CUDA GPU with the GPT-2-124M-sized config")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per run (default: 30 CPU, 40 GPU)")
    args = parser.parse_args()
    if args.gpu:
        config, runs = "gpt2_124m", [("1 GPU", [])]
        overrides = ["--train.steps", str(args.steps or 40), "--train.global_batch", "64", "--train.log_every", "10",
                     "--optim.warmup_steps", "5", "--data.max_bytes", "30000000", "--train.device", "cuda"]
    else:
        config, runs = "text_tiny", CPU_RUNS
        overrides = ["--train.steps", str(args.steps or 30), "--train.log_every", "5", "--optim.warmup_steps", "5",
                     "--data.dir", "data/bench-stdlib", "--data.max_bytes", "3000000", "--train.device", "cpu",
                     "--optim.name", "adamw", "--train.time_budget_s", "0"]  # FSDP shards what Muon orthogonalises whole
        # One yardstick for MFU: this machine's bf16 GEMM peak on all cores, each of N ranks owning 1/N of it.
        sys.path.insert(0, str(REPO / "src"))
        from largo.observe.throughput import peak_flops

        machine_tflops = peak_flops(torch.device("cpu"), "bf16") / 1e12
        runs = [(label, [*extra, "--train.peak_tflops", str(machine_tflops / (2 if "--nproc" in extra else 1))])
                for label, extra in runs]
    overrides += ["--eval.every", "0", "--eval.max_batches", "1", "--checkpoint.every", "0"]
    with tempfile.TemporaryDirectory(prefix="largo-bench-") as tmp:
        results = [(label, run(config, f"run{i}", extra, Path(tmp), overrides))
                   for i, (label, extra) in enumerate(runs)]
    base = results[0][1]["tokens_per_s"]
    load = os.getloadavg()[0]
    print(f"\n{config}, same global batch for every run | {os.cpu_count()} CPU cores, load average {load:.1f} at the end")
    print("| run | ranks | tokens/s | vs 1 process | MFU | params+optimizer per rank | peak memory per rank | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results:
        print(f"| {label} | {r['world']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | {100 * r['mfu']:.1f}% | "
              f"{r['state_mib']:.1f} MiB | {r['peak_mib']:,.0f} MiB | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
