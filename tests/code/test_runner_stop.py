"""An interrupted stage command takes its whole process group with it (no orphan keeps writing)."""

from __future__ import annotations

import os
import time

import pytest

from fashionops.orchestration.runner import run_command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read()  # a zombie waiting for its reaper is gone too
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_interrupting_a_command_stops_its_grandchildren_too(tmp_path) -> None:
    # bash stands in for DVC, the backgrounded sleep for the stage process DVC starts.
    script = "sleep 300 & echo $!; trap '' TERM; wait"  # the "DVC" ignores SIGTERM: SIGKILL follows
    grandchild: list[int] = []

    def log(line: str) -> None:
        grandchild.append(int(line))
        raise KeyboardInterrupt  # Ctrl-C or a Prefect cancellation while the stage runs

    with pytest.raises(KeyboardInterrupt):
        run_command(["bash", "-c", script], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, log=log)
    deadline = time.monotonic() + 10
    while _alive(grandchild[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild[0]), "the stage's own process outlived the interrupted command"
