"""Plan vs measured on CPU: train short runs of differently shaped models, each in a fresh process, and
compare `largo plan`'s parameters, peak memory and step time with what each run measured.

Memory: the run's own plan_vs_measured.json (glibc heap in use, sampled; baseline before the model).
Step time: the MFU is calibrated on config A only; the others' step times are predicted from it.
On a shared CPU wall time swings 2-4x with other processes, so the step time compared is the
main thread's CPU time per step at one torch thread (~ the uncontended wall time), read at each log line;
the run's wall-clock median is printed beside it.

Usage: python benchmarks/plan_vs_measured.py [--steps 10] [--out runs/bench_plan]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name: (what it varies, overrides); A calibrates the MFU. All share the data below.
CONFIGS = {
    "A": ("d256 L4 t256 mb8, GQA: calibration",
          {"model.dim": 256, "model.n_layers": 4, "model.n_heads": 4, "model.n_kv_heads": 2, "model.max_seq_len": 256,
           "train.micro_batch": 8, "train.global_batch": 8}),
    "B": ("d384 L2 t128 mb16, MHA: wider, shallower, shorter, bigger micro-batch",
          {"model.dim": 384, "model.n_layers": 2, "model.n_heads": 6, "model.n_kv_heads": 6, "model.max_seq_len": 128,
           "train.micro_batch": 16, "train.global_batch": 16}),
    "C": ("d192 L6 t512 mb2x2, MQA: narrower, deeper, longer, accumulation",
          {"model.dim": 192, "model.n_layers": 6, "model.n_heads": 3, "model.n_kv_heads": 1, "model.max_seq_len": 512,
           "train.micro_batch": 2, "train.global_batch": 4}),
    "D": ("d320 L3 t192 mb6, fp32 layout (step time not calibrated: A is bf16)",
          {"model.dim": 320, "model.n_layers": 3, "model.n_heads": 5, "model.n_kv_heads": 5, "model.max_seq_len": 192,
           "train.micro_batch": 6, "train.global_batch": 6, "train.precision": "fp32"}),
}
BASE = {"data.source": "stdlib", "data.vocab_size": 2048, "data.max_bytes": 3_000_000, "optim.warmup_steps": 2,
        "train.precision": "bf16", "train.log_every": 1, "train.threads": 1, "eval.every": 0, "eval.max_batches": 1,
        "checkpoint.every": 0}


def device_rates(precision: str) -> tuple[float, float]:
    """(GEMM FLOP/s, attention speed) at one thread, timed in CPU time like the steps (wall time is shared here)."""
    import torch

    from largo.observe.throughput import measure_attention_speed, measure_gemm_flops

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    return measure_gemm_flops(cpu, precision, clock=time.thread_time), measure_attention_speed(cpu, precision, clock=time.thread_time)


def step_flops(run_dir: Path) -> tuple[float, float]:
    """(FLOPs, attention FLOPs) of one optimizer step of a finished run, from its resolved config."""
    from largo.config import build_config
    from largo.models import get_spec

    cfg = build_config(json.loads((run_dir / "config.json").read_text()))
    model = cfg.model
    tokens = model.max_seq_len * cfg.train.global_batch
    return get_spec(model.arch).flops_per_token(model) * tokens, 12 * model.n_layers * model.dim * model.max_seq_len * tokens


def child(spec: str) -> None:
    """In the fresh process: train, timing each step's CPU time from one log line to the next."""
    from largo.config import load_config
    from largo.train.run import train

    overrides = json.loads(spec)
    cfg = load_config("text_tiny", {k: str(v) for k, v in overrides.items()})
    marks: list[tuple[int, float]] = []

    def log(msg: str) -> None:
        if msg.startswith("step ") and "/" in msg.split()[1]:
            marks.append((int(msg.split()[1].split("/")[0]), time.thread_time()))  # the memory sampler's thread excluded

    train(cfg, overwrite=True, log=log)
    cpu_s = [b - a for (_, a), (_, b) in zip(marks, marks[1:])]  # step 2 onwards (step 1 warms up)
    (cfg.run_dir / "step_cpu_s.json").write_text(json.dumps(cpu_s))


