"""The parameter reference, generated from the schema: every section and key of
``Params`` with its type, default and meaning, written to docs/params.md.

A field's meaning lives in one place, its dataclass definition: the comment at the end
of the field's line, or the comment lines directly above it (both, joined, when a field
has both). A section's description is its dataclass's docstring. Defaults are those of
``Params()`` (the paper's recipe), so a section whose default differs from its class's
(``train_local``, ``model.generator``) shows the value a run actually gets.

    python -m components.params_doc           # write docs/params.md
    python -m components.params_doc --check   # exit 1 when docs/params.md is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import sys
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.params import EXTENDS, Params
from model.fileio import write_text

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "params.md"


@dataclass(frozen=True)
class ParamDoc:
    """One row of the reference: a key (``section.key``) or a section (``model.loss``)."""

    key: str
    type: str
    default: Any
    meaning: str
    section: bool = False


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: meaning} of a dataclass, from the comments of its definition: the
    trailing comment of the field's line(s), after the comment lines directly above it.
    A field without either gets ""."""
    source = inspect.getsource(cls)
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef), cls
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in skip:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if node.target.id not in names:
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        end = node.end_lineno or node.lineno
        trailing = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        out[node.target.id] = " ".join(above + trailing).strip()
    return {name: out.get(name, "") for name in (f.name for f in dataclasses.fields(cls))}


def section_doc(cls: type) -> str:
    """A section's description: its dataclass's docstring, on one line."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses makes up
        return ""
    return " ".join(inspect.cleandoc(doc).split())


def type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if dataclasses.is_dataclass(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def yaml_value(value: Any) -> str:
    """A default as it is written in params.yaml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def params_reference(obj: Any = None, prefix: str = "") -> list[ParamDoc]:
    """Every section and key under ``obj`` (default: ``Params()``) in declaration order,
    a section's keys before its subsections, each with its type, default and meaning."""
    obj = Params() if obj is None else obj
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[ParamDoc] = []
    nested: list[ParamDoc] = []  # after the keys, so a section's table stays whole
    for f in dataclasses.fields(cls):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            meaning = docs[f.name] or section_doc(type(value))
            nested.append(ParamDoc(key, "section", None, meaning, section=True))
            nested.extend(params_reference(value, key + "."))
        else:
            rows.append(ParamDoc(key, type_name(hints[f.name]), value, docs[f.name]))
    return rows + nested


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell (no column breaks, no stray emphasis)."""
    return text.replace("|", "\\|").replace("*", "\\*")


def params_markdown() -> str:
    """docs/params.md: one table per section, every key with type, default, meaning."""
    lines = [
        "# Parameter reference",
        "",
        "<!-- Generated by `python -m components.params_doc` from the schema",
        "     (components/params.py, model/config.py): edit the comments there, not here. -->",
        "",
        "Every section and key of the params files. The defaults are the schema's: the",
        "paper's two-stage Cityscapes recipe. `params.yaml` is the small CPU demo and names",
        "only what it changes; a key it leaves out takes the default below. A variant",
        f"(`params.quality.yaml`, `params.cityscapes.yaml`) starts with `{EXTENDS}: params.yaml`",
        "(a path relative to the variant) and lists only what differs from that base; the",
        "chain is merged base first. Any key can be overridden with",
        "`--set section.key=value`; an unknown key is an error that names it.",
    ]
    rows = params_reference()
    sections = [r for r in rows if r.section and "." not in r.key]
    lines += ["", "Sections: " + ", ".join(f"[`{r.key}`](#{r.key})" for r in sections) + "."]
    table_open = False
    for row in rows:
        if row.section:
            level = "##" if "." not in row.key else "###"
            text = row.meaning[:1].upper() + row.meaning[1:]
            lines += ["", f"{level} {row.key}", "", _cell(text)]
            table_open = False
            continue
        if not table_open:
            lines += ["", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
            table_open = True
        cells = (f"`{row.key}`", row.type, f"`{yaml_value(row.default)}`", row.meaning)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = params_markdown()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            sys.stderr.write(f"{args.out}: stale, run python -m components.params_doc\n")
            return 1
        return 0
    write_text(args.out, text)  # temp + rename
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def resolve(
    params_file: Path, out: Path | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Print a params file resolved (its ``extends`` chain merged, overrides applied).

    The result is self-contained params (JSON is YAML): ``--out params.yaml`` writes it
    over DVC's params.yaml to run a variant with ``dvc repro`` (the base is read before
    anything is written).

    Args:
        params_file: a params file or a variant (``extends: params.yaml`` + differences).
        out: write the resolved YAML here (atomically) instead of printing it.
        overrides: SECTION.KEY=VALUE applied last (repeatable).
    """
    import yaml

    from components.params import resolved_yaml
    from model.fileio import write_text

    text = resolved_yaml(params_file, overrides or ())
    if out is None:
        return yaml.safe_load(text)
    write_text(out, text)
    return {"written": str(out), "from": str(params_file)}
