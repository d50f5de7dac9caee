"""Commands that stay true: every fenced shell block of README.md and docs/**/*.md.

A block (```bash, ```sh, ```shell or ```console) is either

- run: in a scratch directory that links the repository's files (so relative outputs
  land in the scratch directory, and `.venv/bin/...` and `params.yaml` resolve), with
  `.venv/bin` first on PATH; it must exit 0 within ``TIMEOUT_S``. Only cheap blocks
  should be left to run: `--help`, `pix2pixhd pipeline dvc --check`, `pix2pixhd params`,
  a tiny `data synth`;
- or marked not run, by an HTML comment on the line before the fence (blank lines
  allowed between): ``<!-- not-run: the reason -->``. Its `pix2pixhd ...` and
  `python bench/*.py ...` command lines are still parsed by the real argument parsers
  (``pix2pixhd.cli.build_parser()``; each bench script's own parser, stopped right after
  parsing), so a renamed or misspelled flag or subcommand fails here wherever it is
  written.

A block without a marker is run: adding an expensive block means saying why it is not.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "shell", "console"}
MARK = re.compile(r"^\s*<!--\s*not-run:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
TIMEOUT_S = 180
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
REDIRECTS = {">", ">>", "<", ">&", "<&", "&>", ">|"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def script(self) -> str:
        """The shell text to run (a console block: its `$ ` lines)."""
        if self.lang != "console":
            return self.text
        return "\n".join(ln[2:] for ln in self.text.splitlines() if ln.startswith("$ "))


def parse_markdown(path: Path, text: str | None = None) -> tuple[list[Block], list[str]]:
    """The fenced shell blocks of a Markdown file, and the problems found with markers
    (a marker without a reason, or not followed by a shell block)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None  # a marker seen, waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        mark = MARK.match(line)
        if mark:
            if pending is not None:
                problems.append(f"{path.name}:{pending[0]}: not-run marker without a block")
            pending = (i + 1, mark.group(1).strip())
            i += 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip() and pending is not None:
                problems.append(
                    f"{path.name}:{pending[0]}: not-run marker not right before a block"
                )
                pending = None
            i += 1
            continue
        indent, marker, lang = fence.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(marker):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        reason = pending[1] if pending is not None else None
        if lang.lower() in SHELL:
            if reason == "":
                problems.append(f"{path.name}:{pending[0]}: not-run marker without a reason")
            blocks.append(Block(path, i + 1, lang.lower(), "\n".join(body), reason))
        elif pending is not None:
            problems.append(f"{path.name}:{pending[0]}: not-run marker before a {lang!r} block")
        pending = None
        i = j + 1
    if pending is not None:
        problems.append(f"{path.name}:{pending[0]}: not-run marker without a block")
    return blocks, problems


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def command_lines(script: str) -> list[tuple[str, list[str]]]:
    """The command lines of a shell script this test can check: ("pix2pixhd", argv) for
    `pix2pixhd ...`, `python -m pix2pixhd ...` (also after `torchrun` or in `docker run
    IMAGE pix2pixhd ...`), and ("bench/x.py", argv) for `python bench/x.py ...`."""
    logical = re.sub(r"\\\n", " ", script)
    found: list[tuple[str, list[str]]] = []
    for line in logical.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError as exc:  # unbalanced quotes
            if "pix2pixhd" in line or "bench/" in line:
                raise AssertionError(f"cannot split {line!r}: {exc}") from None
            continue
        segment: list[str] = []
        skip = False
        for token in [*tokens, ";"]:
            if skip:
                skip = False
                continue
            if token in REDIRECTS:
                if segment and segment[-1].isdigit():
                    segment.pop()  # 2>/dev/null
                skip = True
                continue
            if token in SEPARATORS:
                command = _command(segment)
                if command:
                    found.append(command)
                segment = []
                continue
            segment.append(token)
    return found


def _command(tokens: list[str]) -> tuple[str, list[str]] | None:
    for k, token in enumerate(tokens):
        name = os.path.basename(token)
        if name == "pix2pixhd":
            return "pix2pixhd", tokens[k + 1 :]
        if token == "-m" and k + 1 < len(tokens) and tokens[k + 1] == "pix2pixhd":
            return "pix2pixhd", tokens[k + 2 :]
        if name.startswith("python") and k + 1 < len(tokens):
            script = tokens[k + 1]
            if script.startswith("bench/") and script.endswith(".py"):
                return script, tokens[k + 2 :]
    return None


def parse_pix2pixhd(argv: list[str]) -> str | None:
    """None when ``pix2pixhd argv`` parses (``--help`` included), else the parser's error."""
    from pix2pixhd.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return err.getvalue().strip() or f"exit status {exc.code}"
    return None


# Runs each bench script as __main__ with its argv until its parser has parsed them:
# argparse.ArgumentParser.parse_args is wrapped to stop right there, before any work.
_BENCH_PARSER = textwrap.dedent(
    """
    import argparse, contextlib, io, json, os, runpy, sys

    class Parsed(BaseException):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    argparse.ArgumentParser.parse_args = parse_args
    results = []
    for script, argv in json.load(sys.stdin):
        sys.argv = [script, *argv]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script`
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path(script, run_name="__main__")
            results.append("the script never parsed its arguments")
        except Parsed:
            results.append(None)
        except SystemExit as exc:
            ok = exc.code in (0, None)
            results.append(None if ok else err.getvalue().strip() or f"exit {exc.code}")
    print(json.dumps(results))
    """
)


