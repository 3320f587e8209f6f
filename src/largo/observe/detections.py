"""detections.png: a grid of test scenes with the true boxes (green, dashed) and the predicted ones (red, labelled)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def draw_detections(path: Path, images: np.ndarray, truth: list[tuple[np.ndarray, np.ndarray]],
                    predicted: list[tuple[np.ndarray, np.ndarray, np.ndarray]], classes: list[str], *,
                    min_score: float = 0.3) -> Path | None:
    """Write the grid: images (n, c, h, w) uint8, truth [(boxes, labels)], predicted [(boxes, labels, scores)]; None without
    matplotlib. Predictions below min_score are left out of the picture (not out of the metrics)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        return None
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, (t_boxes, t_labels), (p_boxes, p_labels, p_scores) in zip(axes.flat, images, truth, predicted):
        ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        for (x0, y0, x1, y1), c in zip(t_boxes, t_labels):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.0, ls="--"))
        for (x0, y0, x1, y1), c, s in zip(p_boxes, p_labels, p_scores):
            if s < min_score:
                continue
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.0))
            ax.text(x0, y0 - 1, f"{classes[int(c)]} {s:.2f}", color="white", fontsize=5.5, va="bottom",
                    bbox={"facecolor": "red", "alpha": 0.7, "pad": 0.5, "lw": 0})
    fig.suptitle(f"test scenes: true boxes (green, dashed), predicted (red, score >= {min_score})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
