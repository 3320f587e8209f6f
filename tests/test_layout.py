"""The floor plan: imports run one way through the layers, and no module imports itself back through others.

Every `import` and `from ... import` in src/largo counts, function-level ones too (a cycle hidden
behind a late import is still a cycle), and those under `if TYPE_CHECKING:` as well: a type named
across the layers is a dependency a reader follows, even if it never runs (the run config flowing
into models/ and data/ under TYPE_CHECKING was a 12-file circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import largo

SRC = Path(largo.__file__).resolve().parent
# Lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = [
    ("largo.errors", "largo.fileio", "largo.precision", "largo.hardware", "largo.optional", "largo.observe", "largo.rundir"),
    # the checkpoint format (folders, state.json, the DCP index): what config reads a model.init_from through
    ("largo.checkpoint.store", "largo.checkpoint.state_schema", "largo.checkpoint.dcp_index"),
    ("largo.data",),
    ("largo.models",),
    ("largo.config", "largo.presets", "largo.config_keys"),
    ("largo.distributed",),
    ("largo.checkpoint",),
    ("largo.interop",),
    ("largo.plan",),
    ("largo.train",),
    ("largo.explain",),
    ("largo.api",),
    ("largo.cli", "largo.__main__", "largo"),
]


def module_name(path: Path) -> str:
    parts = ("largo", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def layer(module: str) -> int:
    """The index of the layer whose longest prefix names `module`."""
    best = max((prefix for group in LAYERS for prefix in group if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def imports_in(text: str, module: str = "") -> set[str]:
    """The largo modules a source text imports, at any depth (a `from pkg import name` of a submodule counts as that submodule)."""
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != module}
    return out


def imports_of(module: str) -> set[str]:
    """The largo modules `module` imports."""
    return imports_in(MODULES[module].read_text(), module)


GRAPH = {m: imports_of(m) for m in MODULES}


def test_imports_never_run_up_the_layers() -> None:
    upward = [f"{m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})" for m, deps in GRAPH.items() for dep in deps
              if layer(dep) > layer(m) and m != "largo"]  # the package's lazy `largo.Trainer` is the facade on top
    assert upward == []


def test_no_import_cycles() -> None:
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_checker_sees_what_it_must() -> None:
    """The walk finds function-level and TYPE_CHECKING imports (else the two tests above prove nothing)."""
    assert "largo.train.run" in GRAPH["largo.cli"]  # imported inside cmd_train
    assert imports_in("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from largo.config import RunConfig\n") == {"largo.config"}
    assert layer("largo.train.run") > layer("largo.plan.planner") > layer("largo.models.gpt") > layer("largo.data.prepare")


def test_specs_and_data_never_name_the_run_config() -> None:
    """models/ and data/ see the [data] and [model] sections (and the few fields they need), never RunConfig."""
    named = [m for m, p in MODULES.items() if m.startswith(("largo.models", "largo.data")) and "RunConfig" in p.read_text()]
    assert named == []
