"""Issue 11: a step's outputs are replaced as one set. A run that fails after writing
all but its last file (the last writer raises) leaves the previous complete set, byte
for byte, and no temporaries."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from components import synth
from model.checkpoint import model_payload, save_checkpoint
from model.config import GeneratorConfig
from model.fileio import TMP_SUFFIX
from model.pix2pixhd import Pix2PixHD
from tests.conftest import save_tiny_segmenter, tiny_config

SIZE = (64, 32)


class _Boom(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, generator checkpoint and segmenter."""
    root = tmp_path_factory.mktemp("sets")
    data = root / "synth"
    synth.run(data, num_train=2, num_val=2, width=SIZE[0], height=SIZE[1], seed=5)
    gen = GeneratorConfig(ngf=2, n_downsample_global=1, n_blocks_global=1)
    model = Pix2PixHD(tiny_config(label_nc=35, generator=gen), with_discriminator=False)
    ckpt = save_checkpoint(root / "g.pth", {**model_payload(model), "image_size": list(SIZE)})
    seg = save_tiny_segmenter(root / "seg.pth")
    return {"data": data, "checkpoint": ckpt, "segmenter": seg}


def _evaluate(inputs: dict[str, Path], out: Path) -> None:
    from components import evaluate

    evaluate.run(inputs["checkpoint"], inputs["segmenter"], inputs["data"], out, tracking=False)


def _export(inputs: dict[str, Path], out: Path) -> None:
    from components import export

    export.run(inputs["checkpoint"], out / "model.onnx", fp16=True, tracking=False)


def _validate(inputs: dict[str, Path], out: Path) -> None:
    from components import validate

    validate.run(inputs["data"], out, size_multiple=2)


# step -> (run it, the files of its set, the last one written by the module's write_json)
STEPS = {
    "evaluate": (
        _evaluate,
        [
            "metrics.json",
            "iou_per_class.csv",
            "confusion_matrix.json",
            "samples.png",
            "evaluation.json",
        ],
        "components.evaluate",
    ),
    "export": (
        _export,
        ["model.onnx", "model_fp16.onnx", "metrics.json", "export_summary.json"],
        "components.export",
    ),
    "validate": (
        _validate,
        [
            "great_expectations_result.json",
            "great_expectations_result.html",
            "metrics.json",
            "summary.json",
            "manifest.json",
        ],
        "components.validate",
    ),
}


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_failed_run_leaves_the_previous_set(step, inputs, tmp_path, monkeypatch):
    run, names, module = STEPS[step]
    out = tmp_path / "out"
    out.mkdir()
    for name in names:  # the previous set (its content does not matter here)
        (out / name).write_bytes(f"previous {name}\n".encode())
    before = _snapshot(out)
    real = importlib.import_module(module).write_json
    last, reached = names[-1], []

    def failing(path, *args, **kwargs):
        if Path(path).name == last:
            reached.append(path)
            raise _Boom(f"injected failure writing {last}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(f"{module}.write_json", failing)
    with pytest.raises(_Boom):
        run(inputs, out)
    assert reached  # the run got as far as its last file
    assert _snapshot(out) == before  # every file of the old set, none of the new
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))
