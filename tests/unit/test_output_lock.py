"""One writer per output directory: a second gets one line naming the holder."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model.errors import InputError
from model.fileio import OutputLock


def test_a_second_writer_is_refused_until_the_first_is_gone(tmp_path):
    code = (
        "import sys, time; from model.fileio import OutputLock; "
        f"lock = OutputLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"another run is writing here \(pid {holder.pid} "):
            OutputLock(tmp_path)
    finally:
        holder.kill()  # killed, not exited: the kernel releases the lock all the same
        holder.wait()
    with OutputLock(tmp_path):
        pass
    OutputLock(tmp_path).release()  # released: taken again at once
