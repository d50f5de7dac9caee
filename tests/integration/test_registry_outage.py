"""Resolving models:/NAME@ALIAS against a tracking server that refuses: one line naming
the URI within seconds (issue 22, class 3; it took 250 s of urllib3 retries), in serve
and in generate alike."""

from __future__ import annotations

import socket
import time

import pytest

from pix2pixhd.cli import main


@pytest.fixture
def refused() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_a_refusing_tracking_server_fails_in_seconds(command, refused, tmp_path, capsys):
    argv = [command, "--model", "models:/generator@champion", "--tracking-uri", refused]
    if command == "generate":
        argv = [
            command,
            "--model",
            "models:/generator@champion",
            "--labels",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    import mlflow

    start = time.perf_counter()
    # An earlier test in this process may have set MLflow's global URI, which shadows the
    # environment (a fresh `pix2pixhd generate` process has none): set both.
    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", refused)
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            mp.delenv(key, raising=False)
        mlflow.set_tracking_uri(refused)
        try:
            code = main(argv)
        finally:
            mlflow.set_tracking_uri(before)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and refused.split("//")[1] in err[0], err
    assert time.perf_counter() - start < 30
