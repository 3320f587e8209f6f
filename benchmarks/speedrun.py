"""Time to quality: largo's text_speedrun recipe against its peers, in held-out bits per byte per second of training.

    python benchmarks/speedrun.py                                  # 360 s each, 2 rounds, every contender (hours on 2 cores)
    python benchmarks/speedrun.py --budget-s 15 --rounds 1 --only largo,plain --threads 1    # a smoke run
    python benchmarks/speedrun.py --ablate                         # text_speedrun with one technique removed per row
    python benchmarks/speedrun.py --lrs plain=1e-3,2e-3,4e-3 --lrs hf=5e-4,1e-3,2e-3

Method
- One task: the language model of the stdlib corpus. One yardstick: bits per byte of a fixed held-out text (the first
  64 KiB of largo's validation documents; race/heldout.py), so tokenizer and vocabulary are each contender's choice.
- Each run is a fresh process (race/NAME.py) with the same training budget: seconds of training, its first step
  (compilation) and its evaluations excluded and reported. It scores the held-out text --points times along the way.
- Round 1 sweeps each peer's learning rate (3 points) and keeps its best final figure's lr; later rounds run each
  contender once at that lr, the order rotated each round. Runs interleave, so outside load lands on all of them.
- A contender's figure is the median over rounds of its final bits per byte; the best peer's sets the target.
  The last line: largo's median time to reach it, as a share of that peer's time to its own final figure. largo runs
  twice per round: on the full budget (`largo`, the equal-time comparison) and on half of it (`largo_half`: its
  schedule decays by the half-way mark, so it tests the goal, the peer's final in half the time, directly); the
  faster of the two rows' medians is the recipe's time.
Writes speedrun.json (every run, every point), speedrun.md (the table) and speedrun.png (bpb against training
seconds, one line per contender) under --out; each run's output under --out/logs/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]  # this checkout's largo and contenders, whatever is installed

from benchmarks.race.tally import Run, best_lrs, headline, race_round, sweep_round  # noqa: E402

# contender -> (module under benchmarks/race, default learning rates: a 3-point sweep for each peer)
CONTENDERS: dict[str, tuple[str, list[float]]] = {
    "largo": ("largo_run", [8e-3]),  # the preset's own lr: the recipe is largo's entry, not swept
    "largo_half": ("largo_run", [8e-3]),  # the same recipe given half the budget: the goal's own test (see BUDGET_SHARE)
    "plain": ("plain", [1e-3, 2e-3, 4e-3]),
    "hf": ("hf_llama", [5e-4, 1e-3, 2e-3]),
    "nanogpt": ("nanogpt", [2e-3, 4e-3, 8e-3]),  # 4e-3 won at 180 s at the top of (1e-3, 2e-3, 4e-3): centred on it
}
# A contender trained on a share of --budget-s. largo's schedule (warmup-stable-decay) is fitted to its budget, so the
# point where a full-budget curve crosses a target is not the time the recipe needs to reach it: a run given half the
# time, decayed by its end, is the direct test of "the peer's final in half the peer's time".
BUDGET_SHARE: dict[str, float] = {"largo_half": 0.5}
# --ablate: text_speedrun with one technique taken out per row (dotted overrides of the preset), the old text_tiny as the base.
ABLATIONS: dict[str, tuple[float, str]] = {
    "largo": (8e-3, ""),
    "no_muon": (2e-3, "optim.name=adamw"),  # AdamW at the old text_tiny's lr
    "no_wsd": (8e-3, "optim.schedule=cosine,optim.min_lr_ratio=0.1"),
    "no_embed_lr": (8e-3, "optim.embed_lr_mult=1"),  # the embeddings at the AdamW groups' rate
    "no_zero_head": (8e-3, "model.tie_embeddings=true,model.zero_init_head=false"),
    "width_256": (8e-3, "model.dim=256,model.max_seq_len=256"),  # the old text_tiny's size: the budget-sized model removed
    # the demo's recipe before it took this one: AdamW, cosine to 0.1, width 256 / context 256, tied head
    "text_tiny_before": (2e-3, "optim.name=adamw,optim.schedule=cosine,optim.min_lr_ratio=0.1,optim.warmup_steps=30,"
                               "optim.embed_lr_mult=1,model.dim=256,model.max_seq_len=256,model.tie_embeddings=true,"
                               "model.zero_init_head=false"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=360.0, help="training seconds per run (compile and evaluation excluded)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default="", help="contenders, comma-separated: " + ",".join(CONTENDERS))
    p.add_argument("--lrs", action="append", default=[], help="NAME=lr,lr,lr: a contender's sweep (repeatable)")
    p.add_argument("--ablate", action="store_true", help="rows of text_speedrun with one technique removed, instead of peers")
    p.add_argument("--points", type=int, default=8, help="held-out scores per run")
    p.add_argument("--held-bytes", type=int, default=65_536, help="UTF-8 bytes of held-out text every run is scored on")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every run; 0 = torch's default")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--data", type=Path, default=REPO / "data" / "stdlib", help="the prepared corpus; prepared with text_speedrun's settings when missing")
    p.add_argument("--extra", action="append", default=[], help="NAME:key=value,...: a contender's own settings (repeatable; "
                   "largo (and largo_half): dotted overrides; plain, hf: model.KEY=VALUE, plain: compile=false)")
    p.add_argument("--nanogpt", default="", help="nanoGPT snapshot: a checkout or a git folder (default: the fetch tool's mirror)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def sweeps(a: argparse.Namespace) -> dict[str, list[float]]:
    """Contender -> the learning rates round 1 tries."""
    table = {n: list(lrs) for n, (_, lrs) in CONTENDERS.items()} if not a.ablate else {n: [lr] for n, (lr, _) in ABLATIONS.items()}
    for item in a.lrs:
        name, _, values = item.partition("=")
        for row in [n for n in table if n == name or family(n) == name]:  # largo=... also sets largo_half's
            table[row] = [float(v) for v in values.split(",")]
    names = [n for n in a.only.split(",") if n] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"--only {','.join(unknown)}: not a contender; choose from {', '.join(table)}")
    return {n: table[n] for n in names}


def family(name: str) -> str:
    """The contender a row belongs to: largo_half is largo's recipe on a shorter budget."""
    return "largo" if name.startswith("largo") else name


