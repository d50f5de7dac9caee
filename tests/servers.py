"""Real servers for tests: a private PostgreSQL 15 cluster and MLflow tracking servers.

PostgreSQL runs from the machine's Debian binaries (``initdb`` + ``pg_ctl``) in a
temporary directory on a free loopback port: no system service, nothing left behind.
``mlflow server`` uses a database of that cluster as its backend store and proxies
artifacts to the loopback S3 (moto) server, the same shape as the cluster stack in
``infra/k8s/base`` (PostgreSQL + MinIO + MLflow).

Fixtures (session-scoped, shared: a server takes ~20 s to start):

- ``postgres``: the running cluster (``Postgres``); skipped with one line when it
  cannot start (no binaries: ``apt-get install postgresql``).
- ``mlflow_server``: one shared ``MlflowServer`` (its ``url`` is a tracking URI). Tests
  must use their own experiment and registered-model names.
- ``start_mlflow_server``: a factory for a private server on a fresh database (for
  tests that stop or kill it: ``server.kill()``, ``server.start()`` again on the same
  port and store). Servers it made are stopped at the end of the session.

The fixtures are registered in ``tests/conftest.py`` (``from tests.servers import *``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_VERSION = "15"
BACKEND_SCHEME = "postgresql+psycopg2"
ACCESS_KEY = "testing"  # moto accepts any credentials; these are not secrets


def pg_bindir() -> Path | None:
    """Directory with initdb/pg_ctl: $PIX2PIXHD_PG_BIN, Debian's layout, or PATH."""
    candidates = [os.environ.get("PIX2PIXHD_PG_BIN", ""), f"/usr/lib/postgresql/{PG_VERSION}/bin"]
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class Postgres:
    """A private PostgreSQL cluster. As root, it runs as the ``postgres`` system user
    (initdb refuses root); trust authentication on 127.0.0.1 only."""

    bindir: Path
    root: Path
    port: int = field(default_factory=free_port)
    user: str = "pix2pixhd"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kw = {"user": "postgres"} if os.geteuid() == 0 else {}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            cwd=self.root,
            **kw,
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-o", opts, "-l", str(self.root / "log"), "-w",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg2 named: SQLAlchemy 2.1 defaults to psycopg 3), the
        scheme infra/k8s/base/mlflow.yaml uses too."""
        return f"{BACKEND_SCHEME}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.root / "log").read_text().splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1: ``backend`` store, artifacts proxied to
    ``artifacts`` (an s3:// URI on the loopback S3 server ``s3_endpoint``)."""

    backend: str
    artifacts: str
    s3_endpoint: str
    log_path: Path
    port: int = field(default_factory=free_port)
    workers: int = 1  # one uvicorn process: no supervisor restarting slow workers
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=ACCESS_KEY,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def start(self, timeout: float = 120) -> None:
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend,
            "--artifacts-destination", self.artifacts,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )
        log.close()
        try:
            wait_http(f"{self.url}/health", timeout, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"mlflow server did not start: {exc}\n{tail}") from None

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the server and its workers: its own group

    def kill(self) -> None:
        """SIGKILL the server and its workers (an outage, not a clean shutdown)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    root = Path(tempfile.mkdtemp(prefix="pix2pixhd-pg-"))  # not under pytest's 0700 dirs
    pg = Postgres(bindir, root)
    try:
        pg.start()
    except (subprocess.SubprocessError, OSError, KeyError) as exc:
        detail = getattr(exc, "stderr", "") or pg.log_tail(3)
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start: {' '.join(str(detail or exc).split())[:200]}")
    yield pg
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _s3_for_mlflow(s3_server: str) -> str:
    """A bucket for MLflow artifacts on the loopback S3 server."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=ACCESS_KEY,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="mlflow-artifacts")
    return "s3://mlflow-artifacts"


@pytest.fixture(scope="session")
def start_mlflow_server(
    postgres: Postgres, s3_server: str, _s3_for_mlflow: str, tmp_path_factory
) -> Iterator[Callable[..., MlflowServer]]:
    started: list[MlflowServer] = []
    logs = tmp_path_factory.mktemp("mlflow-server")

    def start(name: str | None = None, workers: int = 1) -> MlflowServer:
        name = name or f"mlflow{len(started)}"
        server = MlflowServer(
            backend=postgres.create_database(name),
            artifacts=f"{_s3_for_mlflow}/{name}",
            s3_endpoint=s3_server,
            log_path=logs / f"{name}.log",
            workers=workers,
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(start_mlflow_server: Callable[..., MlflowServer]) -> MlflowServer:
    """The shared tracking server: PostgreSQL backend store, artifacts on S3."""
    return start_mlflow_server("mlflow")


@pytest.fixture
def mlflow_uri(mlflow_server: MlflowServer, monkeypatch) -> Iterator[str]:
    """The shared server as this test's tracking (and registry) URI, environment and
    fluent API both; restored afterwards."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    yield mlflow_server.url
    with contextlib.suppress(Exception):
        while mlflow.active_run() is not None:
            mlflow.end_run()
    mlflow.set_tracking_uri("")
