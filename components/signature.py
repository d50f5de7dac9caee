"""A function's parameters read from its source, without importing its module.

The command line and the dvc.yaml writer are derived from the steps' ``run()``
signatures and docstrings. Importing the step modules would import torch (seconds), so
the signature is read with :mod:`ast` instead: names, annotations (as text), defaults
(literals, else their source text) and the ``Args:`` section of the docstring.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: a parameter without a default
REQUIRED = object()

#: an ``int`` that must be at least 1 (a plain ``int`` option takes 0 and up)
PositiveInt = int


@dataclass(frozen=True)
class Param:
    """One parameter: ``annotation`` as written, ``default`` (a literal value, REQUIRED,
    or ``Source``), ``doc`` from the docstring's ``Args:`` section."""

    name: str
    annotation: str
    default: Any
    doc: str

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Source:
    """A default that is an expression rather than a literal (``Limits.max_bytes``): the
    function applies it; help shows its text."""

    text: str

    def __str__(self) -> str:
        return self.text


def module_path(module: str) -> Path:
    """The source file of ``module`` (found without importing it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return Path(spec.origin)


#: annotation names that are types, never aliases to look up
PLAIN = frozenset({"int", "float", "str", "bool", "Path", "Any", "None", "PositiveInt"})


@functools.cache
def _source(module: str) -> str:
    return module_path(module).read_text(encoding="utf-8")


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_source(module))


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return REQUIRED
    try:
        return ast.literal_eval(node)
    except ValueError:
        return Source(ast.unparse(node))


_ARG_LINE = re.compile(r"^(\w+(?:\s*,\s*\w+)*)\s*:\s*(.*)$")


def arg_docs(docstring: str | None) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:`` section (continuation lines
    indented deeper; ``a, b: text`` documents both; ``a: text; b: text`` on one line
    documents each)."""
    docs: dict[str, str] = {}
    if not docstring or "Args:" not in docstring:
        return docs
    section = docstring.split("Args:", 1)[1]
    current: list[str] = []
    indent = None
    for line in section.splitlines()[1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or line.strip() in ("Returns:", "Raises:"):
            break
        text = line.strip()
        if depth == indent and _ARG_LINE.match(text):
            current = []
            for part in text.split("; "):
                m = _ARG_LINE.match(part)
                if m is None:  # a "; " inside the text: it belongs to the previous entry
                    docs[current[-1]] += "; " + part
                    continue
                current = [n.strip() for n in m.group(1).split(",")]
                for name in current:
                    docs[name] = m.group(2)
        elif current:
            for name in current:
                docs[name] += " " + text
    return docs


def _alias(module: str, name: str, depth: int = 0) -> str | None:
    """The ``Literal[...]`` that type alias ``name`` stands for in ``module`` (defined
    there, or imported from a project module); None if it is not such an alias. Read
    from the text (no parse: this runs for every annotation of every step)."""
    if name in PLAIN:
        return None
    text = _source(module)
    found = re.search(rf"^{name}\s*=\s*(Literal\[.*?\])\s*$", text, re.M | re.S)
    if found:
        return " ".join(found.group(1).split()).replace("[ ", "[").replace(", ]", "]")
    if depth >= 3:
        return None
    for m in re.finditer(r"^from\s+([\w.]+)\s+import\s+(\([^)]*\)|[^\n]*)", text, re.M):
        names = {n.split(" as ")[-1].strip() for n in m.group(2).strip("()").split(",")}
        if name in names:
            try:
                return _alias(m.group(1), name, depth + 1)
            except (ModuleNotFoundError, ValueError):
                return None
    return None


def _annotation(module: str, node: ast.expr | None) -> str:
    """An annotation as text, a ``Literal`` alias replaced by what it stands for."""
    if node is None:
        return ""
    text = ast.unparse(node)
    parts = [part.strip() for part in text.split("|")]
    return " | ".join(
        (_alias(module, part) or part) if part.isidentifier() else part for part in parts
    )


@functools.cache
def _function(module: str, name: str) -> ast.FunctionDef:
    """The top-level function ``name`` of ``module``, parsed alone: compiling a whole
    module is most of ``pix2pixhd --help``'s time (the module's other top-level
    statements are skipped by their indentation; the whole tree is the fallback)."""
    lines = module_path(module).read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"def {name}(")), None)
    if start is not None:
        end = start + 1
        while end < len(lines) and (not lines[end] or lines[end][0] in " \t#)"):
            end += 1
        try:
            node = ast.parse("\n".join(lines[start:end])).body[0]
        except (SyntaxError, IndexError):
            node = None
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    for node in _tree(module).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AttributeError(f"{module} has no function {name}")


@functools.cache
def parameters(target: str) -> tuple[Param, ...]:
    """The parameters of ``module:function`` (keyword-or-positional ones, in order)."""
    module, name = target.split(":")
    fn = _function(module, name)
    docs = arg_docs(ast.get_docstring(fn))
    args = fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    pairs = [*zip(args, defaults, strict=True)]
    pairs += [*zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True)]
    out = [
        Param(a.arg, _annotation(module, a.annotation), _default(d), docs.get(a.arg, ""))
        for a, d in pairs
    ]
    return tuple(out)


def summary(target: str) -> str:
    """The first line of the function's docstring (its one-line summary)."""
    module, name = target.split(":")
    doc = ast.get_docstring(_function(module, name)) or ""
    return doc.split("\n", 1)[0].strip()


def description(target: str) -> str:
    """The docstring's text before its ``Args:`` section, paragraphs kept."""
    module, name = target.split(":")
    doc = ast.get_docstring(_function(module, name)) or ""
    return doc.split("Args:", 1)[0].strip()
