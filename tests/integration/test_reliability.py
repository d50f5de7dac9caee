"""Issue 11: one parametrised test per failure class, each with several members.

Classes: tracking outage, failed registration, non-finite values and invalid
hyper-parameters, exact --init, atomic writes / unwritable outputs, bad input, content
integrity, edit ids, and the smaller train/promote reports. Fault injection with real
processes, a full tmpfs and a killed MLflow server: tests/integration/test_fault_injection.py.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components import synth
from components.tracking import Tracker
from model.checkpoint import (
    NonFiniteWeights,
    content_hash,
    init_from_checkpoint,
    init_local_from_global,
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from model.config import DiscriminatorConfig, GeneratorConfig
from model.editing import apply_edits
from model.errors import CheckpointError, InputError
from model.fileio import (
    TMP_SUFFIX,
    StagedFiles,
    atomic_open,
    prepare_out_dir,
    write_json,
)
from model.image_io import write_png
from model.pix2pixhd import Pix2PixHD
from pix2pixhd.cli import main
from tests.conftest import tiny_config

# a global-only model small enough to train a few steps in a second
GLOBAL_TINY = [
    "data.width=64",
    "data.height=32",
    "model.generator.n_local_enhancers=0",
    "model.generator.ngf=4",
    "model.generator.n_downsample_global=2",
    "model.generator.n_blocks_global=1",
    "model.discriminator.ndf=4",
    "model.discriminator.n_layers_D=1",
    "model.discriminator.num_D=1",
    "model.loss.use_vgg_loss=false",
]


def _set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


CFG = tiny_config(label_nc=35)  # global generator, 2 D scales, for 64x32 images
SIZE = (64, 32)


def _one_line_error(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if "error" in line or "internal" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _save_tiny(path: Path, cfg=CFG, **extra) -> Path:
    model = Pix2PixHD(cfg, with_discriminator=True)
    return save_checkpoint(path, {**model_payload(model), "image_size": list(SIZE), **extra})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel") / "synth"
    synth.run(root, num_train=2, num_val=2, width=SIZE[0], height=SIZE[1], seed=3)
    return root


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module (creating its tables takes seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()
    return uri


# ---------------------------------------------------------------- 1. tracking outage


class _Blackhole:
    """Accepts TCP connections and never answers (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


class _Status503:
    """Answers every request with HTTP 503."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_error(503)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outage(kind: str, tmp_path: Path):
    """(tracking URI, cleanup) for one member of the outage class."""
    if kind == "http-refused":
        return f"http://127.0.0.1:{_closed_port()}", lambda: None
    if kind == "http-hung":
        hole = _Blackhole()
        return f"http://127.0.0.1:{hole.port}", hole.close
    if kind == "http-503":
        srv = _Status503()
        return f"http://127.0.0.1:{srv.port}", srv.close
    if kind == "postgres-refused":
        return f"postgresql://u:p@127.0.0.1:{_closed_port()}/db", lambda: None
    if kind == "sqlite-no-dir":
        return f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}", lambda: None
    if kind == "sqlite-not-a-db":
        bad = tmp_path / "mlflow.db"
        bad.write_bytes(b"this is not an SQLite database" * 100)
        return f"sqlite:///{bad}", lambda: None
    if kind == "sqlite-is-a-dir":
        (tmp_path / "dir.db").mkdir()
        return f"sqlite:///{tmp_path / 'dir.db'}", lambda: None
    raise AssertionError(kind)


OUTAGES = [
    "http-refused",
    "http-hung",
    "http-503",
    "postgres-refused",
    "sqlite-no-dir",
    "sqlite-not-a-db",
    "sqlite-is-a-dir",
]


@pytest.mark.parametrize("kind", OUTAGES)
def test_tracking_outage_degrades_once_and_fast(kind, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PIX2PIXHD_TRACKING_PROBE_TIMEOUT", "0.5")
    uri, cleanup = _outage(kind, tmp_path)
    try:
        caplog.set_level(logging.WARNING, logger="components.tracking")
        start = time.perf_counter()
        tracker = Tracker(tracking_uri=uri)
        tracker.start("exp", "run", {"stage": "test"})
        for step in range(50):
            tracker.log_metrics({"loss": 1.0}, step)
        tracker.log_artifact(tmp_path)
        tracker.end()
        elapsed = time.perf_counter() - start
    finally:
        cleanup()
    assert tracker.failure is not None and tracker.run_id is None
    warnings = [r for r in caplog.records if "tracking is off" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert elapsed < 3, f"{kind}: {elapsed:.1f} s"


@pytest.mark.parametrize("kind", ["http-refused", "http-hung", "sqlite-not-a-db"])
def test_registry_outage_is_one_line_and_fast(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIX2PIXHD_TRACKING_PROBE_TIMEOUT", "0.5")
    import mlflow  # noqa: F401 (imported before timing: the import is not the outage)

    uri, cleanup = _outage(kind, tmp_path)
    start = time.perf_counter()
    try:
        code = main(["promote", "--model-name", "m", "--tracking-uri", uri])
    finally:
        cleanup()
    assert "cannot reach the model registry" in _one_line_error(capsys, code)
    assert time.perf_counter() - start < 3


# ---------------------------------------------------------------- 2. failed registration


@pytest.mark.parametrize("member", ["unreachable", "hung", "optional", "register-fails"])
def test_failed_registration_is_a_failure(member, sqlite_store, tmp_path, monkeypatch, capsys):
    """export registers the model (given evaluate's evaluation.json): a store it cannot
    reach fails the step before the work, and never leaves a stale registration.json;
    with tracking.optional the registration file says why nothing was registered."""
    monkeypatch.setenv("PIX2PIXHD_TRACKING_PROBE_TIMEOUT", "0.5")
    ckpt = _save_tiny(tmp_path / "g.pth")
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(
        json.dumps({"scores": {"mean_iou": 0.3, "pixel_accuracy": 0.5}, "model_name": "rel"})
    )
    out = tmp_path / "export"
    out.mkdir()
    (out / "registration.json").write_text(json.dumps({"name": "rel", "version": "7"}))
    kind = "http-hung" if member == "hung" else "http-refused"
    uri, cleanup = _outage(kind, tmp_path)
    if member == "register-fails":  # the store answers, registering fails at the end
        import components.export

        uri = sqlite_store
        monkeypatch.setattr(
            components.export,
            "_log_and_register",
            lambda *a, **k: {"registration_failure": "registration failed (MlflowException)"},
        )
    args = ["export", "--checkpoint", str(ckpt), "--out", str(out / "model.onnx"), "--no-fp16"]
    args += ["--evaluation", str(evaluation), "--tracking-uri", uri]
    if member == "optional":
        args += ["--set", "tracking.optional=true"]
    start = time.perf_counter()
    try:
        code = main(args)
    finally:
        cleanup()
    if member == "optional":
        assert code == 0, capsys.readouterr().err
        reg = json.loads((out / "registration.json").read_text())
        assert reg["registered"] is False and "unreachable" in reg["reason"]
        code = main(["promote", "--registration", str(out / "registration.json")])
        assert "was not registered" in _one_line_error(capsys, code)
        return
    assert "cannot register the model" in _one_line_error(capsys, code)
    assert not (out / "registration.json").exists()  # the stale one never survives
    if member != "register-fails":
        assert time.perf_counter() - start < 5  # before the export work
        assert not (out / "model.onnx").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'{"name": "m"}',
        b'{"name": "m", "version": "x1"}',
        b'{"version": "3"}',
        b'{"registered": false, "reason": "store down"}',
    ],
)
def test_malformed_registration_files(content, tmp_path, capsys):
    reg = tmp_path / "registration.json"
    reg.write_bytes(content)
    code = main(["promote", "--registration", str(reg)])
    assert str(reg) in _one_line_error(capsys, code)


# ---------------------------------------------------------------- 3. non-finite values


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["G", "D", "cluster_centers"])
def test_non_finite_weights_never_reach_a_checkpoint(bad, where, tmp_path):
    good = _save_tiny(tmp_path / "latest.pth")
    before = good.read_bytes()
    payload = {**model_payload(Pix2PixHD(CFG, with_discriminator=True)), "image_size": [32, 16]}
    if where == "cluster_centers":
        payload["cluster_centers"] = {26: torch.tensor([[0.0, bad, 1.0]])}
    else:
        name = next(iter(payload[where]))
        payload[where] = {**payload[where], name: torch.full_like(payload[where][name], bad)}
    with pytest.raises(NonFiniteWeights, match="NaN or Inf"):
        save_checkpoint(good, payload)
    assert good.read_bytes() == before  # the last finite checkpoint is kept
    # a non-finite file written by other means is refused on load, naming the file
    sneaky = tmp_path / "sneaky.pth"
    data = {"format": "pix2pixhd-pipeline/checkpoint", "format_version": 1, **payload}
    data["content_sha256"] = content_hash(data)
    torch.save(data, sneaky)
    with pytest.raises(CheckpointError, match="sneaky.pth: weight .* is NaN or Inf"):
        load_checkpoint(sneaky)


@pytest.mark.parametrize("lr", [".inf", "1e30"])  # 1e30: YAML reads it as text
def test_diverging_training_keeps_the_last_finite_checkpoint(lr, data, tmp_path, capsys):
    args = ["train", "--stage", "global", "--data", str(data), "--out", str(tmp_path / "o")]
    sets = [
        *GLOBAL_TINY,
        "train_global.niter=2",
        "train_global.niter_decay=0",
        "train_global.checkpoint_every=1",
        "train_global.log_every=1",
    ]
    if lr != ".inf":
        sets.append(f"train_global.lr={lr}")
        code = main([*args, "--no-tracking", *_set_args(sets)])
        line = _one_line_error(capsys, code)
        assert "NaN or Inf" in line or "non-finite" in line
        latest = tmp_path / "o" / "latest.pth"
        if latest.exists():  # any checkpoint that exists is finite
            ckpt = load_checkpoint(latest)
            assert all(torch.isfinite(v).all() for v in ckpt["G"].values())
    else:  # lr inf is an invalid hyper-parameter: refused before any work
        sets.append("train_global.lr=.inf")
        code = main([*args, "--no-tracking", *_set_args(sets)])
        assert "lr: expected a finite number" in _one_line_error(capsys, code)
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "train_global.lr=0"], "lr must be"),
        (["--set", "train_global.lr=-1e-4"], "lr must be"),
        (["--set", "train_global.lr=.nan"], "train_global.lr: expected a finite number"),
        (["--set", "train_global.batch_size=0"], "batch_size must be"),
        (["--set", "train_global.niter=-1"], "train_global.niter: expected an integer >= 0"),
        (["--set", "train_global.niter=0", "--set", "train_global.niter_decay=0"], "both 0"),
        (["--set", "model.encoder.n_clusters=0"], "n_clusters must be"),
        (["--set", "features.n_clusters=0"], "n_clusters must be"),
        (["--set", "evaluate.batch_size=0"], "batch_size must be"),
        (["--set", "promote.min_delta=-0.1"], "min_delta must be"),
        (["--device", "gpu"], "--device 'gpu'"),
        (["--device", "cuda:x"], "--device 'cuda:x'"),
    ],
)
def test_invalid_hyper_parameters_rejected_before_work(args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--stage", "global", "--data", str(tmp_path / "none"), "--out", str(out)])
    capsys.readouterr()
    assert code == 2  # baseline: a missing data directory
    code = main(
        ["train", "--stage", "global", "--data", str(tmp_path / "none"), "--out", str(out), *args]
    )
    assert expected in _one_line_error(capsys, code)


@pytest.mark.parametrize(
    "cmd",
    [
        ["promote", "--registration", "r.json", "--min-delta", "-1"],
        ["promote", "--registration", "r.json", "--min-delta", "nan"],
        [
            "edit",
            "--checkpoint",
            "c",
            "--labels",
            "l",
            "--instances",
            "i",
            "--out",
            "o",
            "--samples",
            "-1",
        ],
        ["generate", "--checkpoint", "c", "--labels", "l", "--out", "o", "--device", "tpu"],
    ],
)
def test_invalid_options_rejected_before_work(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(cmd)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    line = _one_line_error(capsys, code)
    assert cmd[-2] in line or cmd[-1] in line


def test_nan_scores_never_promoted_nor_blocking(sqlite_store, tmp_path):
    import mlflow

    from components.registry import ALIAS, promote, register_generator

    uri = sqlite_store
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "a"))

    def version(score):
        run = client.create_run(exp)
        return register_generator("m", run.info.run_id, "g", {"mean_iou": score}, {}, uri)

    v_nan = version(math.nan)
    result = promote("m", v_nan, tracking_uri=uri)
    assert not result["promoted"] and "non-finite" in result["reason"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("m", ALIAS)
    # a NaN champion (e.g. set by an older version of this code) does not block
    client.set_registered_model_alias("m", ALIAS, v_nan)
    v_ok = version(0.2)
    result = promote("m", v_ok, min_delta=0.05, tracking_uri=uri)
    assert result["promoted"] and "non-finite" in result["reason"]
    assert str(client.get_model_version_by_alias("m", ALIAS).version) == v_ok
    # and the gate works normally afterwards; the report names min_delta
    v_worse = version(0.21)
    result = promote("m", v_worse, min_delta=0.05, tracking_uri=uri)
    assert not result["promoted"] and result["min_delta"] == 0.05
    assert "+ min_delta 0.05" in result["reason"]


# ---------------------------------------------------------------- 4. --init exact

GLOBAL = tiny_config(
    generator=GeneratorConfig(ngf=8, n_downsample_global=2, n_blocks_global=2),
    discriminator=DiscriminatorConfig(num_D=1, n_layers_D=2, ndf=4),
)


def _local(**g):
    base = dict(ngf=4, n_downsample_global=2, n_blocks_global=2, n_local_enhancers=1)
    return tiny_config(
        generator=GeneratorConfig(**{**base, **g}),
        discriminator=DiscriminatorConfig(num_D=2, n_layers_D=2, ndf=4),
    )


@pytest.mark.parametrize(
    "local_cfg, expected",
    [
        (_local(n_blocks_global=3), "missing from the checkpoint"),
        (_local(n_blocks_global=1), "not in the model"),
        (_local(ngf=8), "of another shape"),
        (_local(n_downsample_global=3), "does not fit"),
    ],
)
def test_init_local_is_exact(local_cfg, expected):
    source = model_payload(Pix2PixHD(GLOBAL, with_discriminator=True))
    target = Pix2PixHD(local_cfg, with_discriminator=True)
    with pytest.raises(CheckpointError, match=expected):
        init_local_from_global(target, source, "g.pth")


def test_init_local_copies_every_global_tensor():
    src_model = Pix2PixHD(GLOBAL, with_discriminator=True)
    target = Pix2PixHD(_local(), with_discriminator=True)
    copied = init_local_from_global(target, model_payload(src_model), "g.pth")
    g_target = target.netG.state_dict()
    shared = [k for k in src_model.netG.state_dict() if k in g_target]
    assert copied["G"] == len(shared) == sum(k.startswith("model.") for k in g_target)
    for k in shared:
        assert torch.equal(g_target[k], src_model.netG.state_dict()[k])


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (tiny_config(label_nc=7), "generator does not fit"),
        (
            tiny_config(generator=GeneratorConfig(ngf=8, n_downsample_global=2, n_blocks_global=2)),
            "missing from the checkpoint",
        ),
        (
            tiny_config(discriminator=DiscriminatorConfig(num_D=3, n_layers_D=2, ndf=8)),
            "discriminator does not fit",
        ),
    ],
)
def test_init_global_finetune_is_exact(cfg, expected):
    source = model_payload(Pix2PixHD(tiny_config(), with_discriminator=True))
    with pytest.raises(CheckpointError, match=expected):
        init_from_checkpoint(Pix2PixHD(cfg, with_discriminator=True), source, "c.pth")
    # the same config loads every tensor; a generator-only file leaves D fresh
    target = Pix2PixHD(tiny_config(), with_discriminator=True)
    copied = init_from_checkpoint(target, {**source, "D": None}, "c.pth")
    assert copied["G"] == len(source["G"]) and copied["D"] == 0
    assert all(torch.equal(target.netG.state_dict()[k], v) for k, v in source["G"].items())


# ---------------------------------------------------------------- 5. atomic writes


class _Boom(RuntimeError):
    pass


def _interrupt_png(path):
    import PIL.Image

    real = PIL.Image.Image.save

    def half(self, fp, *a, **k):
        fp.write(b"\x89PNG half")
        raise _Boom()

    PIL.Image.Image.save = half
    try:
        write_png(path, np.zeros((4, 4, 3), np.uint8))
    finally:
        PIL.Image.Image.save = real


def _interrupt_json(path):
    with atomic_open(path, "w") as f:
        f.write('{"half": ')
        raise _Boom()


def _interrupt_checkpoint(path):
    real = torch.save

    def half(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half")
        raise _Boom()

    torch.save = half
    try:
        _save_tiny(path)
    finally:
        torch.save = real


def _interrupt_staged(path):
    with StagedFiles(path.parent) as staged:
        write_json(staged.path(path.name), {"new": True})
        write_json(staged.path("other.json"), {"new": True})
        raise _Boom()


def _interrupt_onnx(path):
    import onnx

    from model.export import export_onnx

    real = onnx.save

    def half(proto, f, *a, **k):
        f.write(b"\x08\x07 half")
        raise _Boom()

    onnx.save = half
    try:  # a model too small for the exporter's tracing cost to matter
        cfg = tiny_config(
            generator=GeneratorConfig(ngf=2, n_downsample_global=1, n_blocks_global=1)
        )
        export_onnx(Pix2PixHD(cfg, with_discriminator=False).eval(), path)
    finally:
        onnx.save = real


@pytest.mark.parametrize(
    "writer",
    [_interrupt_png, _interrupt_json, _interrupt_checkpoint, _interrupt_staged, _interrupt_onnx],
)
def test_interrupted_writes_leave_the_old_file(writer, tmp_path):
    target = tmp_path / "out" / "file.bin"
    target.parent.mkdir()
    target.write_bytes(b"old content")
    with pytest.raises(_Boom):
        writer(target)
    assert target.read_bytes() == b"old content"
    assert not (tmp_path / "out" / "other.json").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_write_errors_are_one_line(err, tmp_path, monkeypatch):
    import os as _os

    real = _os.replace

    def failing(src, dst):
        raise OSError(err, _os.strerror(err))

    monkeypatch.setattr(_os, "replace", failing)
    with pytest.raises(InputError, match=r"out.json: cannot write: "):
        write_json(tmp_path / "out.json", {})
    monkeypatch.setattr(_os, "replace", real)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "under-a-file", "dev-null"])
def test_unusable_out_found_before_work(kind, tmp_path, capsys):
    if kind == "file":
        out = tmp_path / "f"
        out.write_text("x")
    elif kind == "under-a-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub"
    else:
        out = Path("/dev/null/out")
    code = main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--num-train",
            "1",
            "--num-val",
            "0",
            "--width",
            "64",
            "--height",
            "32",
        ]
    )
    line = _one_line_error(capsys, code)
    assert str(out) in line or str(out.parent) in line


def test_stale_temporaries_are_removed_on_start(tmp_path):
    dead = 2**22 + 12345  # beyond pid_max on most systems: certainly not running
    stale = [
        tmp_path / f".latest.pth.{dead}.abcd1234{TMP_SUFFIX}",
        tmp_path / "sub" / f".samples.png.{dead}.00ff00ff{TMP_SUFFIX}",
        tmp_path / f".staging.{dead}.12345678{TMP_SUFFIX}",
    ]
    stale[1].parent.mkdir()
    stale[0].write_bytes(b"x")
    stale[1].write_bytes(b"x")
    stale[2].mkdir()
    (stale[2] / "metrics.json").write_text("{}")
    live = tmp_path / f".x.{__import__('os').getpid()}.abcd1234{TMP_SUFFIX}"
    live.write_bytes(b"mine")
    keep = tmp_path / "latest.pth"
    keep.write_bytes(b"keep")
    prepare_out_dir(tmp_path)
    assert not any(p.exists() for p in stale)
    assert live.exists() and keep.exists()


# ---------------------------------------------------------------- 6. bad input


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "member",
    ["rgb-label", "bomb-header", "bomb-limit", "not-an-image", "truncated", "rgba-label"],
)
@pytest.mark.parametrize("command", ["generate", "edit"])
def test_bad_input_files_are_one_line(member, command, tmp_path, capsys, monkeypatch):
    ckpt = _save_tiny(tmp_path / "g.pth")
    labels = tmp_path / "labels"
    labels.mkdir()
    bad = labels / "x_gtFine_labelIds.png"
    inst = tmp_path / "insts" / "x_gtFine_instanceIds.png"
    inst.parent.mkdir()
    Image.fromarray(np.full((32, 64), 7000, np.uint16)).save(inst)
    if member == "rgb-label":
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(bad)
    elif member == "rgba-label":
        Image.fromarray(np.zeros((32, 64, 4), np.uint8)).save(bad)
    elif member == "bomb-header":
        bad.write_bytes(_png_header(200_000, 200_000))
    elif member == "bomb-limit":
        Image.fromarray(np.full((32, 64), 7, np.uint8)).save(bad)
        monkeypatch.setenv("PIX2PIXHD_MAX_IMAGE_PIXELS", "100")
    elif member == "not-an-image":
        bad.write_bytes(b"hello")
    else:
        full = tmp_path / "full.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 9, (32, 64), np.uint8)).save(full)
        bad.write_bytes(full.read_bytes()[:60])
    if command == "generate":
        args = ["generate", "--checkpoint", str(ckpt), "--labels", str(labels)]
        args += ["--instances", str(inst.parent), "--engine", "torch"]
    else:
        args = ["edit", "--checkpoint", str(ckpt), "--labels", str(bad), "--instances", str(inst)]
    code = main([*args, "--out", str(tmp_path / "o")])
    assert "x_gtFine_labelIds.png" in _one_line_error(capsys, code)


def test_non_utf8_file_names_and_edit_files(tmp_path, capsys):
    import os

    ckpt = _save_tiny(tmp_path / "g.pth", cfg=tiny_config(label_nc=35, use_instance_map=False))
    labels = tmp_path / "labels"
    labels.mkdir()
    name = os.fsdecode(b"caf\xe9_gtFine_labelIds.png")  # Latin-1 bytes: not UTF-8
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(labels / name)  # and RGB: bad
    code = main(
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "torch",
        ]
    )
    assert "caf" in _one_line_error(capsys, code)
    # an edits file in Latin-1
    lab, inst = tmp_path / "l.png", tmp_path / "i.png"
    Image.fromarray(np.full((32, 64), 7, np.uint8)).save(lab)
    Image.fromarray(np.full((32, 64), 7, np.uint16)).save(inst)
    edits = tmp_path / "edits.json"
    edits.write_bytes(
        '{"edits": [{"op": "relabel", "from": "road", "to": "caf\xe9"}]}'.encode("latin-1")
    )
    code = main(
        [
            "edit",
            "--checkpoint",
            str(ckpt),
            "--labels",
            str(lab),
            "--instances",
            str(inst),
            "--edits",
            str(edits),
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert "not UTF-8" in _one_line_error(capsys, code)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"train_global:\n  lr: 0.0002 # caf\xe9\n", "not UTF-8"),
        (b"train_global: [1, 2", "not valid YAML"),
        (b"- a list", "expected a mapping"),
    ],
)
def test_bad_params_files(content, expected, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_bytes(content)
    code = main(
        ["train", "--stage", "global", "--params", str(params), "--data", "d", "--out", "o"]
    )
    line = _one_line_error(capsys, code)
    assert "params.yaml" in line and expected in line


@pytest.mark.parametrize("suffix", [".png", ".PNG", ".Png", ".pNg"])
@pytest.mark.parametrize("layout", ["cityscapes", "folder"])
def test_extensions_in_any_case_in_every_layout(suffix, layout, tmp_path):
    from model.datasets import find_samples
    from model.image_io import list_role

    root = tmp_path / "d"
    if layout == "cityscapes":
        paths = {
            "label": root / "gtFine/train/c/a_000001_000019_gtFine_labelIds",
            "instance": root / "gtFine/train/c/a_000001_000019_gtFine_instanceIds",
            "image": root / "leftImg8bit/train/c/a_000001_000019_leftImg8bit",
        }
    else:
        paths = {
            r: root / f"train_{d}/a_000001"
            for r, d in (("label", "label"), ("instance", "inst"), ("image", "img"))
        }
    for role, p in paths.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = np.zeros((32, 64, 3), np.uint8) if role == "image" else np.zeros((16, 32), np.uint8)
        Image.fromarray(arr).save(p.with_name(p.name + suffix), format="PNG")
    samples = find_samples(root, layout, "train")
    assert len(samples) == 1 and all([samples[0].label, samples[0].instance, samples[0].image])
    assert len(list_role(paths["label"].parent, "label")) == 1


def test_unexpected_exception_is_one_line_and_a_log(tmp_path, capsys, monkeypatch):
    import components.synth

    def bug(**kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("PIX2PIXHD_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(components.synth, "run", bug)
    code = main(["data", "synth", "--out", str(tmp_path / "o")])
    line = _one_line_error(capsys, code, expected_code=1)
    assert "ZeroDivisionError: a bug" in line
    log = Path(line.rsplit(" ", 1)[-1].rstrip(")"))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()


# ---------------------------------------------------------------- 7. integrity


def _tensor_record_span(path: Path) -> tuple[int, int]:
    """(start, length) of the largest tensor data record inside a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_flipped_bytes_in_checkpoint_tensors_name_the_file(where, tmp_path):
    ckpt = _save_tiny(tmp_path / "model.pth")
    start, size = _tensor_record_span(ckpt)
    raw = bytearray(ckpt.read_bytes())
    raw[start + int(where * (size - 1))] ^= 0x5A
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model.pth: .*(hash mismatch|not a readable)"):
        load_checkpoint(ckpt)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    from model.export import export_onnx

    model = Pix2PixHD(tiny_config(), with_discriminator=False).eval()
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_bytes_in_onnx_weights_name_the_file(where, onnx_file, tmp_path):
    import onnx

    from model.export import load_verified

    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_file.read_bytes())
    proto, raw = load_verified(path), path.read_bytes()  # intact: verifies
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    at = raw.find(init.raw_data)
    assert at > 0
    flipped = bytearray(raw)
    flipped[at + int(where * (len(init.raw_data) - 1))] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"m.onnx: .*hash mismatch"):
        load_verified(path)
    assert onnx.load(str(path))  # onnx itself would load the corrupted file happily


