"""Files written whole or not at all, and read with one-line errors.

Every file a step writes (PNG, JSON, CSV, HTML, ONNX, checkpoints) goes through
``atomic_open``: the bytes go to a temporary file in the destination's directory,
are flushed to disk, and the temporary is renamed over the destination, so a reader
(or a run killed at any moment) never sees half a file. Temporaries carry the writer's
process id; ``clean_stale`` removes those of processes that no longer run.

Problems the user can fix (a full disk, a read-only or wrong-type output, a file that
is not UTF-8 or not JSON) become ``InputError`` s naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from model.errors import InputError, quote

log = logging.getLogger(__name__)

TMP_SUFFIX = ".pix2pixhd-tmp"
_USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EISDIR: "is a directory, expected a file",
    errno.EEXIST: "exists and is not a directory",
    errno.EFBIG: "file too large for the file system",
}


def os_error(exc: BaseException, path: str | Path) -> InputError | None:
    """The one-line error for an OSError the user can fix (full disk, read-only ...),
    also when a library wrapped it in another exception (torch.save raises a
    RuntimeError after ENOSPC); None for anything else (a bug, kept as it is)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _USER_ERRNOS:
            return InputError(f"{path}: cannot write: {_USER_ERRNOS[cause.errno]}")
        cause = cause.__cause__ or cause.__context__
    return None


def _tmp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed to ``path`` when the block succeeds,
    removed when it fails. For writers that want a file name (``onnx.save`` ...)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (os_error(exc, path.parent) or exc) from None
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    tmp = _tmp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        user = os_error(exc, path) if isinstance(exc, Exception) else None
        if user is not None:
            raise user from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose content replaces ``path`` only when the block succeeds."""
    if not mode.startswith("w"):
        raise ValueError("atomic_open writes whole files: mode must start with 'w'")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def numbers_only(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a (nested) summary, for a metrics file: nested mappings keep their
    numbers, everything else (paths, ids, names, sentences, flags, lists) is left out,
    so ``{"a": {"x": 1, "path": "p"}, "id": "r"}`` -> ``{"a": {"x": 1}}``."""
    numbers: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            nested = numbers_only(value)
            if nested:
                numbers[key] = nested
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers[key] = value
    return numbers


def without_timings(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``summary`` without wall-clock numbers, those numbers): DVC-tracked files hold no
    timings, so the same inputs give the same bytes; timings go to ``timings.json``,
    which no stage declares."""
    timing = {
        k: v
        for k, v in summary.items()
        if k == "seconds" or k.startswith(("seconds_", "allreduce_"))
    }
    return {k: v for k, v in summary.items() if k not in timing}, timing


def write_metrics(path: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write the numbers of ``summary`` to the metrics file ``path`` (the whole summary,
    with its paths and ids, goes to a JSON file of its own); returns them."""
    numbers = numbers_only(summary)
    write_json(path, numbers)
    return numbers


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(directory: str | Path) -> int:
    """Remove temporaries left in ``directory`` (recursively) by killed writers."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for p in sorted(directory.rglob(f".*{TMP_SUFFIX}"), key=lambda p: -len(p.parts)):
        parts = p.name.removesuffix(TMP_SUFFIX).rsplit(".", 2)
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("%s: removed %d temporaries of interrupted runs", directory, removed)
    return removed


def prepare_out_dir(out: str | Path) -> Path:
    """Create the output directory, check that it can be written (before any work),
    and remove temporaries of killed runs."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory (--out expects a directory)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = _tmp_path(out / "write-probe")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise (os_error(exc, out) or exc) from None
    clean_stale(out)
    return out


