"""GPT-2-124M on one GPU in bf16, compiled: tokens/s and MFU against the device's published bf16 peak, then a sync count.

Usage: python benchmarks/gpu_gpt2.py [--steps 200] [--micro-batch 32] [--out DIR]     (about 5 minutes on an H100/H200)
       python benchmarks/gpu_gpt2.py --recipe speedrun                              (text_speedrun's recipe on GPT-2-124M)
       python benchmarks/gpu_gpt2.py --smoke [--recipe speedrun]                    (a tiny model on the CPU: checks the script)

1. Throughput: the gpt2_124m preset (d=768, 12 layers, context 1024, tied 50,257 vocabulary, fused AdamW,
   flash SDPA, whole-model compile), global batch 64 x 1024 tokens in micro-batches, on the stdlib corpus
   (prepared here: the tokenizer is trained on this machine). Tokens/s and MFU are the median of the
   logging windows after the first (compiling and warm-up excluded); MFU counts 6N + attention FLOPs per
   token against the DeviceSpec peak (largo/hardware.py). Goal: >= 50% MFU (llm.c reports 50-60% on H100).
2. Host syncs: two short runs (10 and 20 steps, logging only at the end) under
   torch.cuda.set_sync_debug_mode("warn"); equal warning counts mean the extra steps synchronised 0 times.

--recipe speedrun trains GPT-2-124M the way the text_speedrun preset trains the demo model (benchmarks/speedrun.py,
issue 25): Muon on the blocks' matrices (bf16 Newton-Schulz on a GPU), warmup-stable-decay, an untied head that
starts at zero. Muon cannot skip a bad step by itself, so the host reads each step's finite flag: expect one host
sync per step in part 2 with this recipe (AdamW's run keeps the flag on the device).

Prints one line per figure and writes summary.json to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import warnings
from pathlib import Path

import torch

from largo.config import load_config
from largo.observe.metrics import read_metrics
from largo.train.run import train

# --smoke: the same code path with a tiny model on a 300 KB slice of the corpus, on the CPU, in seconds.
SMOKE = {"model.dim": "64", "model.n_layers": "2", "model.n_heads": "2", "model.max_seq_len": "64", "model.mlp_hidden": "0",
         "data.vocab_size": "512", "data.max_bytes": "300000", "data.val_fraction": "0.2", "train.precision": "fp32",
         "train.compile": "false", "train.device": "cpu", "train.peak_tflops": "1.0"}


# text_speedrun's techniques at GPT-2 scale; the lr is the preset's 4x AdamW ratio (Muon 8e-3 vs AdamW 2e-3 on the
# demo model) applied to gpt2_124m's 6e-4, unswept at this size.
RECIPES: dict[str, dict[str, str]] = {
    "gpt2": {},
    "speedrun": {"optim.name": "muon", "optim.lr": "2.4e-3", "optim.schedule": "wsd", "optim.decay_fraction": "0.5",
                 "optim.min_lr_ratio": "0.0", "optim.embed_lr_mult": "8", "model.tie_embeddings": "false",
                 "model.zero_init_head": "true"},
}


def short_run(overrides: dict[str, str], out_dir: str) -> tuple[dict, list[dict]]:
    """Train the gpt2_124m preset with overrides; returns the summary and the train records."""
    base = {"run.out_dir": out_dir, "eval.every": "0", "eval.max_batches": "2", "checkpoint.every": "0"}
    summary = train(load_config("gpt2_124m", {**base, **overrides}), overwrite=True, log=print)
    records = [r for r in read_metrics(Path(summary["run_dir"]) / "metrics.jsonl") if r.get("kind") == "train"]
    return summary, records


def throughput(steps: int, micro_batch: int, smoke: bool, out_dir: str, data_dir: str, recipe: dict[str, str]) -> dict:
    """Steady-state tokens/s and MFU: the median of the logging windows after the first."""
    log_every = max(steps // 10, 1)
    overrides = {"train.steps": str(steps), "train.global_batch": str(2 * micro_batch if smoke else 64),
                 "train.micro_batch": str(micro_batch), "train.log_every": str(log_every), "run.name": "throughput"}
    if data_dir:
        overrides["data.dir"] = data_dir
    _, records = short_run({**overrides, **recipe, **(SMOKE if smoke else {})}, out_dir)
    steady = records[1:] or records
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady), "windows": len(steady),
            "step_time_ms": statistics.median(r["step_time_ms"] for r in steady)}


def sync_warnings(steps: int, out_dir: str, data_dir: str, recipe: dict[str, str]) -> int:
    """CUDA synchronisations warned about in a run of `steps` steps that logs only at its end (a smaller model)."""
    overrides = {"train.steps": str(steps), "train.log_every": str(steps), "train.global_batch": "8", "train.micro_batch": "8",
                 "model.n_layers": "2", "train.compile": "false", "run.name": f"sync-{steps}", **({"data.dir": data_dir} if data_dir else {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            short_run({**overrides, **recipe}, out_dir)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to check the script without a GPU")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="gpt2", help="gpt2: the gpt2_124m preset; speedrun: text_speedrun's recipe")
    p.add_argument("--data-dir", default="", help="prepared data (default: the config's data.dir, prepared on first use)")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_gpt2: no CUDA device; run with --smoke to check the script on the CPU")
    out = Path(a.out or tempfile.mkdtemp(prefix="gpu_gpt2-"))
    steps = 6 if a.smoke else a.steps
    recipe = RECIPES[a.recipe]
    result = {"device": torch.cuda.get_device_name() if not a.smoke else "cpu (smoke)", "torch": torch.__version__, "recipe": a.recipe,
              **throughput(steps, 4 if a.smoke else a.micro_batch, a.smoke, str(out), a.data_dir, recipe)}
    print(f"{result['device']}: {result['tokens_per_s']:,.0f} tok/s | MFU {100 * result['mfu']:.1f}% "
          f"| {result['step_time_ms']:.0f} ms/step (median of {result['windows']} windows)")
    if not a.smoke:
        counts = {n: sync_warnings(n, str(out), a.data_dir, recipe) for n in (10, 20)}
        result["sync_warnings"] = counts
        print(f"host syncs: {counts[10]} in a 10-step run, {counts[20]} in a 20-step run "
              f"-> {(counts[20] - counts[10]) / 10:g} per non-logging step")
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return result


if __name__ == "__main__":
    main()
