"""Hostile params files and values (issue 22, classes 1, 4, 5): each refused with one
line of at most 300 characters naming the file or key, before any work."""

from __future__ import annotations

import time

import pytest

from pix2pixhd.cli import main

LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)).replace(
    "l1: &l1 [*l0", "l1: &l1 [x"
)  # 9**8 strings if expanded
CASES = {
    "aliases": "l0: &l0 x\n" + LAUGHS + "data: {width: 64}\n",
    "tag": "data: !!python/object/apply:os.system [echo]\n",
    "syntax": "data: {width: [1,\n",
    "deep": "data: " + "[" * 5000 + "]" * 5000 + "\n",
    "type": "data: {label_nc: abc}\n",
    "nan": "validate: {drift_ratio: .nan}\n",
    "budget": "data: {width: 1000000000}\n",
    "zero scales": "model: {discriminator: {num_D: 0}}\n",
    "long value": "data: {layout: " + "x" * 1_000_000 + "}\n",
}


def _refused(capsys, argv) -> str:
    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and len(err) <= 300, err[:400]
    assert time.perf_counter() - start < 5
    return err


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_params_file_is_one_line(name, tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(CASES[name])
    err = _refused(
        capsys,
        ["validate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--params", str(path)],
    )
    assert str(path) in err or "data." in err or "validate." in err or "discriminator" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_non_utf8_params_file(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe data: 1")
    err = _refused(
        capsys,
        ["validate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--params", str(path)],
    )
    assert "not UTF-8" in err


@pytest.mark.parametrize(
    "setting", ["validate.drift_ratio=nan", "data.width=1000000000", "data.num_train=-3"]
)
def test_a_senseless_override_is_refused(setting, tmp_path, capsys):
    err = _refused(capsys, ["data", "synth", "--out", str(tmp_path / "o"), "--set", setting])
    assert setting.split("=")[0].split(".")[-1] in err


def test_resume_without_a_checkpoint_yet_starts_from_init(tmp_path, capsys):
    """--resume with --init (a restartable job's command line): nothing to resume in OUT
    yet, so --init is used, and a missing one is named."""
    argv = ["train", "--stage", "local", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    synth_dir = tmp_path / "d"
    small = ["data.num_train=2", "data.num_val=1", "data.width=128", "data.height=64"]
    assert main(["data", "synth", "--out", str(synth_dir), *(f"--set={s}" for s in small)]) == 0
    capsys.readouterr()
    argv[argv.index(str(tmp_path))] = str(synth_dir)
    sets = [f"--set={s}" for s in (*small, "model.loss.use_vgg_loss=false")]
    err = _refused(capsys, [*argv, *sets, "--init", str(tmp_path / "g.pth"), "--resume"])
    assert "g.pth" in err
