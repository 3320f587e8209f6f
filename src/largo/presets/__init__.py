"""The recipes shipped with largo: TOML configs inside the package, so `largo train text_tiny` works from any folder."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """Every preset's name (its file name without .toml), sorted."""
    return sorted(p.stem for p in ROOT.glob("*.toml"))


def preset_path(name: str) -> Path | None:
    """The preset called `name` (with or without .toml), or None."""
    stem = name[:-5] if name.endswith(".toml") else name
    path = ROOT / f"{stem}.toml"
    return path if "/" not in stem and path.is_file() else None


def preset_about(name: str) -> str:
    """A preset's first comment line: what it trains."""
    for line in (ROOT / f"{name}.toml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
