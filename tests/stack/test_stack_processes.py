"""The stack's process bookkeeping and its fast failure paths, with real processes and sockets
(seconds): a recorded pid is only signalled while its start time matches, every wait names the
service and its log, a port held by someone else is refused, `.stack/env` sources in bash."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fashionops.config import ConfigError, load_params
from fashionops.stack import processes
from fashionops.stack.processes import StackError
from fashionops.stack.settings import ENV_NAMES, StackSettings, read_env_file
from fashionops.stack.up import down, status, up

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.stack


def sleeper(tmp_path: Path, name: str = "sleeper") -> processes.ProcessRecord:
    """A real detached process (with a child in its group) recorded like a stack service."""
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
    )
    return processes.start(
        name,
        [sys.executable, "-c", script],
        tmp_path / "pids",
        tmp_path / "logs" / f"{name}.log",
        dict(os.environ),
        tmp_path,
    )


def test_a_reused_pid_is_never_signalled(tmp_path):
    record = sleeper(tmp_path)
    assert processes.running(tmp_path / "pids", "sleeper") == record
    # the same pid with another start time: a different program now holds that pid
    impostor = replace(record, start_ticks=record.start_ticks + 1)
    assert not processes.is_alive(impostor)
    assert processes.stop(impostor, timeout_s=5) is False
    assert processes.is_alive(record)
    assert processes.stop(record, timeout_s=20) is True
    assert not processes.is_alive(record) and processes.group_members(record.pid) == []
    assert processes.stop(record, timeout_s=5) is False  # already gone: nothing to signal


def test_waits_fail_naming_the_service_and_its_log(tmp_path):
    record = sleeper(tmp_path, "mlflow")
    try:
        with pytest.raises(StackError, match=r"^mlflow: not ready after 1 s; see .*logs/mlflow\.log$"):
            processes.wait_until(lambda: False, record, "ready", timeout_s=1.0, poll_s=0.1)
    finally:
        processes.stop(record, timeout_s=20)
    with pytest.raises(StackError, match=r"^mlflow exited before ready; see .*logs/mlflow\.log$"):
        processes.wait_until(lambda: False, record, "ready", timeout_s=30.0, poll_s=0.1)


def test_up_refuses_a_port_another_process_holds(tmp_path):
    shutil.copy2(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        params = load_params(REPO / "params.yaml", [f"stack.dir={tmp_path / 'st'}", f"stack.postgres_port={port}"])
        with pytest.raises(StackError, match=rf"postgres: port {port} .* --set stack.postgres_port=PORT"):
            up(params, root=tmp_path)
    assert not (tmp_path / "st" / "postgres").exists()  # nothing initialised, nothing started
    assert set(down(params, root=tmp_path)["services"].values()) == {"not started"}
    assert {s["state"] for s in status(params, root=tmp_path)["services"].values()} == {"stopped"}


def test_env_file_sources_in_bash_and_is_private(tmp_path):
    params = load_params(REPO / "params.yaml", [f"stack.dir={tmp_path / 'st'}", "stack.mlflow_port=15999"])
    settings = StackSettings.from_config(params.stack, tmp_path)
    path = settings.write_env_file()
    assert path.stat().st_mode & 0o777 == 0o600
    env = read_env_file(path)
    assert tuple(env) == ENV_NAMES and env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15999"
    shell = subprocess.run(
        ["bash", "-c", f"source {path}; env"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    sourced = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert {name: sourced[name] for name in ENV_NAMES} == env
    assert settings.credentials() == (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])  # kept, not regenerated


def test_stack_section_is_typed():
    with pytest.raises(ConfigError, match="stack.mlflow_prot: unknown key"):
        load_params(REPO / "params.yaml", ["stack.mlflow_prot=1"])
    with pytest.raises(ConfigError, match="stack.s3_port"):
        load_params(REPO / "params.yaml", ["stack.s3_port=99999"])
