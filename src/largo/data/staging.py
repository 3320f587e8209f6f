"""Prepared folders are replaced whole: a preparation writes into a temporary folder beside data.dir and swaps it in
only once complete, so one that fails (an empty split, a full disk, an interrupt) leaves the old folder byte-identical.

Entries of the old folder that the preparation does not own (a downloaded wheel, a user's notes) move into the new one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from largo.errors import DataError
from largo.fileio import fsync_dir


def _fresh(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


@contextmanager
def staged_dir(out: Path, owns: tuple[str, ...]) -> Iterator[Path]:
    """A fresh folder to prepare into; on success it replaces `out` (whose entries matching `owns` are dropped), on failure it goes."""
    tmp = out.parent / f".{out.name}.preparing-{os.getpid()}"
    try:
        _fresh(tmp)
    except OSError as e:
        raise DataError(f"data.dir {out}: cannot create ({e.strerror})") from None
    try:
        yield tmp
        _swap_in(tmp, out, owns)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, out: Path, owns: tuple[str, ...]) -> None:
    """Carry out's entries the preparation does not own into tmp, then rename tmp over out (the old copy aside until then)."""
    try:
        if out.is_dir():
            for entry in sorted(out.iterdir()):
                if not any(fnmatch(entry.name, pattern) for pattern in owns) and not (tmp / entry.name).exists():
                    os.rename(entry, tmp / entry.name)
            aside = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, aside)
            os.rename(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except OSError as e:
        raise DataError(f"data.dir {out}: cannot replace with the new preparation ({e.strerror})") from None
