"""How `serve` splits the cores: each worker's share when runs overlap, every core for
a run alone (a second session), and the same answer from either session."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from components.serve.engine import Engine, Threads
from tests.serve.conftest import scene


@pytest.mark.parametrize(
    ("workers", "threads", "cores", "expected"),
    [
        (2, 0, 2, Threads(1, 2)),  # the default on 2 cores: one each, both alone
        (1, 0, 2, Threads(2, 0)),  # one worker has every core already: one session
        (4, 0, 2, Threads(1, 2, 2)),  # more workers than cores: 2 runs at once, alone 2
        (3, 0, 8, Threads(2, 6)),  # 8 // 3 = 2 each; alone, the 6 the workers use
        (2, 1, 32, Threads(1, 2)),  # a pod's 2 CPUs on a 32-core node: 2 alone, not 32
        (2, 3, 2, Threads(3, 0, 1)),  # the user's count above the cores: one run at once
        (1, 1, 16, Threads(1, 0)),
        (5, 2, 8, Threads(2, 8, 4)),  # 10 threads wanted, 8 cores: 4 runs of 2 at once
    ],
)
def test_split(workers, threads, cores, expected):
    assert Threads.split(workers, threads, cores) == expected
    one = Threads.split(workers, threads, cores, alone=False)  # --one-session
    assert one == Threads(expected.shared, 0, expected.runs)


class Recording:
    """A session stand-in that records its calls; ``hold`` keeps a call in progress."""

    def __init__(self, name: str, session) -> None:
        self.name, self.session, self.calls = name, session, []
        self.hold, self.entered = threading.Event(), threading.Event()
        self.hold.set()

    def run(self, outputs, feeds):
        self.calls.append(self.name)
        self.entered.set()
        assert self.hold.wait(30)
        return self.session.run(outputs, feeds)


def test_a_request_alone_uses_every_core_and_overlapping_ones_their_share(serve_model):
    engine = Engine(serve_model["onnx"], Threads(1, 2))
    assert engine.alone is not None
    shared, alone = Recording("shared", engine.session), Recording("alone", engine.alone)
    engine.session, engine.alone = shared, alone
    label, inst = scene()

    def one() -> None:
        with engine.request():
            engine.generate(label, inst)

    one()  # nothing else in progress
    engine.generate(label, inst)  # outside the service: alone too
    assert (alone.calls, shared.calls) == (["alone", "alone"], [])

    alone.hold.clear()  # the next request alone stays in its run ...
    alone.entered.clear()
    first = threading.Thread(target=one)
    first.start()
    assert alone.entered.wait(30)
    one()  # ... while this one runs: the shared session
    assert shared.calls == ["shared"]
    alone.hold.set()
    first.join(30)
    assert alone.calls == ["alone"] * 3

    between, leave = threading.Event(), threading.Event()

    def decoding() -> None:  # a request in progress between two runs
        with engine.request():
            between.set()
            assert leave.wait(30)

    other = threading.Thread(target=decoding)
    other.start()
    assert between.wait(30)
    one()  # shares the cores with it
    leave.set()
    other.join(30)
    assert shared.calls == ["shared"] * 2

    one()  # alone again once the others are done
    assert alone.calls == ["alone"] * 4 and shared.calls == ["shared"] * 2


def test_both_sessions_answer_alike(serve_model):
    """Two sessions on one graph with 1 and 2 threads: the same image (at most one grey
    level apart, should thread partitioning change a float sum's order)."""
    label, inst = scene()
    engine = Engine(serve_model["onnx"], Threads(1, 2))
    alone = engine.generate(label, inst, seed=3)
    engine.alone = None  # every run on the shared session now
    shared = engine.generate(label, inst, seed=3)
    assert alone.shape == shared.shape == (*label.shape, 3)
    assert np.abs(alone.astype(int) - shared.astype(int)).max() <= 1


def test_one_session_without_a_second_count(serve_model):
    engine = Engine(serve_model["onnx"], Threads(2))
    assert engine.alone is None
    label, inst = scene()
    assert engine.generate(label, inst).shape == (*label.shape, 3)


def test_no_more_runs_at_once_than_the_cores_hold(serve_model):
    """Four workers on two cores (``Threads.split(4, 0, 2)``): two runs at once; a
    third waits for one of them to end."""
    engine = Engine(serve_model["onnx"], Threads.split(4, 0, 2))
    shared, alone = Recording("shared", engine.session), Recording("alone", engine.alone)
    engine.session, engine.alone = shared, alone
    label, inst = scene()
    shared.hold.clear()
    alone.hold.clear()
    started = []

    def one() -> None:
        with engine.request():
            started.append(1)
            engine.generate(label, inst)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(shared.calls) + len(alone.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a third run, were it let in, would have entered by now
    assert len(started) == 3 and len(shared.calls) + len(alone.calls) == 2
    shared.hold.set()
    alone.hold.set()
    for t in threads:
        t.join(30)
    assert len(shared.calls) + len(alone.calls) == 3


def test_both_sessions_from_one_integrity_check(serve_model, monkeypatch):
    """The graph is hashed once for the two sessions (730 MB for the paper's)."""
    import model.onnx_integrity as integrity

    calls, verify = [], integrity.load_verified
    monkeypatch.setattr(integrity, "load_verified", lambda p: calls.append(p) or verify(p))
    engine = Engine(serve_model["onnx"], Threads(1, 2))
    assert engine.alone is not None and calls == [serve_model["onnx"]]