# ---------------------------------------------------------------- 8. edit ids


@pytest.mark.parametrize(
    "existing, label, expected",
    [
        ([26999], "car", range(26000, 26999)),
        ([26000, 26001, 26999], "car", [26002]),
        ([], "truck", [27000]),
        ([24998, 24999], "person", range(24000, 24998)),
    ],
)
def test_new_instance_ids_stay_in_their_class_range(existing, label, expected, tmp_path):
    lab = np.full((8, 8), 7, np.int64)
    inst = lab.copy()
    for i, iid in enumerate(existing):
        lab[i, :4], inst[i, :4] = iid // 1000, iid
    mask = np.zeros((8, 8), bool)
    mask[6:, 6:] = True
    res = apply_edits(
        lab, inst, {"edits": [{"op": "add", "mask": "m", "label": label}]}, 35, lambda m: mask
    )
    new = int(res.instance[7, 7])
    assert new in expected and new not in existing
    assert new // 1000 == res.label[7, 7]


def test_class_range_full_is_an_error():
    lab = np.full((40, 25), 26, np.int64)
    inst = 26000 + np.arange(1000).reshape(40, 25)
    mask = np.zeros_like(lab, bool)
    mask[0, 0] = True
    with pytest.raises(InputError, match="no free instance ids"):
        apply_edits(
            lab, inst, {"edits": [{"op": "add", "mask": "m", "label": "car"}]}, 35, lambda m: mask
        )


