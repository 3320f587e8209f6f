"""What `largo explain` reads and where it writes: inputs from files, folders and text; output names; the run folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from largo.errors import DataError
from largo.models import ArchSpec
from largo.rundir import RunDir


@dataclass
class Example:
    """One input to explain: where it came from, its stored row, and its true class when known."""

    name: str
    row: np.ndarray
    label: int | None = None


def run_dir_of(ckpt: Path) -> Path:
    """The run directory of a checkpoint folder (runs/x/checkpoints/step_N -> runs/x), else the folder itself."""
    run = RunDir.of_checkpoint(ckpt)
    return run.path if run is not None else ckpt


def output_name(i: int, name: str, suffix: str) -> str:
    """'003_ankle_boot.png': the input's position and a filesystem-safe form of its name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if Path(name).suffix else name)[:40].strip("_") or "input"
    return f"{i:03d}_{stem}{suffix}"


def expand_sources(spec: ArchSpec, sources: list[str], limit: int) -> list[str]:
    """Files as given; a folder becomes its files with the architecture's suffixes (sorted, at most `limit`)."""
    out = []
    for src in sources:
        p = Path(src)
        if src.strip() and p.is_dir():  # Path("") is the working folder: an empty text is a text, refused by its reader
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in spec.example_suffixes)
            if not found:
                raise DataError(f"{p}: no {'/'.join(spec.example_suffixes) or 'input'} files in this folder")
            out += [str(f) for f in found[:limit]]
        else:
            out.append(src)
    return out
