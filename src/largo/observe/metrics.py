"""Metrics as JSON lines in the run directory: one object per logged step, append-only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from largo.errors import DataError


class Sink(Protocol):
    """Where MetricsLog copies each record besides the file: an experiment tracker (observe/trackers.py)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """Appends {"step": ..., ...} lines to metrics.jsonl and hands each record to the sinks (experiment trackers);
    on resume drops lines past the resumed step."""

    def __init__(self, path: Path, *, resume_step: int | None = None, sinks: list[Sink] | None = None):
        self.path, self.sinks = path, list(sinks or [])
        if resume_step is not None and path.exists():
            self.truncate_after(resume_step)

    def truncate_after(self, step: int) -> None:
        """Keep only records with step <= `step` (work after the checkpoint is redone, not duplicated)."""
        kept = [line for line in self.path.read_text().splitlines() if _step(line) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        # Opened per record: nothing stays open when a run dies with an error (a few lines per second at most).
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self.sinks:  # the file first: it is the record, a tracker only shows it
            sink.write(record)

    def close(self) -> None:
        """Close the sinks (flush trackers); the file needs nothing."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def last_step(path: Path) -> int:
    """The largest integer step any record of a metrics file holds (0 when there is none)."""
    if not path.exists():
        return 0
    steps = [_step(line) for line in path.read_text(errors="replace").splitlines()]
    return max((int(s) for s in steps if math.isfinite(s)), default=0)


def _step(line: str) -> float:
    try:
        step = json.loads(line).get("step", float("inf"))
        return step if isinstance(step, (int, float)) else float("inf")
    except (ValueError, AttributeError, RecursionError):
        return float("inf")  # a line torn by a kill is dropped


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, optionally only those with "kind" == kind.

    A last line without its newline was torn by a kill and is skipped; a bad line anywhere else is an error.
    """
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or (lineno == len(lines) and not text.endswith("\n")):
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise DataError(f"{path}:{lineno}: not a JSON record; the metrics file was edited or damaged") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: not a JSON object; the metrics file was edited or damaged")
        records.append(record)
    return [r for r in records if kind is None or r.get("kind") == kind]