def run_one(name: str, overrides: dict, *, steps: int, out: Path, env: dict) -> dict:
    """Train one config in a fresh process (a clean heap for the memory baseline); collect its figures."""
    args = {**BASE, **overrides, "train.steps": steps, "data.dir": str(out / "data"), "run.out_dir": str(out), "run.name": name}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"config {name} failed:\n{proc.stderr[-3000:]}")
    run_dir = out / name
    check = json.loads((run_dir / "plan_vs_measured.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    wall = [r["step_time_ms"] / 1000 for r in records if r.get("kind") == "train" and r["step"] > 1]
    rows = {r["quantity"]: r for r in check["rows"]}
    return {"rows": rows, "cpu_s": statistics.median(json.loads((run_dir / "step_cpu_s.json").read_text())),
            "wall_s": statistics.median(wall), "phase": check["peak_phase"], "method": check["memory_method"],
            "took_s": time.perf_counter() - t0, "precision": args["train.precision"], "flops": step_flops(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_plan")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    from largo.plan import estimate as est
    env = {**os.environ, "LARGO_CACHE": str(args.out / "cache"), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    # Prepare the data in its own process first (as `largo prepare` would): tokenizer training leaves
    # a fragmented heap behind that would slow the memory sampler in the first run.
    prep = subprocess.run([sys.executable, "-m", "largo", "prepare", "text_tiny", "--data.dir", str(args.out / "data"),
                           *[x for k, v in BASE.items() if k.startswith("data.") for x in (f"--{k}", str(v))]],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if prep.returncode:
        sys.exit(f"prepare failed:\n{prep.stderr[-3000:]}")
    results = {}
    for name, (varies, overrides) in CONFIGS.items():
        results[name] = r = run_one(name, overrides, steps=args.steps, out=args.out, env=env)
        print(f"ran {name} in {r['took_s']:.0f}s", file=sys.stderr)
    a = results["A"]
    peak, speed = device_rates(a["precision"])
    flops_a, attention_a = a["flops"]
    mfu_a = est.dense_mfu(flops_a / (peak * a["cpu_s"]), flops_a, attention_a, speed)  # calibrated on A only

    print(f"\nplan vs measured on CPU: 1 thread, {args.steps} steps per config, each in a fresh process")
    print(f"memory: {a['method']}, above the heap before the model is built; estimates include the 32 MiB workspace allowance")
    print(f"step time: median CPU time per step over steps 2..{args.steps}; dense MFU calibrated on A = {100 * mfu_a:.1f}% "
          f"of a 1-thread bf16 GEMM ({peak / 1e9:.0f} GFLOP/s of CPU time); attention runs at {speed:.2f}x the GEMM rate\n")
    print("| config | shape and what it varies | params est = meas | peak mem est | peak mem meas | ratio | peak phase "
          "| step est | step meas (CPU) | ratio | wall median |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, r in results.items():
        rows = r["rows"]
        p_est, p_meas = rows["params"]["estimate"], rows["params"]["measured"]
        params = f"{p_est:,}" if p_est == p_meas else f"{p_est:,} != {p_meas:,}"
        m_est, m_meas = rows["peak_bytes"]["estimate"], rows["peak_bytes"]["measured"]
        if r["precision"] == a["precision"]:
            s_est = est.timing(r["flops"][0], steps=1, devices=1, peak_flops=peak, mfu=mfu_a, checkpointing=False,
                               attention_flops_per_step=r["flops"][1], attention_speed=speed)["step_s"]
            step = f"{s_est:.3f} s | {r['cpu_s']:.3f} s | {r['cpu_s'] / s_est:.3f}"
        else:
            step = f"n/a | {r['cpu_s']:.3f} s | n/a"
        print(f"| {name} | {CONFIGS[name][0]} | {params} | {m_est / 2**20:.1f} MiB | {m_meas / 2**20:.1f} MiB | {m_meas / m_est:.3f} "
              f"| {r['phase']} | {step} | {r['wall_s']:.3f} s |")


if __name__ == "__main__":
    main()
