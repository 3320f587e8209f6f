"""What the loop does when things go wrong: preemption signals, non-finite steps, loss spikes.

One `StepGuard` per run. Each step, after backward and clipping, `guard.non_finite(...)` returns a
device flag (1.0 when the loss or the gradient norm is not finite on any rank) without reading it
back: fused AdamW skips its own update on that flag and the schedule does not advance, so a skipped
step changes nothing but the data position (the bad batch is not retried). The host reads the flags
of every step since the last read in one go, at the loop's sync points (logging, evaluation,
checkpoint, preemption), or after every step for optimizers that cannot skip by themselves
(`settle`). There it logs each skipped step and each loss spike in step order and, after
`faults.max_bad_steps` consecutive skipped steps, stops the run with `DivergedError` (no checkpoint
is written at a skipped step, so the last good one is what remains).

SIGTERM or SIGUSR1 sets a flag; one process stops after the step in flight, several processes vote
at the next sync point (an all-reduce every rank reaches at the same step). The loop writes a
checkpoint and ends, and the CLI exits with PREEMPTED_EXIT so a job script can requeue it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from largo.distributed.env import DistEnv
from largo.errors import DivergedError

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped by a signal after writing a checkpoint; rerun with --resume auto
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what SLURM (--signal) and spot-instance reclaim send
INJECT_NAN_ENV = "LARGO_INJECT_NAN_AT_STEP"  # test hook: comma-separated steps whose loss and grads become NaN
_SPIKE_WARMUP_STEPS = 10  # good steps averaged before spikes are judged (the early loss falls fast)
_SPIKE_EMA = 0.9  # weight of the past in the running loss average


def _injected_steps() -> set[int]:
    text = os.environ.get(INJECT_NAN_ENV, "")
    return {int(s) for s in text.split(",") if s.strip()}


class StepGuard:
    """Signal flag, non-finite detection and loss-spike log for one run of the loop."""

    def __init__(self, *, max_bad_steps: int, spike_factor: float, env: DistEnv, say: Callable[[str], None],
                 record: Callable[[dict[str, Any]], None] | None = None):
        self.max_bad_steps, self.spike_factor, self.env = max_bad_steps, spike_factor, env
        self.say, self.record = say, record or (lambda _r: None)
        self.signal_name: str | None = None  # set by the handler; read once per step
        self.bad_streak = 0  # consecutive skipped steps
        self.skipped: list[int] = []  # every skipped step of this process, for the summary
        self._avg: float | None = None  # running average of good losses, for spikes
        self._good = 0
        self._inject = _injected_steps()
        self._previous: dict[int, Any] = {}
        self._window: list[tuple[int, torch.Tensor]] = []  # (step, [loss, grad norm, skipped]) not yet read back

    # -- signals -------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only set a flag: the step in flight finishes, and the decision is taken collectively.
        self.signal_name = signal.Signals(signum).name

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in a notebook worker)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def steps(self, start: int, total: int) -> Iterator[int]:
        """range(start, total) with the stop signals caught while it is being iterated.

        The handlers go back to what they were when the loop ends, breaks or raises.
        """
        self._install()
        try:
            yield from range(start, total)
        finally:
            self._restore()

    # -- per-step flags, read back in batches ---------------------------------------------
    def non_finite(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, params: Iterator[torch.nn.Parameter]) -> torch.Tensor:
        """1.0 if step `step` (1-based) has a non-finite loss or gradient norm on any rank, else 0.0; a device tensor."""
        if step in self._inject:
            loss, grad_norm = loss * float("nan"), grad_norm * float("nan")
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(float("nan"))  # a real poisoned update, so a missed skip would show in the weights
        loss, grad_norm = loss.detach().float().reshape(()), grad_norm.detach().float().reshape(()).to(loss.device)
        bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        if self.env.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # a collective, not a host read: every rank skips alike
        self._window.append((step, torch.stack([loss, grad_norm, bad])))
        return bad

    def settle(self) -> bool:
        """Read every step's flags since the last call (one host sync), log skips and spikes in order; True if the last step was skipped."""
        if not self._window:
            return False
        steps = [s for s, _ in self._window]
        values = torch.stack([v for _, v in self._window]).tolist()
        self._window.clear()
        for step, (loss_value, norm_value, bad) in zip(steps, values):
            if bad:
                self._skip(step, loss_value, norm_value)
            else:
                self.bad_streak = 0
                self._watch_spike(step, loss_value)
        return bool(values[-1][2])

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived: this process's flag, or on several ranks a vote all of them take at the same step."""
        if self.env.world == 1:
            return self.signal_name is not None
        votes = torch.tensor([float(self.signal_name is not None)], device=self.env.device)
        dist.all_reduce(votes)
        if votes.item() > 0 and self.signal_name is None:
            self.signal_name = "a signal on another rank"
        return votes.item() > 0

    def _skip(self, step: int, loss_value: float, norm_value: float) -> None:
        self.bad_streak += 1
        self.skipped.append(step)
        self.say(f"step {step}: non-finite loss ({loss_value}) or gradient norm ({norm_value}); update skipped "
                 f"({self.bad_streak} in a row, faults.max_bad_steps = {self.max_bad_steps})")
        self.record({"kind": "fault", "step": step, "fault": "non_finite", "loss": str(loss_value), "grad_norm": str(norm_value)})
        if self.bad_streak >= self.max_bad_steps:
            raise DivergedError(f"step {step}: {self.bad_streak} consecutive steps with a non-finite loss or gradient norm "
                                f"(faults.max_bad_steps = {self.max_bad_steps}); no checkpoint was written after the last good step; "
                                f"lower optim.lr, raise optim.warmup_steps or check the data, then --resume auto")

    def _watch_spike(self, step: int, loss_value: float) -> None:
        """Log a loss above spike_factor times the running average of earlier good losses."""
        if self.spike_factor and self._avg is not None and self._good >= _SPIKE_WARMUP_STEPS and loss_value > self.spike_factor * self._avg:
            self.say(f"step {step}: loss spike {loss_value:.4f}, {loss_value / self._avg:.1f}x the recent average "
                     f"{self._avg:.4f} (faults.spike_factor = {self.spike_factor})")
            self.record({"kind": "fault", "step": step, "fault": "loss_spike", "loss": loss_value, "average": self._avg})
            return  # a spike does not move the average it is judged against
        self._avg = loss_value if self._avg is None else _SPIKE_EMA * self._avg + (1 - _SPIKE_EMA) * loss_value
        self._good += 1
