"""What every contender shares: the model shapes, the token stream, the optimizer settings and the result record.

Each contender is a module run as `python -m benchmarks.contenders.NAME --shape A --steps N --warmup W
--data DIR --json OUT`; it trains the shape for N optimizer steps and writes one JSON result. The
batches are the ones largo's own loader reads for (seed, step): windows of context + 1 tokens at
multiples of the context, in a per-epoch permutation drawn from numpy's generator seeded with
[seed, epoch]. So every contender sees the same tokens in the same order, and the same data cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.models import count_params as planned_params
from largo.models.gpt import GPTConfig

VOCAB = 8192
SEED = 1337
# One AdamW for everybody; weight decay on >= 2-D weights only (what largo, HF and most recipes do).
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.95), 1e-8, 0.1, 1.0
LAST_LOSSES = 5  # final_loss is the mean train loss of the last this-many steps (one batch's loss is noisy)


@dataclass(frozen=True)
class Shape:
    """A benchmark model: a Llama-style decoder with tied embeddings, no GQA, and its batch."""

    dim: int
    n_layers: int
    n_heads: int
    mlp_hidden: int
    context: int
    batch: int

    def model_config(self, attention: str = "sdpa") -> GPTConfig:
        """The shape as largo's GPTConfig (exact parameter count and FLOPs per token).

        Peers get attention "sdpa": F.scaled_dot_product_attention, what a hand-written model calls; largo's
        own choice of attention kernel ("auto") is part of what is measured, so it is not lent to them.
        """
        return GPTConfig(vocab_size=VOCAB, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=0,
                         mlp_hidden=self.mlp_hidden, max_seq_len=self.context, tie_embeddings=True, attention=attention)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.context


SHAPES = {
    "A": Shape(dim=256, n_layers=4, n_heads=4, mlp_hidden=683, context=128, batch=16),  # 5,246,208 parameters
    "B": Shape(dim=512, n_layers=8, n_heads=8, mlp_hidden=1365, context=512, batch=8),  # 29,364,736 parameters
}


def data_settings() -> dict[str, Any]:
    """The [data] keys of the prepared corpus; largo re-prepares if its config differs, so both use this."""
    return {"source": "stdlib", "vocab_size": VOCAB}


class TokenWindows:
    """The prepared training split and the (seed, step) -> batch mapping of largo's loader, in numpy."""

    def __init__(self, data_dir: str | Path, context: int, seed: int):
        data_dir = Path(data_dir)
        manifest = json.loads((data_dir / "manifest.json").read_text())
        dtype = np.dtype(manifest["dtype"])
        # The benchmark corpus is a few MB: one array in memory costs less than memmap reads across shards.
        self.tokens = np.concatenate([np.fromfile(data_dir / s["file"], dtype=dtype)
                                      for s in manifest["splits"]["train"]["shards"]]).astype(np.int64)
        self.context, self.seed = context, seed
        self.num_windows = (len(self.tokens) - 1) // context
        self._perm: tuple[int, np.ndarray] | None = None

    def window(self, sample: int) -> np.ndarray:
        """context + 1 tokens of the sample-th example drawn."""
        epoch, k = divmod(sample, self.num_windows)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_windows))
        start = int(self._perm[1][k]) * self.context
        return self.tokens[start : start + self.context + 1]

    def batch(self, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets of optimizer step `step`, each (batch, context) int64."""
        rows = torch.from_numpy(np.stack([self.window(step * batch + i) for i in range(batch)]))
        return rows[:, :-1], rows[:, 1:]


class WindowDataset(torch.utils.data.Dataset):
    """Sample i -> (inputs, targets) of one window; read in order with batch size B it gives step k's batch."""

    def __init__(self, windows: TokenWindows, num_samples: int):
        self.windows, self.num_samples = windows, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.from_numpy(self.windows.window(i).copy())
        return row[:-1], row[1:]


def decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices and embeddings, none on norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def adamw(model: nn.Module) -> torch.optim.AdamW:
    """The benchmark's optimizer: fused AdamW with the shared settings, constant learning rate."""
    return torch.optim.AdamW(decay_groups(model), lr=LR, betas=BETAS, eps=EPS, fused=True)


def count_params(model: nn.Module) -> int:
    """Trainable parameters, a tied weight counted once (named_parameters deduplicates shared tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parse_args(description: str, extra: list[tuple[str, dict[str, Any]]] = ()) -> argparse.Namespace:
    """The command line every contender takes, plus its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="A")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps, warm-up included")
    parser.add_argument("--warmup", type=int, default=10, help="first steps the harness leaves out (recorded anyway)")
    parser.add_argument("--data", required=True, help="prepared data folder (largo prepare, vocabulary 8192)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", required=True, help="where to write the result")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16 autocast (fp32 weights) or plain fp32; the harness passes the one it chose for this CPU")
    for flag, options in extra:
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    if args.steps < max(args.warmup + 1, LAST_LOSSES):
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) and be >= {LAST_LOSSES}")
    return args


def peak_rss_bytes(*, children: bool = False) -> int:
    """Peak resident memory of this process (or of its largest waited-for child), in bytes (Linux: KiB units)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024


def write_result(args: argparse.Namespace, contender: str, *, params: int, step_times_s: list[float],
                 losses: list[float], peak_rss: int, **extra: Any) -> None:
    """Write (and print) the contender's one JSON result, after checking its parameter count."""
    shape = SHAPES[args.shape]
    expected = planned_params(shape.model_config()).total
    result = {
        "contender": contender, "shape": args.shape, "params": params, "params_expected": expected,
        "params_match": params == expected, "steps": args.steps, "warmup": args.warmup,
        "tokens_per_step": shape.tokens_per_step, "step_times_s": step_times_s, "losses": losses,
        "final_loss": sum(losses[-LAST_LOSSES:]) / LAST_LOSSES, "peak_rss_bytes": peak_rss,
        "torch": torch.__version__, "threads": torch.get_num_threads(), **extra,
    }
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_times_s", "losses")}))
    if params != expected:  # the result is still written, so the harness can show the mismatch
        print(f"{contender}: {params:,} parameters, expected {expected:,}", file=sys.stderr)


def write_skipped(args: argparse.Namespace, contender: str, reason: str) -> None:
    """Record that this contender cannot run here (a missing optional package) and why."""
    Path(args.json).write_text(json.dumps({"contender": contender, "shape": args.shape, "skipped": reason}))
    print(f"{contender}: skipped: {reason}")
