"""Artifact I/O for ``s3://`` URIs with boto3: datasets, weights, checkpoints, outputs.

Steps work on local paths; this module stages S3 inputs into a local cache before a
step runs and publishes its outputs afterwards. A URI names one object
(``s3://bucket/models/g.pth``) or a prefix (``s3://bucket/datasets/city/``, fetched as a
directory tree).

Configuration comes from the environment only: credentials through boto3's usual chain
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), the
endpoint from ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``, which MLflow users
already set) for MinIO / Ceph / other S3-compatible stores.

Outages are bounded: a connection gets ``CONNECT_TIMEOUT`` seconds, a read
``READ_TIMEOUT``, and botocore retries transient errors (standard mode) up to
``PIX2PIXHD_S3_MAX_ATTEMPTS`` attempts in all (default 3): an endpoint that refuses
fails within seconds, not minutes. Missing objects, buckets, credentials or an
unreachable endpoint are ``InputError`` s naming the URI.

Fetched prefixes are cached by ETag: a second fetch of an unchanged prefix downloads
nothing, a changed object is fetched again, a deleted one removed; objects are
transferred in parallel by boto3's transfer manager (``download_file``/``upload_file``
split large objects into parts and use threads; several objects run side by side
here). boto3 rather than fsspec/s3fs: it is the design's S3 library, already needed by
MLflow and DVC, and its transfer manager is the part that matters for throughput.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.fileio import write_json

log = logging.getLogger(__name__)

SCHEME = "s3://"
CONNECT_TIMEOUT = 5  # seconds to open a connection
READ_TIMEOUT = 60  # seconds without a byte on an open connection
PARALLEL = 8  # objects transferred at once
ETAGS = ".s3-etags.json"  # beside a fetched prefix: what each file was fetched from


def is_s3(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not is_s3(uri):
            raise InputError(f"{uri!r}: expected an s3://bucket/key URI")
        bucket, _, key = uri[len(SCHEME) :].partition("/")
        if len(bucket) < 3:
            raise InputError(f"{uri!r}: no bucket name (expected s3://bucket/key)")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def child(self, relative: str) -> S3Uri:
        prefix = self.key.rstrip("/")
        return S3Uri(self.bucket, f"{prefix}/{relative}" if prefix else relative)


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def client() -> Any:
    import boto3
    from botocore.config import Config

    attempts = int(os.environ.get("PIX2PIXHD_S3_MAX_ATTEMPTS", "3"))
    config = Config(
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=PARALLEL * 2,
    )
    # a fresh session: credentials and endpoint are read from the environment now
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url(), config=config)


def _explain(exc: Exception, uri: str) -> InputError:
    """A one-line, credential-free explanation of a boto3 failure."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return InputError(
            f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment"
        )
    if isinstance(exc, EndpointConnectionError):
        return InputError(f"{uri}: cannot reach the S3 endpoint {endpoint_url() or 'AWS'}")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket",) or (code == "404" and exc.operation_name == "HeadBucket"):
            return InputError(f"{uri}: no such bucket")
        if code in ("404", "NoSuchKey", "NotFound"):
            return InputError(f"{uri}: no such object or prefix")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return InputError(f"{uri}: access denied ({code}): check the S3 credentials")
        return InputError(f"{uri}: S3 error {code}: {exc}")
    return InputError(f"{uri}: S3 error: {exc}")


def _list(s3: Any, uri: S3Uri) -> dict[str, str]:
    """The objects under a prefix: key -> ETag."""
    prefix = uri.key.rstrip("/") + "/" if uri.key else ""
    keys: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if not o["Key"].endswith("/"):
                keys[o["Key"]] = o.get("ETag", "")
    return keys


