"""data.source = "docstrings": the standard library's docstrings as (body -> summary line) pairs, read with `ast`.

Every module, class and function docstring of the standard library's own .py files (no test suites, as
data.source = "stdlib") whose first paragraph is its summary: the target is that paragraph on one line, the
source the definition's signature followed by the paragraphs after the first blank line. Rows keep pairs with a
body of >= 20 words and a summary of 3-30 words; "group" is the top-level module or package (the preparer splits by it).
data.packages adds the docstrings of installed site-packages (numpy, scipy, ...): rows marked "split": "train",
since the held-out packages are the standard library's own.
"""

from __future__ import annotations

import ast
import re
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from largo.data.sources.registry import PAIRS, DataSource, Roles, Row, SourceStats, decode, register_source
from largo.data.sources.stdlib import _SKIP_DIRS, stdlib_files
from largo.errors import DataError

MIN_BODY_WORDS, MIN_SUMMARY_WORDS, MAX_SUMMARY_WORDS = 20, 3, 30
_BLANK = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"\s+")

Definition = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def signature(node: Definition, module: str) -> str:
    """One line naming the definition: `def name(args)`, `class Name(bases)`, or `module name`."""
    if isinstance(node, ast.Module):
        return f"module {module}"
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        return f"class {node.name}({bases})" if bases else f"class {node.name}"
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"


def docstring_pair(node: Definition, module: str) -> tuple[str, str] | None:
    """(body, summary) of a docstring: the signature + the paragraphs after the first blank line, and the first paragraph
    on one line; None without a docstring or outside the word limits."""
    doc = ast.get_docstring(node, clean=True)
    if not doc:
        return None
    parts = _BLANK.split(doc.strip(), maxsplit=1)
    if len(parts) < 2:
        return None
    summary = _SPACE.sub(" ", parts[0]).strip()
    body = f"{signature(node, module)}\n{parts[1].strip()}"
    if len(body.split()) < MIN_BODY_WORDS or not MIN_SUMMARY_WORDS <= len(summary.split()) <= MAX_SUMMARY_WORDS:
        return None
    return body, summary


def module_pairs(source: str, module: str) -> Iterator[tuple[str, str]]:
    """Every (body, summary) pair of one module's source, in the order ast walks it; unparsable files give none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # invalid escape sequences in old modules
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            pair = docstring_pair(node, module)
            if pair is not None:
                yield pair


def top_level(relative: Path) -> str:
    """The top-level module or package a stdlib file belongs to: email/mime/text.py -> email, os.py -> os."""
    return relative.parts[0].removesuffix(".py")


def package_files(name: str) -> list[Path]:
    """An installed package's own .py files (its test suites left out), sorted; a one-line error when it is not installed."""
    root = Path(sysconfig.get_paths()["purelib"]) / name
    if not root.is_dir():
        raise DataError(f"data.packages: {name!r} is not an installed package in {root.parent}; list installed top-level packages")
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


class DocstringSource(DataSource):
    """The standard library's docstrings (and data.packages') as (body, summary) pairs; ids relative to their roots."""

    settings_keys = ("packages",)

    def files(self) -> list[tuple[Path, str]]:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        site = Path(sysconfig.get_paths()["purelib"])
        out = [(p, str(p.relative_to(stdlib))) for p in stdlib_files()]
        for package in getattr(self.data, "packages", []) or []:
            out += [(p, f"site-packages/{p.relative_to(site)}") for p in package_files(package)]
        return out

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        for path, name in self.files():
            stats.files.append(name)
            extra = name.startswith("site-packages/")
            relative = Path(name.removeprefix("site-packages/"))
            module = str(relative.with_suffix("")).replace("/", ".").removesuffix(".__init__")
            for body, summary in module_pairs(decode(path.read_bytes(), stats), module):
                stats.documents += 1
                row = {"text": body, "target": summary, "group": top_level(relative), "id": name}
                yield {**row, "split": "train"} if extra else row  # the held-out packages are the standard library's


register_source("docstrings", DocstringSource, provides=[PAIRS])
