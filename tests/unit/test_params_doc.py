"""docs/params.md is generated from the schema (issue 21): every section and key, with
type, default and a meaning written beside the field in its dataclass."""

from __future__ import annotations

import dataclasses

from components.params import Params, flatten
from components.params_doc import DOC, field_docs, main, params_markdown, params_reference
from model.config import TrainConfig


def test_every_section_and_key_has_a_meaning():
    rows = params_reference()
    keys = [r.key for r in rows if not r.section]
    assert keys == list(flatten(Params()))  # every key, in the schema's order
    sections = {r.key for r in rows if r.section}
    assert {f.name for f in dataclasses.fields(Params)} <= sections
    assert {"model.generator", "model.discriminator", "model.encoder", "model.loss"} <= sections
    undocumented = [r.key for r in rows if not r.meaning.strip()]
    assert not undocumented, f"fields without a meaning: {undocumented}"


def test_meanings_come_from_the_comments_beside_or_above_a_field():
    docs = field_docs(TrainConfig)
    assert docs["niter"] == "epochs at the initial learning rate"  # trailing
    assert docs["precision"].startswith("fp32 | bf16 | fp16")  # the lines above
    # defaults are Params()'s: train_local's differ from TrainConfig's own
    row = {r.key: r for r in params_reference()}
    assert (row["train_global.niter"].default, row["train_local.niter"].default) == (100, 50)
    assert row["model.generator.ngf"].default == 32


def test_the_committed_reference_is_what_the_generator_writes(tmp_path):
    assert DOC.read_text(encoding="utf-8") == params_markdown(), (
        "docs/params.md is stale: run python -m components.params_doc"
    )
    out = tmp_path / "params.md"
    assert main(["--out", str(out)]) == 0 and main(["--out", str(out), "--check"]) == 0
    out.write_text("old")
    assert main(["--out", str(out), "--check"]) == 1