def download(uri: str, dest: Path) -> Path:
    """Fetch an object to ``dest`` (a file) or a prefix into ``dest`` (a directory).

    Files are written through a temporary name and renamed, so an interrupted download
    never leaves a partial file under the final name. For a prefix, files whose ETag is
    the one recorded at their last fetch are kept, not fetched again."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import BotoCoreError, ClientError

    loc = S3Uri.parse(uri)
    s3 = client()
    try:
        single = bool(loc.key) and not loc.key.endswith("/")
        if single:
            try:
                s3.head_object(Bucket=loc.bucket, Key=loc.key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NotFound"):
                    raise
                single = False
        if single:
            _get(s3, loc.bucket, loc.key, dest)
            return dest
        keys = _list(s3, loc)
        if not keys:
            raise InputError(f"{uri}: no such object or prefix")
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        record = dest / ETAGS
        try:
            known = json.loads(record.read_text()) if record.is_file() else {}
        except (OSError, ValueError):
            known = {}
        wanted = {key[len(prefix) :]: etag for key, etag in keys.items()}
        todo = [
            rel
            for rel, etag in wanted.items()
            if known.get(rel) != etag or not (dest / rel).is_file()
        ]
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda rel: _get(s3, loc.bucket, prefix + rel, dest / rel), todo))
        for rel in set(known) - set(wanted):  # deleted from the store since the last fetch
            (dest / rel).unlink(missing_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        write_json(record, wanted)  # temp + rename: a kill leaves the old record or none
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc, uri) from None
    log.info("fetched %s: %d of %d objects changed -> %s", uri, len(todo), len(keys), dest)
    return dest


def _get(s3: Any, bucket: str, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        s3.download_file(bucket, key, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def upload(src: Path, uri: str) -> int:
    """Upload a file to the object ``uri`` or a directory tree under the prefix ``uri``.
    Returns the number of objects written."""
    from botocore.exceptions import BotoCoreError, ClientError

    loc = S3Uri.parse(uri)
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: nothing to upload to {uri}")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    from concurrent.futures import ThreadPoolExecutor

    s3 = client()

    def put(f: Path) -> None:
        key = loc.key if src.is_file() else loc.child(f.relative_to(src).as_posix()).key
        s3.upload_file(str(f), loc.bucket, key)

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(put, files))
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc, uri) from None
    log.info("published %s (%d objects) -> %s", src, len(files), uri)
    return len(files)


def check_writable(uri: str) -> None:
    """Before any work: the credentials, the bucket and the right to write under ``uri``
    (a small probe object is written and deleted). Problems are one-line InputErrors."""
    import uuid

    from botocore.exceptions import BotoCoreError, ClientError

    loc = S3Uri.parse(uri)
    s3 = client()
    probe_key = loc.child(f".pix2pixhd-write-probe-{uuid.uuid4().hex}").key
    if loc.key and not loc.key.endswith("/"):  # a file output: probe beside it
        parent = loc.key.rsplit("/", 1)[0] if "/" in loc.key else ""
        probe_key = (
            S3Uri(loc.bucket, parent).child(f".pix2pixhd-write-probe-{uuid.uuid4().hex}").key
        )
    try:
        s3.head_bucket(Bucket=loc.bucket)
        s3.put_object(Bucket=loc.bucket, Key=probe_key, Body=b"")
        s3.delete_object(Bucket=loc.bucket, Key=probe_key)
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc, uri) from None


def cache_dir() -> Path:
    root = os.environ.get("PIX2PIXHD_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "pix2pixhd" / "s3"


def fetch(uri: str, cache: Path | None = None) -> Path:
    """A local copy of ``uri`` under the cache, keyed by the URI and the endpoint (the
    same bucket name on two stores is two caches); unchanged objects are not fetched
    again (ETags)."""
    where = f"{endpoint_url() or 'aws'} {uri}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    name = S3Uri.parse(uri).key.rstrip("/").rsplit("/", 1)[-1] or "root"
    dest = (cache or cache_dir()) / digest / name
    return download(uri, dest)


def localize(location: str | Path) -> Path:
    """A local path for a path or an ``s3://`` URI (fetched into the cache)."""
    return fetch(location) if is_s3(location) else Path(location)
