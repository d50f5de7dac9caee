"""The exported generator on ONNX Runtime: label (+ instance) ids in, RGB out; numpy only.

The contract is ``model.model_contract``'s, the same as `pix2pixhd generate` and the
registered MLflow model: native size in and out (edge-replicated padding to the graph's
size, cropped back); instance features from the cluster centres in the ONNX metadata: a
chosen centre per instance, else the one drawn from ``(seed, instance id)``, so that an
instance keeps its look when other parts of the map are edited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import InputError
from model.model_contract import ModelInfo, crop, draw_features, onnx_feeds, to_rgb
from model.onnx_integrity import HASH_KEY

log = logging.getLogger(__name__)


def local_version(meta: Mapping[str, str]) -> str:
    """A file's model version: ``sha256:`` and the start of its content hash (export
    stamps it in the metadata), else ``local``."""
    digest = meta.get(HASH_KEY, "")
    return f"sha256:{digest[:12]}" if digest else "local"


@dataclass(frozen=True)
class Threads:
    """ONNX Runtime intra-op threads: ``shared`` for each of the runs that go at once,
    ``alone`` (when > ``shared``) for a run with no other in progress, from a second
    session on the same graph (0: none, every run uses ``shared``); at most ``runs``
    runs at once (0: as many as there are workers)."""

    shared: int = 0  # 0: ONNX Runtime's default (every core)
    alone: int = 0
    runs: int = 0

    @classmethod
    def split(
        cls, workers: int, threads: int = 0, cores: int | None = None, alone: bool = True
    ) -> Threads:
        """Each worker's ``threads`` (0: the cores split between the workers, so that
        workers x threads <= cores: oversubscribed cores were 26% slower); with more
        workers than that fits, at most cores // threads runs at once (the others
        decode and encode meanwhile, or wait); for a request alone the threads all the
        workers use at once (at most ``cores``): one client is not served at one
        worker's share (256x128 on 2 cores: 40 instead of 65 ms per run), unless
        ``alone`` is False (the second session holds a second copy of the weights).
        ``cores``: those this process may run on."""
        cores = cores or len(os.sched_getaffinity(0))
        shared = threads or max(1, cores // workers)
        every = min(workers * shared, cores)
        runs = max(1, cores // shared) if workers * shared > cores else 0
        return cls(shared, every if alone and every > shared else 0, runs)


class Engine:
    """ONNX Runtime on one exported graph; ``generate`` is safe to call from several
    threads. A run uses the ``alone`` session (every core), when there is one, while at
    most one request is in progress (``request``: the service wraps each request's
    whole work in it, decoding and encoding included), else the ``shared`` one (a
    worker's share of the cores)."""

    def __init__(
        self, path: Path, threads: Threads = Threads(), source: str = "", version: str = ""
    ):
        from components.onnx_session import make_sessions

        path = Path(path)
        counts = [threads.shared or None] + ([threads.alone] if threads.alone else [])
        self.session, *more = make_sessions(path, "cpu", counts)
        self.alone = more[0] if more else None
        self._requests, self._lock = 0, threading.Lock()
        self._slots = threading.BoundedSemaphore(threads.runs) if threads.runs else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, path)
        self.path, self.source = path, source or str(path)
        #: the registry version, else the start of the graph's content hash (a file)
        self.version = version or local_version(meta)

    def features(
        self,
        instance: np.ndarray,
        seed: int,
        choice: Mapping[int, int] | None = None,
        override: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(H, W) instance ids -> (feat_num, H, W) (``model_contract.draw_features``)."""
        return draw_features(
            instance, self.info.centres, self.info.feat_num, seed, choice, override
        )

    def generate(
        self,
        label: np.ndarray,
        instance: np.ndarray | None,
        seed: int = 0,
        choice: Mapping[int, int] | None = None,
        override: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(H, W) label ids (+ instance ids) -> (H, W, 3) uint8 at the same size."""
        if self.info.use_instance_map and instance is None:
            raise InputError("instance: this model uses instance maps: send one")
        h, w = label.shape
        feeds = onnx_feeds(
            self.info,
            np.asarray(label, np.int64)[None, None],
            None if instance is None else np.asarray(instance, np.int64)[None, None],
            seed=seed,
            choice=choice,
            override=override,
        )
        return to_rgb(crop(self.run(feeds)[0][0], h, w))

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """One request in progress for as long as the block runs (see the class).
        Counting whole requests rather than model runs keeps a worker that is between
        two runs (decoding, encoding) from sending the other worker's run to the every-
        core session, where the two would oversubscribe the cores."""
        with self._lock:
            self._requests += 1
        try:
            yield
        finally:
            with self._lock:
                self._requests -= 1

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run`` on the session the requests in progress call for."""
        alone = self.alone is not None and self._requests <= 1
        session = self.alone if alone else self.session
        if self._slots is None:
            return session.run(None, feeds)
        with self._slots:  # no more runs at once than the cores hold
            return session.run(None, feeds)
