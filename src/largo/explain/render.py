"""Drawing explanations: heatmaps over an image or a spectrogram (PNG), colour-coded tokens (HTML), the index page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

FIGURE_DPI = 100
# Colour code shared by every view: green = pushes the score up, red = pushes it down; opacity = |value| / the largest.
POSITIVE, NEGATIVE = (22, 163, 74), (220, 38, 38)
PAGE_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 72em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
.tokens { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; border: 1px solid #eee; padding: .5em; }
.tokens span { border-radius: 3px; padding: 1px 0; }
.small { color: #666; font-size: 90%; }
.heat td { font-family: ui-monospace, monospace; font-size: 80%; text-align: right; }
.heat th { font-family: ui-monospace, monospace; font-weight: normal; white-space: pre; }
</style>"""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    return plt


def _symmetric(values: np.ndarray) -> float:
    return float(np.abs(values).max()) or 1.0


def _display(image: np.ndarray) -> np.ndarray:
    """(c, h, w) -> (h, w) grey or (h, w, 3) RGB in [0, 1] (min-max scaled: inputs may be normalised)."""
    img = image.astype(np.float64)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _overlay(values: np.ndarray) -> np.ndarray:
    """(h, w) values -> (h, w, 4) RGBA: green (positive) or red (negative), opaque in proportion to sqrt(|value| / max)."""
    m = _symmetric(values)
    rgba = np.zeros((*values.shape, 4))
    rgba[..., :3] = np.where(values[..., None] >= 0, np.array(POSITIVE) / 255, np.array(NEGATIVE) / 255)
    rgba[..., 3] = np.sqrt(np.abs(values) / m)  # sqrt: the many middling values stay visible beside the few largest
    return rgba


def _diverging_bar(fig: Any, ax: Any, m: float, label: str) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    cmap = LinearSegmentedColormap.from_list("largo", [np.array(NEGATIVE) / 255, (1, 1, 1), np.array(POSITIVE) / 255])
    fig.colorbar(ScalarMappable(Normalize(-m, m), cmap), ax=ax, shrink=0.8, label=label)


def image_png(path: Path, image: np.ndarray, attributions: np.ndarray, rolled: np.ndarray | None, title: str, *,
              boxes: list[tuple[float, float, float, float]] = ()) -> Path:
    """Input | integrated gradients over it (green for, red against the target) | attention rollout over it; boxes
    (x0, y0, x1, y1 in pixels: a detection) outlined on every panel."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    panels = 3 if rolled is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6), dpi=FIGURE_DPI, constrained_layout=True)
    shown = _display(image)
    grey = shown if shown.ndim == 2 else shown.mean(-1)
    axes[0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
    axes[0].set_title("input")
    axes[1].imshow(grey, cmap="gray", alpha=0.5)
    axes[1].imshow(_overlay(attributions))
    axes[1].set_title("integrated gradients")
    _diverging_bar(fig, axes[1], _symmetric(attributions), "attribution (logit units)")
    if rolled is not None:
        axes[2].imshow(grey, cmap="gray")
        im = axes[2].imshow(rolled, cmap="inferno", alpha=0.6)
        axes[2].set_title("attention rollout")
        fig.colorbar(im, ax=axes[2], shrink=0.8, label="share of the pooled state")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for x0, y0, x1, y1 in boxes:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="deepskyblue", lw=1.2))
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def spectrogram_png(path: Path, features: np.ndarray, attributions: np.ndarray, rolled: np.ndarray | None, title: str, *,
                    seconds_per_column: float) -> Path:
    """Log-mel spectrogram | integrated gradients over it | both summed over bands against time (with the rollout)."""
    plt = _pyplot()
    bands, frames = features.shape
    extent = (0.0, frames * seconds_per_column, 0, bands)
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), dpi=FIGURE_DPI, constrained_layout=True, sharex=True)
    axes[0].imshow(features, origin="lower", aspect="auto", extent=extent, cmap="magma")
    axes[0].set(title="log-mel input", ylabel="mel band")
    axes[1].imshow(features, origin="lower", aspect="auto", extent=extent, cmap="gray", alpha=0.5)
    axes[1].imshow(_overlay(attributions), origin="lower", aspect="auto", extent=extent)
    axes[1].set(title="integrated gradients (green for, red against the target)", ylabel="mel band")
    _diverging_bar(fig, axes[1], _symmetric(attributions), "attribution")
    t = (np.arange(frames) + 0.5) * seconds_per_column
    profile = attributions.sum(0)
    axes[2].plot(t, profile, color="tab:green", lw=1.2, label="attribution summed over bands")
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set(xlabel="time (s)", ylabel="attribution")
    if rolled is not None:
        twin = axes[2].twinx()
        twin.plot(t, rolled, color="tab:purple", lw=1, ls="--", label="attention rollout")
        twin.set_ylabel("rollout share")
        twin.legend(loc="upper right", fontsize=8)
    axes[2].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def values_png(path: Path, attributions: np.ndarray, rolled: np.ndarray | None, title: str) -> Path:
    """Attribution per input position (and the rollout) as lines: the view for inputs without a picture."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3), dpi=FIGURE_DPI, constrained_layout=True)
    ax.bar(np.arange(len(attributions)), attributions, color=np.where(attributions >= 0, "tab:green", "tab:red"))
    ax.set(xlabel="input position", ylabel="attribution", title=title)
    if rolled is not None:
        twin = ax.twinx()
        twin.plot(np.arange(len(rolled)), rolled, color="tab:purple", lw=1, label="attention rollout")
        twin.set_ylabel("rollout share")
    fig.savefig(path)
    plt.close(fig)
    return path


