"""The floor plan: imports run one way through the layers, and no module imports itself back through others.

Every `import` and `from ... import` in src/largo counts, function-level ones too (a cycle hidden
behind a late import is still a cycle); only imports under `if TYPE_CHECKING:` are left out, as
they never run.
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


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(module: str) -> set[str]:
    """The largo modules `module` imports (a `from pkg import name` of a submodule counts as that submodule)."""
    out = set()
    for node in _runtime_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != module}
    return out


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
    """The walk finds function-level imports and skips TYPE_CHECKING ones (else the two tests above prove nothing)."""
    assert "largo.train.run" in GRAPH["largo.cli"]  # imported inside cmd_train
    assert "largo.config" not in GRAPH["largo.models.spec"]  # only under TYPE_CHECKING there
    assert layer("largo.train.run") > layer("largo.plan.planner") > layer("largo.models.gpt") > layer("largo.data.prepare")