def command(a: argparse.Namespace, name: str, lr: float, result: Path, precision: str) -> list[str]:
    """The contender's process: python -m benchmarks.race.MODULE with the race's settings (and its share of the budget)."""
    module, more = ("largo_run", ABLATIONS[name][1]) if a.ablate else (CONTENDERS[name][0], "")
    if name == "nanogpt" and a.nanogpt:
        more = f"repo={a.nanogpt}"
    more = ",".join(filter(None, [more, *(e.partition(":")[2] for e in a.extra if e.partition(":")[0] in (name, family(name), "all"))]))
    budget = a.budget_s * (1.0 if a.ablate else BUDGET_SHARE.get(name, 1.0))
    return [sys.executable, "-m", f"benchmarks.race.{module}", "--budget-s", str(budget), "--lr", repr(lr), "--data", str(a.data),
            "--out", str(result), "--points", str(a.points), "--held-bytes", str(a.held_bytes), "--precision", precision, "--threads", str(a.threads), "--extra", more]


def child_env(a: argparse.Namespace, cache: Path) -> dict[str, str]:
    """Every run's environment: this checkout on the path, a race-private largo cache (plan timings taken under this
    race's conditions, not someone's earlier ones), threads left to torch unless asked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "LARGO_CACHE": str(cache)}
    env.pop("OMP_NUM_THREADS", None)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    return env


def run_one(a: argparse.Namespace, run: Run, env: dict[str, str], precision: str) -> dict[str, Any]:
    """One contender at one lr in one round, in a fresh process; its JSON plus round, wall time and load."""
    rnd, name, lr = run
    stem = f"{a.out}/logs/speedrun_r{rnd}_{name}_lr{lr:g}"  # no with_suffix: the lr's own dot would be taken for one
    result, log_file = Path(stem + ".json"), Path(stem + ".log")
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        rc = subprocess.run(command(a, name, lr, result, precision), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    meta = {"contender": name, "round": rnd, "lr": lr, "wall_s": round(time.perf_counter() - t0, 1), "load": os.getloadavg()[0]}
    if rc != 0 or not result.exists():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        print(f"  r{rnd} {name} lr {lr:g}: FAILED (exit {rc}): {tail[0][:200]}", flush=True)
        return {**meta, "final_bpb": math.nan, "points": [], "error": tail[0][:300]}
    record = {**json.loads(result.read_text()), **meta}
    print(f"  r{rnd} {name} lr {lr:g}: {record['final_bpb']:.4f} bits/byte after {record['train_s']:.0f} s "
          f"({record['steps']} steps, compile {record['compile_s']:.0f} s, setup {record['setup_s']:.0f} s, load {meta['load']:.1f})", flush=True)
    return record


def rows_of(results: list[dict[str, Any]], chosen: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per contender, the runs at its chosen lr: their curves, finals and the median figures."""
    rows = {}
    for name, lr in chosen.items():
        runs = [r for r in results if r["contender"] == name and r["lr"] == lr and r["points"]]
        finals = [r["final_bpb"] for r in runs]
        rows[name] = {"lr": lr, "finals": finals, "final_bpb": statistics.median(finals) if finals else math.nan,
                      "curves": [r["points"] for r in runs], "steps": [r["steps"] for r in runs],
                      "compile_s": [r["compile_s"] for r in runs], "params": runs[0]["params"] if runs else 0,
                      "sweep": {r["lr"]: r["final_bpb"] for r in results if r["contender"] == name and r["round"] == 1}}
    return rows


