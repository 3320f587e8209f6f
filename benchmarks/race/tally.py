"""The race's bookkeeping, free of processes and clocks: the interleaved order, the sweep's pick, time to a target."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Run = tuple[int, str, float]  # (round, contender, learning rate)


def sweep_round(lrs: dict[str, list[float]]) -> list[Run]:
    """Round 1: every contender's sweep, interleaved: each contender's first lr, then each one's second, ..."""
    depth = max(len(v) for v in lrs.values())
    return [(1, name, values[i]) for i in range(depth) for name, values in lrs.items() if i < len(values)]


def race_round(chosen: dict[str, float], rnd: int) -> list[Run]:
    """A later round: each contender once at its chosen lr, the order rotated by one per round (no fixed first or last)."""
    names = list(chosen)
    shift = (rnd - 1) % len(names)
    return [(rnd, name, chosen[name]) for name in names[shift:] + names[:shift]]


def best_lrs(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each contender's lr with the lowest final bits per byte among its round-1 runs (failed runs never win)."""
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["round"] == 1 and math.isfinite(r.get("final_bpb", math.nan)):
            if r["contender"] not in best or r["final_bpb"] < best[r["contender"]]["final_bpb"]:
                best[r["contender"]] = r
    return {name: r["lr"] for name, r in best.items()}


def time_to(points: Sequence[Sequence[float]], target: float) -> float:
    """Training seconds at which a (seconds, bpb) curve first reaches target, linear between points; inf if never."""
    prev: Sequence[float] | None = None
    for t, bpb in points:
        if bpb <= target:
            if prev is None or prev[1] == bpb:
                return float(t)
            return float(prev[0] + (t - prev[0]) * (prev[1] - target) / (prev[1] - bpb))
        prev = (t, bpb)
    return math.inf


def median_or_inf(values: Sequence[float]) -> float:
    """The median, where a run that never got there (inf) counts as the slowest."""
    return statistics.median(values) if values else math.inf


def headline(rows: dict[str, dict[str, Any]], largo: str = "largo") -> tuple[str, dict[str, Any]]:
    """The last line and its figures: largo's time to the best peer's final bpb (median over rounds), as a share of the
    training time that peer took to get there (its runs' last points). largo's rows (largo, largo_half: the recipe on
    another budget) each give a median time; the recipe's time is the shortest of them."""
    mine = {n: r for n, r in rows.items() if n.startswith(largo)}
    peers = {n: r for n, r in rows.items() if n not in mine and math.isfinite(r["final_bpb"])}
    if not mine or not peers:
        return "time-to-target: needs largo and at least one peer that finished", {}
    best = min(peers, key=lambda n: peers[n]["final_bpb"])
    target = peers[best]["final_bpb"]
    peer_s = median_or_inf([c[-1][0] for c in peers[best]["curves"] if c])  # its final score came at its last point
    times = {n: median_or_inf([time_to(c, target) for c in r["curves"]]) for n, r in mine.items()}
    fastest = min(times, key=lambda n: times[n])
    largo_s = times[fastest]
    ratio = largo_s / peer_s if math.isfinite(largo_s) and peer_s > 0 else math.inf
    finals = ", ".join(f"{n} {r['final_bpb']:.4f}" for n, r in mine.items())
    shown = f"{ratio:.2f}" if math.isfinite(ratio) else f"not reached (final {finals})"
    by = f", by {fastest}" if len(mine) > 1 and math.isfinite(ratio) else ""
    line = f"time-to-target: largo {shown} of {best}'s wall time (target {target:.4f} bits/byte{by})"
    return line, {"best_peer": best, "target_bpb": target, "peer_s": peer_s, "largo_s": largo_s, "ratio": ratio,
                  "largo_row": fastest, "largo_times": times}
