"""Lightning's `Trainer` around the same GPT and loss as plain_compiled: precision "bf16-mixed", torch.compile on.

The LightningModule holds plain_eager's LossModel (largo's GPT + cross-entropy) compiled in place,
so the compiled graph is the one plain_compiled runs and the difference is the trainer around it.
Batches come from a DataLoader over the shared windows in order; each optimizer step is timed by a
callback from on_train_batch_start to on_train_batch_end (forward, backward, clipping, AdamW). Clipping
is done in the module's configure_gradient_clipping hook: Lightning's built-in clipping refuses fused AdamW.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from benchmarks.contenders.common import (GRAD_CLIP, SHAPES, TokenWindows, WindowDataset, adamw, count_params, parse_args,
                                          peak_rss_bytes, write_result, write_skipped)

NAME = "lightning_trainer"


def run(args: argparse.Namespace) -> None:
    """Train with Lightning for args.steps optimizer steps and write the result."""
    try:
        import lightning as L
    except ImportError as e:
        write_skipped(args, NAME, f"{e.name} is not installed (pip install -e '.[bench]')")
        return
    from benchmarks.contenders.plain_eager import LossModel
    from largo.models.gpt import GPT

    class GPTModule(L.LightningModule):
        """The GPT and its loss; every step's loss kept (detached) for the result."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(args.seed)
            gpt = GPT(SHAPES[args.shape].model_config())
            gpt.init_weights()
            self.net = LossModel(gpt)
            self.net.compile()  # in place: the module (and its parameter names) stay as they are
            self.losses: list[torch.Tensor] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            loss = self.net(*batch)
            self.losses.append(loss.detach())
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return adamw(self.net)

        def configure_gradient_clipping(self, *_args, **_kwargs) -> None:
            # Lightning's own clipping refuses fused optimizers (an fp16 grad scaler would unscale inside them);
            # bf16 has no scaler, so clipping here, before the step, is what every other contender does.
            torch.nn.utils.clip_grad_norm_(self.parameters(), GRAD_CLIP)

    class StepTimer(L.Callback):
        """Wall time of each optimizer step, from on_train_batch_start to on_train_batch_end."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_train_batch_start(self, *_args, **_kwargs) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *_args, **_kwargs) -> None:
            self.times.append(time.perf_counter() - self.t0)

    shape = SHAPES[args.shape]
    data = WindowDataset(TokenWindows(args.data, shape.context, args.seed), args.steps * shape.batch)
    loader = torch.utils.data.DataLoader(data, batch_size=shape.batch, shuffle=False, num_workers=0)
    logging.getLogger("lightning").setLevel(logging.ERROR)  # banner lines about GPUs/TPUs this CPU run has no use for
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # in-memory windows need no workers
    module, timer = GPTModule(), StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed" if args.precision == "bf16" else "32-true", max_steps=args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, loader)
    write_result(args, NAME, params=count_params(module), step_times_s=timer.times, losses=[float(v) for v in module.losses],
                 peak_rss=peak_rss_bytes(), precision=args.precision, compiled=True, lightning=L.__version__)


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]))