def table(rows: dict[str, dict[str, Any]], reference: str) -> str:
    """The markdown table: one row per contender, its sweep, rounds, median final and steps."""
    ref = rows.get(reference, {}).get("final_bpb", math.nan)
    out = ["| contender | sweep: lr -> final bpb | chosen lr | final bpb per round | median bpb | vs " + reference
           + " | steps | compile s | params |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        sweep = ", ".join(f"{lr:g}: {v:.4f}" for lr, v in r["sweep"].items())
        out.append(f"| {name} | {sweep} | {r['lr']:g} | {' / '.join(f'{v:.4f}' for v in r['finals'])} | {r['final_bpb']:.4f} | "
                   f"{r['final_bpb'] - ref:+.4f} | {' / '.join(map(str, r['steps']))} | "
                   f"{' / '.join(f'{c:.0f}' for c in r['compile_s'])} | {r['params']:,} |")
    return "\n".join(out)


def picture(rows: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """bits per byte against training seconds, one colour per contender, one line per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(rows.items()):
        for k, curve in enumerate(r["curves"]):
            ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", ms=3, color=f"C{i}", alpha=1.0 if k == 0 else 0.5,
                    label=f"{name} (lr {r['lr']:g})" if k == 0 else None)
    ax.set_xlabel("training seconds (compile and evaluation excluded)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def choose_precision(asked: str) -> str:
    """The asked precision, or largo's measured choice for this CPU at text_speedrun's MLP matmul."""
    if asked != "auto":
        return asked
    import torch

    from largo.config import load_config
    from largo.precision import choose

    m = load_config("text_speedrun").model
    return choose("auto", torch.device("cpu"), (16 * m.max_seq_len, m.dim, m.hidden), log=print).precision


def prepare(data: Path, env: dict[str, str]) -> None:
    """The corpus, tokenized once by `largo prepare` with text_speedrun's settings; a folder already prepared is used as it is."""
    if (data / "manifest.json").is_file():
        return
    proc = subprocess.run([sys.executable, "-m", "largo.cli", "prepare", "text_speedrun", "--data.dir", str(data)], cwd=REPO, env=env,
                          text=True, capture_output=True)
    if proc.returncode:
        raise SystemExit(f"largo prepare failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def race(a: argparse.Namespace, lrs: dict[str, list[float]], env: dict[str, str], precision: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Round 1 (the sweeps), then the later rounds at each contender's best lr; every run's record and the chosen lrs."""
    prepare(a.data, env)
    results = [run_one(a, run, env, precision) for run in sweep_round(lrs)]
    chosen = best_lrs(results)
    for rnd in range(2, a.rounds + 1):
        results += [run_one(a, run, env, precision) for run in race_round(chosen, rnd)]
    return results, chosen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    lrs = sweeps(a)
    (a.out / "logs").mkdir(parents=True, exist_ok=True)
    precision = choose_precision(a.precision)
    print(f"speedrun: {', '.join(lrs)} | {a.budget_s:g} s each | {a.rounds} round(s) | {precision} | threads {a.threads or 'default'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="speedrun-cache-") as cache:
        results, chosen = race(a, lrs, child_env(a, Path(cache)), precision)
    rows = rows_of(results, chosen)
    stem = "speedrun_ablation" if a.ablate else "speedrun"
    md = table(rows, "largo")
    line, figures = headline(rows) if not a.ablate else (f"ablation: final bits/byte, {a.budget_s:g} s each, vs the full recipe", {})
    print(md)
    report = {"budget_s": a.budget_s, "rounds": a.rounds, "precision": precision, "threads": a.threads, "ablate": a.ablate,
              "rows": rows, "runs": results, "headline": line, **figures}
    (a.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (a.out / f"{stem}.md").write_text(md + "\n\n" + line + "\n")
    picture(rows, a.out / f"{stem}.png", f"{a.budget_s:g} s of training each, {a.rounds} round(s), {precision}")
    print(line, flush=True)
    return report


if __name__ == "__main__":
    main()
