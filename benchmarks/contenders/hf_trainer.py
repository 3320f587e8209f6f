"""Hugging Face `transformers.Trainer` training `LlamaForCausalLM` of the shape, bf16 (or fp32) on CPU, torch.compile on.

The Llama config is the shape exactly (multi-head attention, SwiGLU width, tied embeddings, no
biases, RMSNorm eps 1e-5, rope theta 10000), so its parameter count equals largo's. Batches are the
shared windows, read in order (a sequential sampler) with `shift_labels` given, so the model scores
the same 128 (or 512) next tokens per row as every other contender instead of shifting by one.
Each optimizer step is timed by a callback from on_step_begin to on_step_end (forward, backward,
clipping, AdamW, scheduler); the per-step losses come from the log history (logging_steps=1).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.contenders.common import (BETAS, EPS, GRAD_CLIP, LR, SHAPES, VOCAB, WEIGHT_DECAY, TokenWindows,
                                          WindowDataset, count_params, parse_args, peak_rss_bytes, write_result,
                                          write_skipped)

NAME = "hf_trainer"


class LMWindows(torch.utils.data.Dataset):
    """The shared windows as the dict examples a causal LM takes; labels are already the next tokens."""

    def __init__(self, windows: WindowDataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.windows[i]
        return {"input_ids": x, "labels": y, "shift_labels": y}


def llama(shape_name: str, seed: int):
    """LlamaForCausalLM with the benchmark shape, randomly initialised from the seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[shape_name]
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=s.dim, intermediate_size=s.mlp_hidden, num_hidden_layers=s.n_layers,
                         num_attention_heads=s.n_heads, num_key_value_heads=s.n_heads, max_position_embeddings=s.context,
                         rms_norm_eps=1e-5, rope_theta=10000.0, rope_parameters=rope, attention_bias=False, mlp_bias=False,
                         tie_word_embeddings=True, use_cache=False, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def run(args: argparse.Namespace) -> None:
    """Train with Trainer for args.steps optimizer steps and write the result."""
    try:
        import accelerate  # noqa: F401  (Trainer needs it; say so here rather than deep inside Trainer)
        import transformers
        from transformers import Trainer, TrainerCallback, TrainingArguments
    except ImportError as e:
        write_skipped(args, NAME, f"{e.name} is not installed (pip install -e '.[bench]')")
        return

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step, from on_step_begin to on_step_end."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, *_args, **_kwargs) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs) -> None:
            self.times.append(time.perf_counter() - self.t0)

    class InOrderTrainer(Trainer):
        """Trainer reading the dataset in order, so step k gets the same windows as in every contender."""

        def _get_train_sampler(self, *_args, **_kwargs) -> torch.utils.data.Sampler:
            return torch.utils.data.SequentialSampler(self.train_dataset)

    shape = SHAPES[args.shape]
    model = llama(args.shape, args.seed)
    data = LMWindows(WindowDataset(TokenWindows(args.data, shape.context, args.seed), args.steps * shape.batch))
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=shape.batch, learning_rate=LR,
            adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS, weight_decay=WEIGHT_DECAY, max_grad_norm=GRAD_CLIP,
            lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused", bf16=args.precision == "bf16", use_cpu=True,
            torch_compile=True, dataloader_num_workers=0, logging_steps=1, save_strategy="no", eval_strategy="no",
            report_to=[], disable_tqdm=True, seed=args.seed, remove_unused_columns=False)
        trainer = InOrderTrainer(model=model, args=training, train_dataset=data, callbacks=[timer])
        trainer.train()
    losses = [float(r["loss"]) for r in trainer.state.log_history if "loss" in r]
    write_result(args, NAME, params=count_params(model), step_times_s=timer.times, losses=losses, peak_rss=peak_rss_bytes(),
                 precision=args.precision, compiled=True, transformers=transformers.__version__)


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]))
