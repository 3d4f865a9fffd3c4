"""No debris after a kill (issue #18): staging folders of killed runs are swept, worker pools die
with their stage (SIGKILL) or are shut down by it (SIGTERM), and the previous output stays intact.

Real processes on real catalogue subsets: the killed stages run on the full shared catalogue so
that their workers are busy when the signal comes; the runs that must succeed use the small one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import REPO, params_for
from fashionops.atomic import staged_dir, sweep_stale_staging

WORKERS = 2


def _cli(command: str, params, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "fashionops.cli", command, "--params", str(REPO / "params.yaml")]
    for key in ("raw_dir", "gx_dir", "facts", "prepared_dir", "reports_dir"):
        cmd += ["--set", f"paths.{key}={getattr(params.paths, key)}"]
    for item in extra:
        cmd += ["--set", item]
    return cmd


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone: they run no code)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _signal_when_workers_run(cmd: list[str], cwd: Path, sig: int, n_workers: int) -> tuple[int, list[int], str]:
    """Start ``cmd``; once ``n_workers`` child processes have run for a moment, send ``sig``.
    Returns (exit status, the worker pids, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < n_workers:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[3]} exited ({proc.returncode}) before its workers ran: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "no worker processes within 120 s"
            workers = [c.pid for c in parent.children() if c.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.05)
        time.sleep(1.0)  # the workers are decoding now
        assert proc.poll() is None, "the stage finished before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, workers, err


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _staging(prepared: Path) -> list[Path]:
    return sorted(prepared.parent.glob(f".{prepared.name}.*"))


@pytest.fixture
def full_catalogue(tmp_path, shared_catalogue) -> Path:
    """The whole shared catalogue (read through symlinks): enough work to be killed mid-decode."""
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "images").symlink_to(shared_catalogue / "images", target_is_directory=True)
    (dest / "styles.csv").symlink_to(shared_catalogue / "styles.csv")
    return dest


def test_prepare_killed_leaves_no_workers_and_its_staging_folder_is_swept(tmp_path, small_catalogue, full_catalogue):
    from fashionops.data.prepare import run_prepare

    small = params_for(tmp_path, small_catalogue, ["prepare.min_images_per_class=10", f"prepare.workers={WORKERS}"])
    run_prepare(small.prepare, small.paths)
    prepared = Path(small.paths.prepared_dir)
    before = pd.read_parquet(prepared / "index.parquet")

    big = params_for(tmp_path, full_catalogue)
    cmd = _cli("prepare", big, f"prepare.workers={WORKERS}")
    code, workers, err = _signal_when_workers_run(cmd, tmp_path, signal.SIGKILL, WORKERS)
    assert code == -signal.SIGKILL
    assert not _wait_gone(workers), f"prepare workers outlived their killed parent: {_alive(workers)}"
    # the kill left its staging folder (nobody could remove it) and the old output as it was
    left = _staging(prepared)
    assert left and all(".staging-" in p.name for p in left), left
    pd.testing.assert_frame_equal(pd.read_parquet(prepared / "index.parquet"), before)

    # the next run sweeps it and writes the right output
    run_prepare(small.prepare, small.paths)
    assert _staging(prepared) == []
    pd.testing.assert_frame_equal(pd.read_parquet(prepared / "index.parquet"), before)


def test_prepare_terminated_stops_its_workers_and_keeps_the_old_output(tmp_path, small_catalogue, full_catalogue):
    from fashionops.data.prepare import run_prepare

    small = params_for(tmp_path, small_catalogue, ["prepare.min_images_per_class=10", "prepare.workers=1"])
    run_prepare(small.prepare, small.paths)
    prepared = Path(small.paths.prepared_dir)
    before = pd.read_parquet(prepared / "index.parquet")

    cmd = _cli("prepare", params_for(tmp_path, full_catalogue), f"prepare.workers={WORKERS}")
    code, workers, err = _signal_when_workers_run(cmd, tmp_path, signal.SIGTERM, WORKERS)
    assert code == 143, err
    assert err.strip().splitlines()[-1].startswith("error: fashionops prepare terminated"), err
    assert "Traceback" not in err
    assert not _wait_gone(workers, 2.0), f"workers still running after SIGTERM: {_alive(workers)}"
    assert _staging(prepared) == [], "SIGTERM must remove the staging folder"
    pd.testing.assert_frame_equal(pd.read_parquet(prepared / "index.parquet"), before)


