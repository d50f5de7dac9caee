"""Messages and docstrings name params keys that exist (issue 21): every string in the
project's code that looks like a params key (``section.key`` or ``section.sub.key``,
with ``section`` a section of ``Params``, or ``train``, which users were once told
about and is no section) must be a key or a section of the schema."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

from components.params import Params

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("model", "components", "pipelines", "pix2pixhd")
SECTIONS = tuple(f.name for f in dataclasses.fields(Params)) + ("train",)
# (?<![\w./-]): not the tail of a dotted name (mlflow.tracking...) or of a path
MENTION = re.compile(rf"(?<![\w./-])(?:{'|'.join(SECTIONS)})(?:\.[a-z_][A-Za-z0-9_]*)+")
# file names (model.onnx, segmenter.pth) are not keys
FILE_SUFFIXES = {"pth", "pt", "onnx", "json", "yaml", "yml", "csv", "png", "npz", "txt", "html"}


def schema_keys(cls: type = Params, prefix: str = "") -> set[str]:
    """Every section and key of the schema: {"data", "data.width", "model.generator", ...}."""
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.add(key)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out |= schema_keys(type(default), key + ".")
    return out


def _dict_keys(tree: ast.AST) -> set[int]:
    """ids of string constants used as dict keys (MLflow param names like train.width)."""
    return {
        id(k)
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for k in node.keys
        if isinstance(k, ast.Constant)
    }


def is_module(mention: str) -> bool:
    """model.config, model.datasets.preprocess_size: a module path, not a key."""
    parts = mention.split(".")
    return any(
        (ROOT.joinpath(*parts[:n]).with_suffix(".py")).is_file()
        or (ROOT.joinpath(*parts[:n]) / "__init__.py").is_file()
        for n in range(2, len(parts) + 1)
    )


def mentions(text: str) -> list[str]:
    found = []
    for m in MENTION.finditer(text):
        key = m.group(0)
        if key.rsplit(".", 1)[-1] in FILE_SUFFIXES or is_module(key):
            continue
        found.append(key)
    return found


def source_mentions() -> list[tuple[str, int, str]]:
    """(file, line, mention) of every key-like mention in a string constant or an
    f-string part of the project's code."""
    out = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            keys = _dict_keys(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if id(node) in keys:
                        continue
                    rel = str(path.relative_to(ROOT))
                    out += [(rel, node.lineno, key) for key in mentions(node.value)]
    return out


def test_the_scanner_finds_mentions_and_skips_modules_and_files():
    assert mentions("Try a lower train.lr, or set train_local.lr: 1e-4") == [
        "train.lr",
        "train_local.lr",
    ]
    assert mentions("see model.config and model.datasets.preprocess_size") == []
    assert mentions("model.onnx, segmenter.pth, mlflow.tracking.client") == []
    assert mentions("set model.loss.use_vgg_loss: false") == ["model.loss.use_vgg_loss"]
    assert {"data.width", "model.discriminator.num_D", "train_local"} <= schema_keys()


def test_every_key_named_in_the_code_exists():
    known = schema_keys()
    found = source_mentions()
    assert len(found) > 20  # the scan reads the code (it names many keys)
    wrong = [f"{f}:{line}: {key}" for f, line, key in found if key not in known]
    assert not wrong, "keys that the schema does not have:\n" + "\n".join(wrong)


def test_the_divergence_error_names_the_stage_s_keys():
    """The one message that builds its keys at run time (f-string parts hide them from
    the scan above)."""
    from model.training import Trainer

    fake = SimpleNamespace(
        out_dir=Path("out"),
        _last_saved_step=None,
        state=SimpleNamespace(epoch=0, global_step=3),
        stage="local",
    )
    message = str(Trainer._diverged(fake, "G loss non-finite"))
    assert mentions(message) == ["train_local.lr", "train_local.precision"]
    assert set(mentions(message)) <= schema_keys()
