"""data.source = "stdlib": the Python standard library's own .py files (no site-packages, no test suites), on every machine."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.files import text_rows
from largo.data.sources.registry import TEXT, DataSource, Roles, Row, SourceStats, register_source

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files() -> list[Path]:
    """The standard library's own .py files, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(out)


class StdlibSource(DataSource):
    """The standard library as a text corpus; ids relative to its root, so the split is the same on every machine."""

    def files(self) -> list[tuple[Path, str]]:
        root = Path(sysconfig.get_paths()["stdlib"])
        return [(p, str(p.relative_to(root))) for p in stdlib_files()]

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        yield from text_rows(self.files(), roles, stats)


register_source("stdlib", StdlibSource, provides=[TEXT])
