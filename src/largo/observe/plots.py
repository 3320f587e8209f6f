"""Training curves from metrics.jsonl as one PNG: loss (train and held-out), learning rate, throughput, grad norm."""

from __future__ import annotations

from pathlib import Path

from largo.observe.metrics import read_metrics
from largo.rundir import RunDir

PLOT = "curves.png"


def plot_run(run_dir: Path) -> Path | None:
    """Write run_dir/curves.png from its metrics; None when matplotlib is missing or nothing was logged."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    numeric = lambda r: isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))  # noqa: E731
    train = [r for r in read_metrics(RunDir(run_dir).metrics, "train") if numeric(r)]
    evals = [r for r in read_metrics(RunDir(run_dir).metrics, "eval") if numeric(r)]
    if not train:
        return None
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(steps, [r["loss"] for r in train], label="train", lw=1)
    if evals:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="held-out", lw=1.5)
    ax.set(title="loss (nats per target)", xlabel="step")
    ax.legend()
    panels = ((axes[0, 1], "lr", "learning rate"), (axes[1, 0], "tokens_per_s", "throughput (per s)"), (axes[1, 1], "grad_norm", "gradient norm (before clipping)"))
    for ax, key, title in panels:
        ax.plot(steps, [r.get(key, float("nan")) for r in train], lw=1)
        ax.set(title=title, xlabel="step")
    fig.suptitle(run_dir.name)
    out = run_dir / PLOT
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
