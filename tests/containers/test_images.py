"""Each component from the image alone: the CLI, a tiny synth -> validate -> train (global)
on mounted directories, as the image's unprivileged user, with the exit codes and
one-line errors of the same commands run outside."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pix2pixhd.cli import main


def docker_run(image: str, host_dir: Path, *cmd: str) -> subprocess.CompletedProcess:
    """``cmd`` in a fresh container of ``image``: no network, ``host_dir`` mounted at the
    same path, the user that pipelines.containers gives kfp's tasks."""
    from pipelines.containers import container_user

    user = container_user(host_dir)
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", user]
        + ["-v", f"{host_dir}:{host_dir}", "-w", str(host_dir), image, *cmd],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_cli_help_runs_in_the_image_as_an_unprivileged_user(images, variant, shared_dir):
    out = docker_run(images[variant], shared_dir, "pix2pixhd", "--help")
    assert out.returncode == 0, out.stderr
    for command in ("train", "validate", "evaluate", "export", "pipeline"):
        assert command in out.stdout
    # who runs, and that HOME and the caches are writable for that user
    probe = docker_run(
        images[variant],
        shared_dir,
        "sh",
        "-c",
        'id -u; touch "$HOME/x" "$XDG_CACHE_HOME/x" && mkdir -p "$PIX2PIXHD_CACHE" && echo ok',
    )
    assert probe.returncode == 0, probe.stderr
    uid, ok = probe.stdout.split()
    assert int(uid) != 0 and ok == "ok"


def test_image_carries_no_tests_data_or_build_caches(images, shared_dir):
    out = docker_run(
        images["cpu"],
        shared_dir,
        "sh",
        "-c",
        "ls /opt/pix2pixhd; ls -d /root/.cache /opt/pix2pixhd/build 2>/dev/null; "
        # (Debian's ensurepip wheels in /usr/share/python-wheels belong to python3-venv)
        "find / -xdev -name '*.whl' -not -path '/usr/share/python-wheels/*' 2>/dev/null "
        "| head -n 3; echo end",
    )
    listed = out.stdout.split()
    assert listed[-1] == "end"
    assert set(listed[:-1]) <= {"README.md", "components", "model", "pipelines", "setup.cfg"} | {
        "pyproject.toml",
        "pix2pixhd",
    }


def test_synth_validate_train_from_the_image(images, shared_dir, capsys):
    image = images["cpu"]
    d = shared_dir
    steps = [
        ["data", "synth", "--out", f"{d}/synth", "--num-train", "4", "--num-val", "2"],
        ["validate", "--data", f"{d}/synth", "--out", f"{d}/validate"],
        ["train", "--stage", "global", "--data", f"{d}/synth", "--out", f"{d}/global"]
        + ["--data-summary", f"{d}/validate/summary.json", "--no-tracking"]
        + ["--set", "data.width=128", "--set", "data.height=64"]
        + ["--set", "model.generator.ngf=4", "--set", "model.generator.n_blocks_global=1"]
        + ["--set", "train_global.niter=2", "--set", "train_global.niter_decay=0"]
        + ["--set", "train_global.batch_size=2", "--set", "model.discriminator.ndf=8"]
        + ["--set", "model.loss.use_vgg_loss=false"],
    ]
    steps[0] += ["--width", "128", "--height", "64"]
    for args in steps:
        out = docker_run(image, d, "pix2pixhd", *args)
        assert out.returncode == 0, f"{args[0]}: {out.stderr[-2000:]}"
    summary = json.loads((d / "validate" / "summary.json").read_text())
    assert summary["samples"] == 6
    metrics = json.loads((d / "global" / "metrics.json").read_text())
    assert metrics  # the training loop ran and wrote its metrics
    assert (d / "global" / "latest.pth").stat().st_size > 10_000
    # the files belong to the container's user, who can be told apart from root here
    assert (d / "global" / "latest.pth").stat().st_uid == (d.stat().st_uid)


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--data", "{d}/missing", "--out", "{d}/report"],
        ["train", "--stage", "global", "--data", "{d}/missing", "--out", "{d}/o", "--set", "x=1"],
        ["data", "synth", "--out", "{d}/s", "--width", "64by32"],
    ],
)
def test_bad_input_fails_with_the_same_one_line_error_as_outside(images, shared_dir, args, capsys):
    args = [a.format(d=shared_dir) for a in args]
    inside = docker_run(images["cpu"], shared_dir, "pix2pixhd", *args)
    try:
        outside_code = main(args)
    except SystemExit as exc:  # argparse's own errors
        outside_code = exc.code
    outside_err = capsys.readouterr().err.strip()
    assert inside.returncode == outside_code == 2
    # the same text (argparse's usage lines included), the error itself one line
    assert inside.stderr.strip() == outside_err
    assert "Traceback" not in inside.stderr
    assert inside.stderr.strip().splitlines()[-1].startswith(f"pix2pixhd {args[0]}")