def prepare_out_file(out: str | Path) -> Path:
    """As ``prepare_out_dir`` for a file output: its directory must be writable."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a directory (--out expects a file name)")
    prepare_out_dir(out.parent)
    return out


LOCK_NAME = ".pix2pixhd.lock"


class OutputLock:
    """An exclusive lock on an output directory for the life of a run: a second writer
    gets one line naming the holder instead of two runs mixing their files. The lock is
    ``flock`` on ``<out>/.pix2pixhd.lock`` (released by the kernel when the holder exits,
    even when killed); the file names the holder's pid and host."""

    def __init__(self, out: str | Path) -> None:
        import fcntl
        import socket

        self.path = Path(out) / LOCK_NAME
        self._fd = -1  # __del__ runs even when __init__ raises: nothing of ours to close
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise (os_error(exc, out) or exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text(errors="replace").strip()[:80] or "another process"
            os.close(fd)  # closed once, here: a later __del__ must not close a reused number
            raise InputError(
                f"{out}: another run is writing here ({holder}); wait for it to finish or "
                "choose another --out"
            ) from None
        self._fd = fd
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class StagedFiles:
    """Several output files replaced together. ``path(name)`` is where to write each one:
    a hidden staging directory inside ``out`` (same file system), so files keep their
    names (e.g. for logging them as artifacts before they are published); ``commit()``
    renames them all into ``out`` at the end. On failure, or without ``commit()``, the
    staging directory is removed and the previous outputs stay as they were."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.dir = self.out / f".staging.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
        try:
            self.dir.mkdir(parents=True)
        except OSError as exc:
            raise (os_error(exc, self.out) or exc) from None
        self._names: list[str] = []

    def path(self, name: str) -> Path:
        if name not in self._names:
            self._names.append(name)
        return self.dir / name

    def commit(self) -> list[Path]:
        try:
            for name in self._names:
                with open(self.dir / name, "rb+") as f:
                    os.fsync(f.fileno())
            for name in self._names:
                os.replace(self.dir / name, self.out / name)
        except OSError as exc:
            self.discard()
            raise (os_error(exc, self.out) or exc) from None
        done = [self.out / n for n in self._names]
        self.discard()
        return done

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self._names = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def read_text(path: str | Path, what: str = "file") -> str:
    """UTF-8 text of ``path``; a missing or non-UTF-8 file is one line naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a {what}") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: {what} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


#: the largest YAML or JSON document a user hands over (params, suites, palettes, edits)
MAX_DOCUMENT_BYTES = 4 * 2**20
MAX_YAML_DEPTH = 64


def load_yaml(text: str, source: str) -> Any:
    """A YAML document as plain data, refusing what a config file never needs and an
    attacker would use: anchors and aliases (a few hundred bytes of nested aliases
    expand to gigabytes), tags, documents over ``MAX_DOCUMENT_BYTES``, nesting deeper
    than Python's recursion limit. Every refusal is one line naming ``source``."""
    import yaml

    from model.errors import ConfigError

    if len(text) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes, more than {MAX_DOCUMENT_BYTES} allowed")
    opening = (
        yaml.FlowSequenceStartToken,
        yaml.FlowMappingStartToken,
        yaml.BlockSequenceStartToken,
        yaml.BlockMappingStartToken,
    )
    closing = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)
    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            depth += isinstance(token, opening) - isinstance(token, closing)
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep")
            if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
                kind = "anchors and aliases (&, *)"
                raise ConfigError(f"{source}: YAML {kind} are not allowed in this file")
            if isinstance(token, yaml.TagToken):
                raise ConfigError(f"{source}: YAML tags (!...) are not allowed in this file")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {str(problem)[:120]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def read_json(
    path: str | Path,
    what: str = "JSON file",
    required: dict[str, type | tuple[type, ...]] | None = None,
) -> Any:
    """A JSON document; with ``required``, an object with those keys of those types."""
    text = read_text(path, what)
    if len(text) > MAX_DOCUMENT_BYTES:
        raise InputError(f"{path}: {what} of {len(text)} bytes, more than {MAX_DOCUMENT_BYTES}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: {what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: {what} is nested too deeply") from None
    if required:
        if not isinstance(data, dict):
            raise InputError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
        for key, types in required.items():
            if key not in data:
                raise InputError(f"{path}: {what} has no '{key}'")
            if not isinstance(data[key], types) or isinstance(data[key], bool):
                raise InputError(f"{path}: {what} '{key}' has the wrong type: {quote(data[key])}")
    return data