def colour(value: float, scale: float) -> str:
    """CSS background for a value: green (positive) or red (negative), opacity |value| / scale."""
    r, g, b = POSITIVE if value >= 0 else NEGATIVE
    return f"rgba({r},{g},{b},{min(1.0, abs(value) / (scale or 1.0)):.3f})"


def token_spans(pieces: list[str], values: np.ndarray | list[float], *, notes: list[str] | None = None,
                scale: float | None = None) -> str:
    """Tokens as <span>s coloured by their values (hover: the value, or the note given for each)."""
    values = np.asarray(values, dtype=np.float64)
    scale = scale if scale is not None else float(np.abs(values).max()) if len(values) else 1.0
    out = []
    for i, (piece, v) in enumerate(zip(pieces, values)):
        tip = notes[i] if notes else f"{v:+.4f}"
        text = html.escape(piece.replace("\n", "\u21b5\n"))
        out.append(f'<span style="background:{colour(v, scale)}" title="{html.escape(tip)}">{text}</span>')
    return f'<div class="tokens">{"".join(out)}</div>'


def page(title: str, body: str) -> str:
    """A self-contained HTML page."""
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{PAGE_STYLE}</head>\n"
            f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; cells are escaped unless they are already markup (a str starting with '<')."""
    def cell(v: Any) -> str:
        return v if isinstance(v, str) and v.startswith("<") else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def heat_table(row_labels: list[str], column_labels: list[str], values: np.ndarray) -> str:
    """A matrix as an HTML table, each cell coloured by its value against its column's largest |value| (hover: the value);
    NaN cells are left blank (what a column does not read)."""
    values = np.asarray(values, dtype=np.float64)
    scales = [float(np.nanmax(np.abs(c))) if np.isfinite(c).any() else 1.0 for c in values.T]
    head = "<th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in column_labels)
    body = []
    for label, row in zip(row_labels, values):
        cells = "".join("<td></td>" if not np.isfinite(v) else
                        f'<td style="background:{colour(v, s)}" title="{v:+.4f}">{v:+.2g}</td>' for v, s in zip(row, scales))
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>\n")
    return f'<table class="heat"><tr>{head}</tr>\n{"".join(body)}</table>'
