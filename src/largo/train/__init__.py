"""Training: the explicit loop, optimizers and schedules, evaluation."""