def test_validate_killed_leaves_no_fact_workers(tmp_path, full_catalogue):
    params = params_for(tmp_path, full_catalogue)
    cmd = _cli("validate", params, f"validate.workers={WORKERS}")
    code, workers, _ = _signal_when_workers_run(cmd, tmp_path, signal.SIGKILL, WORKERS)
    assert code == -signal.SIGKILL
    assert not _wait_gone(workers), f"validate's fact workers outlived their killed parent: {_alive(workers)}"


_HOLD = """
import sys, time
from fashionops.atomic import staged_dir
with staged_dir(sys.argv[1]) as tmp:
    (tmp / "part.bin").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_staging_folders_of_live_owners_are_kept_and_of_dead_ones_swept(tmp_path):
    dest = tmp_path / "out"
    holders = [
        subprocess.Popen([sys.executable, "-c", _HOLD, str(dest)], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        staging = [Path(h.stdout.readline().strip()) for h in holders]
        assert all(p.is_dir() and p.name.startswith(".out.staging-") for p in staging)
        holders[0].kill()
        holders[0].wait()  # reaped: its pid is dead
        # folders that only look alike are never touched: a user's own, an unowned old one
        others = [tmp_path / ".out.old-1", tmp_path / ".out.abcd1234", tmp_path / ".out.staging-x-1"]
        for other in others:
            other.mkdir()

        with staged_dir(dest) as tmp:
            (tmp / "result.txt").write_text("ok")
        assert (dest / "result.txt").read_text() == "ok"
        assert not staging[0].exists(), "the killed owner's staging folder must be swept"
        assert staging[1].is_dir(), "a live owner's staging folder must be kept"
        assert all(other.is_dir() for other in others)
    finally:
        for h in holders:
            if h.poll() is None:
                h.kill()
                h.wait()
    assert sweep_stale_staging(dest) == [staging[1]]


def test_validate_terminated_stops_its_fact_workers_quietly(tmp_path, full_catalogue):
    """The forked fact workers inherit the CLI's SIGTERM handler; they must just stop (no traceback
    of theirs), and the stage exits 143 with one line."""
    params = params_for(tmp_path, full_catalogue)
    cmd = _cli("validate", params, f"validate.workers={WORKERS}")
    code, workers, err = _signal_when_workers_run(cmd, tmp_path, signal.SIGTERM, WORKERS)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: fashionops validate terminated"), err[-3000:]
    assert not _wait_gone(workers, 2.0), f"fact workers still running after SIGTERM: {_alive(workers)}"


_HOLD_FILE = """
import sys, time
from fashionops.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(300)
"""


def test_temp_files_of_killed_writers_are_swept_by_the_next_write(tmp_path):
    from fashionops.atomic import write_json

    target = tmp_path / "metrics.json"
    writer = subprocess.Popen([sys.executable, "-c", _HOLD_FILE, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        temp = Path(writer.stdout.readline().strip())
        assert temp.is_file() and temp.name.startswith(".metrics.json.staging-")
    finally:
        writer.kill()
        writer.wait()
    assert temp.is_file(), "SIGKILL leaves the half-written temp file"
    user_file = tmp_path / ".metrics.json.backup"  # only owned temp names are swept
    user_file.write_text("mine")

    write_json(target, {"accuracy": 0.9})
    assert not temp.exists(), "the killed writer's temp file must be swept"
    assert user_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".metrics.json.backup", "metrics.json"]
