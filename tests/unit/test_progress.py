"""Progress: a bar on a terminal, periodic log lines elsewhere (pods, CI, files)."""

from __future__ import annotations

import logging

from model import progress as progress_mod
from model.progress import LogProgress, progress


def test_log_lines_every_twentieth_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="model.progress")
    bar = LogProgress(total=1000, desc="train global", unit="it")
    for _ in range(993):  # stops short of the total: the close still logs where it got
        bar.update(1)
    bar.set_postfix(G="1.234")
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 993 // 50 + 1  # every 1000 // 20 = 50 items, then the close
    assert lines[0].startswith("train global: 50/1000 (5%)")
    assert lines[-1].startswith("train global: 993/1000 (99%)") and "[G=1.234]" in lines[-1]


def test_iterating_logs_and_a_terminal_gets_tqdm(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="model.progress")
    assert list(progress(range(3), desc="synth")) == [0, 1, 2]  # pytest's stderr: no tty
    assert [r.getMessage().split(" ")[1] for r in caplog.records] == ["1/3", "2/3", "3/3"]
    monkeypatch.setattr(progress_mod.sys.stderr, "isatty", lambda: True, raising=False)
    assert type(progress(range(3), disable=True)).__name__ == "tqdm"
