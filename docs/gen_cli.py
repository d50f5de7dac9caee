"""The CLI reference (reference/cli.md), generated from the parser at build time.

``pix2pixhd.cli.build_parser()`` is the parser the command runs with (its subcommands
come from ``components.steps.STEPS``), so this page cannot drift from the code: one
section per subcommand with its usage and its options, grouped as ``--help`` groups them.
Run by mkdocs-gen-files (mkdocs.yml); ``python docs/gen_cli.py`` prints the page.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pix2pixhd.cli import build_parser  # noqa: E402

PAGE = "reference/cli.md"


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser below ``parser``, depth first, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def markdown_text(text: str) -> str:
    """Help text as Markdown: code spans kept, HTML and emphasis characters escaped
    outside them."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
    if len(parts) % 2 == 0:  # an unpaired backtick: leave it visible
        return "\\`".join("`".join(parts).rsplit("`", 1))
    return "`".join(parts)


def option_line(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    names = ", ".join(action.option_strings) or (action.metavar or action.dest)
    if action.nargs != 0 and action.option_strings:
        names += " " + formatter._format_args(
            action, formatter._get_default_metavar_for_optional(action)
        )
    help_text = formatter._expand_help(action) if action.help else ""
    help_text = " ".join(help_text.split())
    required = " (required)" if action.required and action.option_strings else ""
    return f"- `{names}`{required}: {markdown_text(help_text)}".rstrip(": ")


def section(path: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    level = "#" * (len(path) + 1)
    lines = [f"{level} pix2pixhd {' '.join(path)}", ""]
    if parser.description:
        lines += [markdown_text(parser.description.strip()), ""]
    usage = parser.format_usage().strip()
    lines += ["```text", usage.removeprefix("usage: "), "```", ""]
    for group in parser._action_groups:
        shown = [
            a
            for a in group._group_actions
            if a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if not shown:
            continue
        lines += [f"**{group.title}**", ""]
        lines += [option_line(parser, a) for a in shown]
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    parser = build_parser()
    out = [
        "# Command line",
        "",
        "Generated from `pix2pixhd.cli.build_parser()` when the site is built (the "
        "subcommands come from `components.steps.STEPS`): what `pix2pixhd COMMAND --help` "
        "prints, one section per command. An option that is not given is not passed, so "
        "`run()`'s own default applies; params shorthands (`--width 256`) are "
        "`--set section.key=value` overrides. Every path option also takes an "
        "`s3://` URI.",
        "",
        "```text",
        parser.format_help().strip(),
        "```",
        "",
    ]
    for path, sub in commands(parser):
        out.append(section(path, sub))
    text = "\n".join(out).rstrip() + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


if __name__ == "__main__":
    sys.stdout.write(render())
elif __name__ == "<run_path>":  # run by mkdocs-gen-files (runpy.run_path)
    import mkdocs_gen_files

    with mkdocs_gen_files.open(PAGE, "w") as f:
        f.write(render())
