"""A time-budgeted run's step count, re-fitted during the run to the step time it measures.

`train.time_budget_s` first sets train.steps from the plan's timed steps (train.run.fit_time_budget). A host whose
speed then drifts (a neighbour's load, thermal limits, a shared CPU) would end the run far from its budget: on a
shared 2-core machine a planned 0.49 s step ran at 0.61 s, and a 90 s budget took 110 s. So while the schedule's rates
do not yet depend on the total (warmup-stable-decay before its decay starts, a constant rate), the loop re-fits the
total at each logging step from the seconds already trained and the recent step time: every rate a step used stays
what it was, and the decay starts where the remaining time says it should.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from largo.train.optim import Schedule

RECENT = 8  # logging windows whose median step time predicts the next steps (one slow window does not move it)


@dataclass
class StepBudget:
    """Re-fits a fresh time-budgeted run's total steps; `agree` makes the ranks take rank 0's figure, `on_refit` records it."""

    budget_s: float
    cap: int  # the configured train.steps: the most a run may take
    agree: Callable[[int], int] = lambda n: n
    on_refit: Callable[[int], None] = lambda _n: None
    windows: list[tuple[int, float]] = field(default_factory=list)  # (steps, seconds per step) of each logging window

    def refit(self, done: int, total: int, window_steps: int, step_s: float, schedule: Schedule) -> int:
        """The run's total after a logging window of window_steps steps at step_s seconds each (the first compiles and
        counts at the typical step time): unchanged once the schedule's rates depend on it."""
        self.windows.append((window_steps, step_s))
        if len(self.windows) < 2 or done >= schedule.fixed_until(total):
            return total
        recent = statistics.median(s for _, s in self.windows[1:][-RECENT:])
        spent = self.windows[0][0] * recent + sum(n * s for n, s in self.windows[1:])
        fitted = done + max(1, int((self.budget_s - spent) / recent))
        while fitted < self.cap and schedule.fixed_until(fitted) < done:  # never re-fit into a decay already due
            fitted += 1
        fitted = self.agree(min(fitted, self.cap))
        if fitted != total:
            schedule.refit(fitted)
            self.on_refit(fitted)
        return fitted
