"""`make bench`: training throughput of largo next to its peers: same model, same data, same optimizer.

    python benchmarks/run.py                          # shapes A and B, 3 interleaved rounds, default contenders
    python benchmarks/run.py --quick                  # smoke run: shape A, 1 round, 16 steps (6 excluded)
    python benchmarks/run.py --shape A --contenders plain_eager,largo --rounds 5 --steps 100

Method
- Every contender trains the same Llama-style decoder (shape A: 4 layers, width 256, 4 heads, SwiGLU
  683, context 128, batch 16, vocabulary 8192, tied: 5,246,208 parameters; shape B: 8 layers, width
  512, 8 heads, SwiGLU 1365, context 512, batch 8: 29,364,736), in one precision for all (plain_fp32 aside):
  --precision auto (default) is largo's measured choice for this CPU (bf16 autocast where a bf16 matmul of
  shape A's MLP runs >= 1.2x fp32, else fp32; the choice, the CPU's AVX-512/AMX flags and each row's
  precision are recorded),
  fused AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1 on matrices, constant rate), clipping at 1.0,
  on the same token stream: the Python standard library prepared once by `largo prepare` (BPE 8192),
  read as largo's loader reads it, so step k sees the same windows in every contender.
  Each contender checks its own parameter count against largo's count (largo.models.count_params).
- Each run is a fresh process (benchmarks/contenders/NAME.py), in the same environment
  (OMP_NUM_THREADS unset unless --threads: torch picks its default). Rounds are interleaved
  (A B C A B C ...) so a burst of load from elsewhere lands on all contenders, not on one.
- A run's figure is its median step time after the first --warmup steps (compilation, inductor's
  compile workers starting up in the background for a few steps after it, allocator warm-up);
  tokens/s = tokens per step / that median; the table gives each round and the median of the rounds. MFU = training FLOPs per step (the language model spec's flops_per_token: 6 N + 12 L d T per token,
  embedding lookup excluded, tied head included) / median step time / this CPU's GEMM peak in that precision
  (largo.observe.throughput: a matmul of up to 2048^3, timed before and after the runs; the largest value
  ever measured on this CPU is kept, since a GEMM timed while other jobs run reads low).
- Step time is what the trainer spends on a step: largo's own step_time_ms and the plain loops time
  batch read + forward + backward + clip + AdamW; the HF and Lightning callbacks start when the batch
  is already read (a batch read takes about 0.02 ms of the 0.1-5 s steps). Logging and evaluation are outside all of them.
- final loss = mean train loss of the last 5 steps (speed must not be bought with worse training);
  peak RSS = the training process's ru_maxrss; load = the 1-minute load average when the run ended
  (a run's own 2 threads add ~2 on a 2-core machine); others' CPU = the share of all cores' time
  (/proc/stat, steal included) that went to processes other than the run while it ran: a figure
  measured with more than a few percent there was slowed by someone else, whatever its load reads.
  Per-round values are in the table so such a round can be told apart; the median of rounds resists one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]  # this checkout's largo and contenders, whatever is installed

import torch  # noqa: E402

from benchmarks.contenders.common import SHAPES, VOCAB, data_settings  # noqa: E402
from largo.config import TrainConfig  # noqa: E402
from largo.observe.throughput import remeasure_peak  # noqa: E402
from largo.models import count_params, get_spec  # noqa: E402


@dataclass(frozen=True)
class Contender:
    """A row of the table: which module runs it, with which options, and whether it is a peer of largo."""

    module: str
    args: tuple[str, ...]
    what: str
    peer: bool


_COMPILE_DEFAULT = TrainConfig().compile
CONTENDERS = {
    "plain_eager": Contender("plain_eager", (), "hand-written loop, autocast to the harness precision, eager", True),
    "plain_fp32": Contender("plain_eager", ("--precision", "fp32"), "hand-written loop, fp32, eager (reference)", True),
    "plain_compiled": Contender("plain_compiled", (), "hand-written loop, torch.compile(model + loss)", True),
    "hf_trainer": Contender("hf_trainer", (), "transformers.Trainer + LlamaForCausalLM, torch_compile", True),
    "lightning_trainer": Contender("lightning_trainer", (), "Lightning Trainer (bf16-mixed or 32-true), compiled model + loss", True),
    "plain_compiled_largo_attention": Contender("plain_compiled", ("--attention", "auto"),
                                                "plain_compiled with largo's attention choice: the loop alone vs largo", False),
    "largo": Contender("largo_cli", (), f"largo train, config defaults (compile {_COMPILE_DEFAULT})", False),
    "largo_compile": Contender("largo_cli", ("--compile", "true"), "largo train --train.compile true", False),
    "largo_eager": Contender("largo_cli", ("--compile", "false"), "largo train --train.compile false", False),
    "largo_sdpa": Contender("largo_cli", ("--attention", "sdpa"), "largo train --model.attention sdpa", False),
}
DEFAULT_CONTENDERS = "plain_eager,plain_compiled,hf_trainer,lightning_trainer,plain_compiled_largo_attention,largo"
# Long enough that train.compile = auto compiles (>= 1e13 training FLOPs: about 150 steps of A, 13 of B), as a user's run would.
DEFAULT_STEPS = {"A": 160, "B": 40}
RESULTS = REPO / "benchmarks" / "results"


def parse_args() -> argparse.Namespace:
    """Command line; --quick fills in whatever was not given with a few-minute smoke run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["A", "B", "all"], default=None, help="model shape (default all; A with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="steps per run, warm-up included (default A 160, B 40; 16 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of the median (default 10; 6 with --quick)")
    p.add_argument("--contenders", default=DEFAULT_CONTENDERS, help=f"comma list of {', '.join(CONTENDERS)}")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="raw results (JSON); the table goes next to it as .md")
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / f"bench_stdlib_{VOCAB}", help="prepared corpus (made if missing)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every run; 0 = leave unset (torch's default)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed and marked failed")
    p.add_argument("--quick", action="store_true", help="smoke run: shape A, 1 round, 16 steps, warm-up 6")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="one precision for every contender; auto = largo's measured choice for this CPU at shape A's MLP matmul")
    a = p.parse_args()
    a.shape = a.shape or ("A" if a.quick else "all")
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.warmup = a.warmup if a.warmup is not None else (6 if a.quick else 10)
    a.shapes = ["A", "B"] if a.shape == "all" else [a.shape]
    a.steps_for = {s: a.steps or (16 if a.quick else DEFAULT_STEPS[s]) for s in a.shapes}
    a.out, a.data_dir = a.out.resolve(), a.data_dir.resolve()  # the runs start in the repository root
    a.names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    unknown = [n for n in a.names if n not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    for shape, steps in a.steps_for.items():
        if steps < a.warmup + 5:
            p.error(f"--steps ({steps}) must be at least --warmup ({a.warmup}) + 5 (shape {shape})")
    return a


def machine() -> dict[str, Any]:
    """CPU model, its matmul-relevant flags, cores, torch and Python versions: the line every figure needs next to it."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        pass
    isa = sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
    return {"cpu": model, "cpu_flags": isa, "aten_isa": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def choose_precision(asked: str) -> tuple[str, str]:
    """(precision, why): the asked one, or largo's measured auto choice at shape A's MLP matmul (rows = batch x context)."""
    from largo.precision import choose

    a = SHAPES["A"]
    choice = choose(asked, torch.device("cpu"), (a.batch * a.context, a.dim, a.mlp_hidden), log=print)
    return choice.precision, choice.line + (f" | {choice.warning}" if choice.warning else "")


def child_env(threads: int) -> dict[str, str]:
    """The one environment every run gets: this checkout first on the path, threads left to torch unless asked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def prepare_data(data_dir: Path, env: dict[str, str], log_dir: Path) -> None:
    """Tokenize the corpus once with `largo prepare` (it returns at once when the manifest is current)."""
    config = log_dir / "prepare.toml"
    config.write_text("[data]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in data_settings().items())
                      + f"dir = {json.dumps(str(data_dir))}\n")
    proc = subprocess.run([sys.executable, "-m", "largo", "prepare", str(config)], cwd=REPO, env=env, text=True,
                          capture_output=True)
    if proc.returncode:
        raise SystemExit(f"largo prepare failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def cpu_ticks() -> tuple[int, int]:
    """Busy and total clock ticks of all CPUs since boot (/proc/stat; steal counts as busy); (0, 0) elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal, sum(fields)


def own_cpu_s() -> float:
    """CPU seconds used so far by this process's finished children (a run and the processes it waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def others_share(before: tuple[tuple[int, int], float], after: tuple[tuple[int, int], float]) -> float | None:
    """Share of the machine's CPU time that went to other processes while a run ran (0 on a quiet machine)."""
    (busy0, total0), own0 = before
    (busy1, total1), own1 = after
    if total1 <= total0:
        return None
    own_ticks = (own1 - own0) * os.sysconf("SC_CLK_TCK")
    return max(0.0, (busy1 - busy0) - own_ticks) / (total1 - total0)


def run_once(name: str, shape: str, rnd: int, args: argparse.Namespace, env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """One contender, one round, in a fresh process; its result plus round, wall time and load."""
    c = CONTENDERS[name]
    stem = log_dir / f"{shape}_r{rnd}_{name}"
    # the harness's precision first: a contender's own --precision (plain_fp32's) comes after it and wins
    cmd = [sys.executable, "-m", f"benchmarks.contenders.{c.module}", "--precision", args.precision, *c.args, "--shape", shape,
           "--steps", str(args.steps_for[shape]), "--warmup", str(args.warmup), "--data", str(args.data_dir),
           "--json", f"{stem}.json"]
    Path(f"{stem}.json").unlink(missing_ok=True)
    load_before, cpu_before, t0 = os.getloadavg()[0], (cpu_ticks(), own_cpu_s()), time.perf_counter()
    with open(f"{stem}.log", "w") as log:
        # Its own session: a timeout (or Ctrl-C) ends the run's whole process group, `largo train` child included.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    meta = {"contender": name, "shape": shape, "round": rnd, "wall_s": time.perf_counter() - t0, "rc": rc,
            "load_before": load_before, "load": os.getloadavg()[0], "log": str(stem) + ".log",
            "others_cpu": others_share(cpu_before, (cpu_ticks(), own_cpu_s()))}
    result_file = Path(f"{stem}.json")
    if rc != 0 or not result_file.exists():
        tail = Path(f"{stem}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {**meta, "error": f"exit {rc}: {tail[0][:200]}"}
    return {**json.loads(result_file.read_text()), **meta, "contender": name}


def run_stats(r: dict[str, Any], warmup: int) -> dict[str, float]:
    """Median (and 10th/90th percentile) step time after the warm-up steps, and tokens/s from the median."""
    times = sorted(r["step_times_s"][warmup:])
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    median = statistics.median(times)
    return {"step_s": median, "step_s_p10": pick(0.1), "step_s_p90": pick(0.9), "tokens_per_s": r["tokens_per_step"] / median}


def summarize(results: list[dict[str, Any]], shape: str, names: list[str], peak: float) -> list[dict[str, Any]]:
    """One row per contender: per-round tokens/s, their median, MFU, memory, loss and load."""
    flops_per_step = get_spec("gpt").flops_per_token(SHAPES[shape].model_config(), SHAPES[shape].context) * SHAPES[shape].tokens_per_step
    rows = []
    for name in names:
        runs = [r for r in results if r["contender"] == name and r["shape"] == shape]
        good = [r for r in runs if "stats" in r]
        row: dict[str, Any] = {"contender": name, "peer": CONTENDERS[name].peer, "what": CONTENDERS[name].what,
                               "rounds": [r["stats"]["tokens_per_s"] if "stats" in r else None for r in runs],
                               "loads": [r["load"] for r in runs], "others": [r.get("others_cpu") for r in runs],
                               "precision": "/".join(sorted({str(r.get("precision", "?")) for r in good})) or "-",
                               "problem": next((f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
                                            for r in runs if "stats" not in r), None)}
        if good:
            tok_s = statistics.median(r["stats"]["tokens_per_s"] for r in good)
            row.update(tokens_per_s=tok_s, mfu=flops_per_step * tok_s / SHAPES[shape].tokens_per_step / peak,
                       peak_rss_mib=max(r["peak_rss_bytes"] for r in good) / 2**20,
                       final_loss=statistics.median(r["final_loss"] for r in good),
                       wall_s=statistics.median(r["wall_s"] for r in good),
                       params=good[0]["params"], params_ok=all(r["params_match"] for r in good))
        rows.append(row)
    peers = [r["tokens_per_s"] for r in rows if r["peer"] and "tokens_per_s" in r]
    largo = next((r["tokens_per_s"] for r in rows if r["contender"] == "largo" and "tokens_per_s" in r),
                 next((r["tokens_per_s"] for r in rows if not r["peer"] and "tokens_per_s" in r), None))
    for r in rows:
        if "tokens_per_s" in r:
            r["vs_best_peer"] = r["tokens_per_s"] / max(peers) if peers else None
            r["vs_largo"] = r["tokens_per_s"] / largo if largo else None
    return rows


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[dict[str, Any]], rounds: int) -> str:
    """The rows as a Markdown table (also readable as plain text)."""
    head = (["contender"] + [f"tok/s r{i + 1}" for i in range(rounds)] +
            ["median tok/s", "vs best peer", "vs largo", "precision", "MFU", "peak RSS MiB", "final loss", "run wall s", "load",
             "others' CPU", "params"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per_round = [f"{v:,.0f}" if v is not None else "-" for v in r["rounds"]] + ["-"] * (rounds - len(r["rounds"]))
        if "tokens_per_s" not in r:
            cells = [r["contender"], *per_round, str(r["problem"])] + [""] * (len(head) - rounds - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        params = f"{r['params']:,} {'ok' if r['params_ok'] else 'MISMATCH'}"
        loads = "/".join(f"{v:.1f}" for v in r["loads"])
        others = "/".join("-" if v is None else f"{100 * v:.0f}%" for v in r["others"])
        cells = [r["contender"], *per_round, f"{r['tokens_per_s']:,.0f}", _x(r["vs_best_peer"]), _x(r["vs_largo"]), r["precision"],
                 f"{100 * r['mfu']:.1f}%", f"{r['peak_rss_mib']:,.0f}", f"{r['final_loss']:.3f}", f"{r['wall_s']:.0f}", loads, others, params]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shape_line(shape: str, steps: int, warmup: int, peak: float, precision: str) -> str:
    """What was measured: the shape, the steps and the MFU yardstick."""
    s, cfg = SHAPES[shape], SHAPES[shape].model_config()
    return (f"Shape {shape}: {s.n_layers} layers, width {s.dim}, {s.n_heads} heads, SwiGLU {s.mlp_hidden}, context {s.context}, "
            f"batch {s.batch}, vocabulary {VOCAB}, tied: {count_params(cfg).total:,} parameters, {s.tokens_per_step:,} tokens/step, "
            f"{get_spec('gpt').flops_per_token(cfg, s.context) / 1e6:.1f} MFLOP/token | {steps} steps per run, first {warmup} excluded | "
            f"MFU against the {precision} GEMM peak {peak / 1e9:,.0f} GFLOP/s")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # the peak below is then measured at the runs' thread count
    log_dir = args.out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads)
    info = machine()
    args.precision, why = choose_precision(args.precision)
    # A GEMM timed while another job runs reads low (MFU above 100%), so the peak is measured before and after
    # the runs and the largest value seen on this CPU (largo's cache keeps it) is the yardstick.
    peak = remeasure_peak(torch.device("cpu"), args.precision)
    print(f"{info['cpu']} ({', '.join(info['cpu_flags']) or 'no AVX2'}; ATen {info['aten_isa']}), {info['cores']} cores | "
          f"torch {info['torch']} ({info['torch_threads']} threads) | Python {info['python']} | {why} | "
          f"{args.precision} GEMM peak {peak / 1e9:,.0f} GFLOP/s (largest measured so far)", flush=True)
    prepare_data(args.data_dir, env, log_dir)
    results: list[dict[str, Any]] = []
    skipped: set[tuple[str, str]] = set()
    for shape in args.shapes:
        for rnd in range(1, args.rounds + 1):
            for name in args.names:  # interleaved: A B C A B C ...
                if (shape, name) in skipped:
                    continue
                r = run_once(name, shape, rnd, args, env, log_dir)
                if "skipped" in r:
                    skipped.add((shape, name))
                elif "error" not in r:
                    r["stats"] = run_stats(r, args.warmup)
                results.append(r)
                figure = (f"{r['stats']['tokens_per_s']:,.0f} tok/s (median step {r['stats']['step_s']:.3f} s), "
                          f"final loss {r['final_loss']:.3f}" if "stats" in r else r.get("skipped") or r.get("error"))
                others = "-" if r["others_cpu"] is None else f"{100 * r['others_cpu']:.0f}%"
                print(f"[{shape} round {rnd}/{args.rounds}] {name}: {figure} | load {r['load']:.1f}, others' CPU {others} | "
                      f"{r['wall_s']:.0f} s", flush=True)
    peak = remeasure_peak(torch.device("cpu"), args.precision)
    sections, summary = [], {}
    for shape in args.shapes:
        summary[shape] = summarize(results, shape, args.names, peak)
        sections.append(f"{shape_line(shape, args.steps_for[shape], args.warmup, peak, args.precision)}\n\n"
                        f"{table(summary[shape], args.rounds)}")
    legend = "\n".join(f"- {n}: {CONTENDERS[n].what}" for n in args.names)
    header = (f"{info['cpu']} ({', '.join(info['cpu_flags']) or 'no AVX2'}; ATen {info['aten_isa']}), {info['cores']} cores, "
              f"torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']} | {why} | "
              f"{args.rounds} interleaved round(s) | {time.strftime('%Y-%m-%d %H:%M')}")
    report = f"{header}\n\n" + "\n\n".join(sections) + f"\n\n{legend}\n"
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "precision": args.precision, "precision_why": why, f"peak_flops_{args.precision}": peak, "rounds": args.rounds, "warmup": args.warmup,
                                    "steps": args.steps_for, "summary": summary, "runs": results}, indent=1))
    args.out.with_suffix(".md").write_text(report)
    print(f"raw results: {args.out} | table: {args.out.with_suffix('.md')} | logs: {log_dir}")


if __name__ == "__main__":
    main()