def parse_bench(commands: list[tuple[str, list[str]]]) -> list[str | None]:
    """For each ("bench/x.py", argv): None when the script's parser takes argv."""
    if not commands:
        return []
    done = subprocess.run(
        [sys.executable, "-c", _BENCH_PARSER],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_commands(blocks: list[Block]) -> list[str]:
    """Every checkable command line of ``blocks`` through its parser: the errors."""
    errors: list[str] = []
    bench: list[tuple[str, tuple[str, list[str]]]] = []
    for block in blocks:
        for program, argv in command_lines(block.script()):
            if program == "pix2pixhd":
                error = parse_pix2pixhd(argv)
                if error:
                    errors.append(f"{block.where}: pix2pixhd {shlex.join(argv)}\n  {error}")
            else:
                bench.append((block.where, (program, argv)))
    for (where, (script, argv)), error in zip(
        bench, parse_bench([c for _, c in bench]), strict=True
    ):
        if error:
            errors.append(f"{where}: python {script} {shlex.join(argv)}\n  {error}")
    return errors


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A directory whose entries link to the repository's (the tracking store and the
    local runs excepted), where blocks run: relative outputs land here."""
    work = tmp_path_factory.mktemp("docs-commands")
    for entry in ROOT.iterdir():
        if entry.name in {"mlflow.db", "mlruns", ".venv"}:
            continue
        (work / entry.name).symlink_to(entry)
    venv = ROOT / ".venv"
    if (venv / "bin" / "pix2pixhd").exists():
        (work / ".venv").symlink_to(venv)
    else:  # tests run by another interpreter: `.venv/bin` is that interpreter's
        (work / ".venv").mkdir()
        (work / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    return work


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PIX2PIXHD_CACHE": str(cwd / ".cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.script()],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


ALL = [b for path in markdown_files() for b in parse_markdown(path)[0]]
RUN = [b for b in ALL if b.not_run is None]


def test_the_documentation_has_shell_blocks():
    assert len(ALL) > 20 and RUN, "no shell blocks found: is the parser broken?"


def test_markers_are_well_formed():
    problems = [p for path in markdown_files() for p in parse_markdown(path)[1]]
    assert not problems, "\n".join(problems)


def test_command_lines_parse():
    """Every `pix2pixhd` and `python bench/*.py` line, run or not, parses."""
    errors = check_commands(ALL)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_block_runs(block: Block, scratch: Path):
    done = run_block(block, scratch)
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode} (mark it `<!-- not-run: reason -->` "
        f"if it is not meant to run here):\n{block.script()}\n--- stderr:\n"
        f"{done.stderr[-3000:]}"
    )


# --- the check itself: a renamed or misspelled flag must fail it


MISSPELLED = """
Some text.

<!-- not-run: trains -->
```bash
.venv/bin/pix2pixhd data synth --out tiny --num-trian 2 --seed 0
python bench/gpu.py --dry-rnu
```

```bash
.venv/bin/pix2pixhd pipeline dvc --chek
```
"""


def test_a_misspelled_flag_fails_in_a_block_not_run():
    blocks, problems = parse_markdown(ROOT / "example.md", MISSPELLED)
    assert not problems and [b.not_run for b in blocks] == ["trains", None]
    errors = check_commands(blocks[:1])
    assert len(errors) == 2, errors
    assert "unrecognized arguments: --num-trian" in errors[0]
    assert "--dry-rnu" in errors[1]


def test_a_misspelled_flag_fails_in_a_block_run(scratch: Path):
    blocks, _ = parse_markdown(ROOT / "example.md", MISSPELLED)
    assert "--chek" in check_commands(blocks[1:])[0]
    done = run_block(blocks[1], scratch)
    assert done.returncode == 2 and "--chek" in done.stderr


def test_a_renamed_flag_in_the_readme_would_fail():
    """The README's own blocks with one flag renamed, as a rename in the code would
    leave them: the check names the block and the flag."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--follow-alias" in readme
    renamed = readme.replace("--follow-alias", "--follow-champion")
    blocks, _ = parse_markdown(ROOT / "README.md", renamed)
    errors = check_commands(blocks)
    assert any("README.md" in e and "--follow-champion" in e for e in errors), errors


def test_command_lines_are_found():
    script = (
        "L=$(ls x/*.png)\n"
        ".venv/bin/pix2pixhd edit --labels $L \\\n    --instances ${L/labelIds/instanceIds} "
        "--out o/ > s.json 2>/dev/null && echo done  # a comment\n"
        "PIX2PIXHD_X=1 torchrun --nproc_per_node 2 -m pix2pixhd train --stage global\n"
        "docker run -p 8080:8080 REG/pix2pixhd-cpu:SHA pix2pixhd serve --host 0.0.0.0\n"
        ".venv/bin/python bench/quality.py --budget 240 | tee log\n"
        "curl -s http://127.0.0.1:8080/v1/generate -o pix2pixhd.png\n"
    )
    edit = ["edit", "--labels", "$L", "--instances", "${L/labelIds/instanceIds}", "--out", "o/"]
    assert command_lines(script) == [
        ("pix2pixhd", edit),
        ("pix2pixhd", ["train", "--stage", "global"]),
        ("pix2pixhd", ["serve", "--host", "0.0.0.0"]),
        ("bench/quality.py", ["--budget", "240"]),
    ]  # fmt: skip