@pytest.mark.parametrize("to", ["truck", "bus", "car"])
def test_relabelling_a_thing_class_keeps_instances_apart(to):
    lab = np.full((4, 12), 7, np.int64)
    inst = lab.copy()
    for k in range(3):
        lab[:2, 4 * k : 4 * k + 3] = 26
        inst[:2, 4 * k : 4 * k + 3] = 26000 + k
    res = apply_edits(lab, inst, {"edits": [{"op": "relabel", "from": "car", "to": to}]}, 35)
    ids = sorted({int(v) for v in np.unique(res.instance[lab == 26])})
    cls = {"truck": 27, "bus": 28, "car": 26}[to]
    assert len(ids) == 3 and all(i // 1000 == cls for i in ids)


# ---------------------------------------------------------------- 9. smaller


@pytest.mark.parametrize("log_every", [1000, 7])
def test_losses_csv_even_when_log_every_exceeds_the_run(log_every, data, tmp_path):
    sets = [
        *GLOBAL_TINY,
        "train_global.niter=1",
        "train_global.niter_decay=0",
        f"train_global.log_every={log_every}",
        "train_global.sample_every=0",
    ]
    out = tmp_path / "o"
    code = main(
        [
            "train",
            "--stage",
            "global",
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-tracking",
            *_set_args(sets),
        ]
    )
    assert code == 0
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and rows[-1].startswith("2,")  # 2 samples, batch 1


@pytest.mark.parametrize("role", ["label", "instance", "image"])
def test_train_on_size_mismatched_data_is_validates_error(role, data, tmp_path, capsys):
    import shutil

    from model.datasets import find_samples

    copy = tmp_path / "d"
    shutil.copytree(data, copy)
    s = find_samples(copy, "cityscapes", "train")[0]
    path = {"label": s.label, "instance": s.instance, "image": s.image}[role]
    img = Image.open(path)
    img.resize((img.width * 2, img.height)).save(path)
    code = main(
        [
            "train",
            "--stage",
            "global",
            "--data",
            str(copy),
            "--out",
            str(tmp_path / "o"),
            "--no-tracking",
            "--set",
            "data.width=64",
            "--set",
            "data.height=32",
            "--set",
            "model.generator.n_local_enhancers=0",
            "--set",
            "model.loss.use_vgg_loss=false",
        ]
    )
    line = _one_line_error(capsys, code)
    assert "sizes differ" in line and f"{role} 128x32" in line
    code = main(["validate", "--data", str(copy), "--out", str(tmp_path / "v")])
    capsys.readouterr()
    report = (tmp_path / "v" / "report.txt").read_text()
    bad_file = line.split("error: ", 1)[1].split(": sizes differ", 1)[0]
    flagged = [r for r in report.splitlines() if r.startswith(bad_file) and "sizes differ" in r]
    assert flagged, report  # validate flags the same sample for the same reason


@pytest.mark.parametrize("member", ["no-bucket", "no-credentials", "unreachable"])
def test_s3_output_checked_before_work(member, s3, monkeypatch, capsys):
    _, bucket = s3
    uri = f"s3://{bucket}/out/"
    if member == "no-bucket":
        uri = "s3://no-such-bucket-i11/out/"
    elif member == "no-credentials":
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(var)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    code = main(
        ["data", "synth", "--out", uri, "--num-train", "1000", "--width", "512", "--height", "256"]
    )
    line = _one_line_error(capsys, code)
    assert uri.rstrip("/").split("/")[2] in line
    assert time.perf_counter() - start < 30  # before rendering 1000 scenes (minutes)
