"""Confusion matrices: counts of (true class, predicted class) written as CSV, and as a PNG when matplotlib is installed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_confusion(path: Path, matrix: np.ndarray, classes: list[str]) -> list[Path]:
    """Write path.csv (rows = true class, columns = predicted) and path.png if possible; return the files written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = path.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, matrix.tolist()):
            writer.writerow([name, *row])
    written = [csv_path]
    png = _plot(path.with_suffix(".png"), matrix, classes)
    return written + ([png] if png else [])


def _plot(path: Path, matrix: np.ndarray, classes: list[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None  # the CSV is the record; the picture is a convenience
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n, 1.0 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
