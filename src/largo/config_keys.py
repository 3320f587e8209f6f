"""Every config key with its value, type, default and comment: `largo config show`, read from the dataclasses' own source.

The comment after a field in its dataclass is the documentation of that key (STYLE: one place), so
this module reads it from there rather than keeping a second copy that could drift.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from functools import lru_cache
from typing import Any

from largo.config import RunConfig

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=[^#]*)?(?:#\s*(.*))?$")  # `name: type = default  # comment`


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: trailing comment} for a dataclass and its bases (a subclass's own comment wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = _FIELD.match(line)
            if match and match.group(2):
                out[match.group(1)] = match.group(2).strip()
    return out


def _toml(value: Any) -> str:
    """A value as TOML (strings, numbers, booleans, lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _type_name(hint: Any) -> str:
    """int, float, str, bool, list[...] or one of "a" | "b" for a Literal."""
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(json.dumps(v) for v in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def show(cfg: RunConfig) -> str:
    """The resolved config as TOML, each key followed by its type, default (when it differs) and comment."""
    lines: list[str] = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(obj):
            continue
        cls = type(obj)
        hints, comments = typing.get_type_hints(cls), field_comments(cls)
        lines += ["", f"[{section.name}]" + (f"  # {cls.__doc__.splitlines()[0]}" if cls.__doc__ else "")]
        rows = []
        for f in dataclasses.fields(obj):
            value, default = getattr(obj, f.name), _default(f)
            note = _type_name(hints.get(f.name, f.type))
            if value != default:
                note += f", default {_toml(default)}"
            if comments.get(f.name):
                note += f": {comments[f.name]}"
            rows.append((f"{f.name} = {_toml(value)}", note))
        width = max(len(left) for left, _ in rows) if rows else 0
        lines += [f"{left:<{width}}  # {note}" for left, note in rows]
    return "\n".join(lines).lstrip("\n") + "\n"
