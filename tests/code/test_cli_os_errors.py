"""File-system failures end a command with one line ``error: <path>: <reason> (...)`` and exit
status 1, never a traceback (issue #18): a file where a folder should be, a read-only mount, a
full disk. Real ``fashionops import`` processes; the read-only and full file systems are real
tmpfs mounts in a private mount namespace (``unshare``), so the test needs no root and leaves
no mount behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fashionops.errors import os_error_message


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory, shared_catalogue) -> Path:
    """20 real catalogue rows and their images."""
    import pandas as pd

    dest = tmp_path_factory.mktemp("tiny_source")
    styles = pd.read_csv(shared_catalogue / "styles.csv").head(20)
    (dest / "images").mkdir()
    for image_id in styles["id"]:
        shutil.copyfile(shared_catalogue / "images" / f"{image_id}.jpg", dest / "images" / f"{image_id}.jpg")
    styles.to_csv(dest / "styles.csv", index=False)
    return dest


def _import_cmd(source: Path, raw_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fashionops.cli",
        *extra,
        "import",
        "--params",
        str(REPO / "params.yaml"),
        "--source",
        str(source),
        "--no-dvc",
        "--set",
        f"paths.raw_dir={raw_dir}",
    ]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _in_private_mount(tmp_path: Path, options: str, fill: bool, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` with a fresh tmpfs (``options``) mounted on ``tmp_path/mnt`` in its own mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare`: cannot mount a read-only or full file system without touching the host")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    setup = f"mount -t tmpfs -o {options} tmpfs {mnt}"
    if fill:  # a full disk: fill the tiny tmpfs before the command writes
        setup += f" && (dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null || true)"
    probe = _run(["unshare", "-rm", "sh", "-c", setup], tmp_path)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here ({probe.stderr.strip()[-300:]})")
    script = setup + " && exec " + " ".join(f"'{part}'" for part in cmd)
    return _run(["unshare", "-rm", "sh", "-c", script], tmp_path)


def test_a_file_where_a_folder_should_be_is_one_line(tmp_path, tiny_source):
    (tmp_path / "a_file").write_text("not a folder")
    proc = _run(_import_cmd(tiny_source, tmp_path / "a_file" / "sub" / "raw"), tmp_path)
    _assert_one_line_error(proc, str(tmp_path / "a_file" / "sub"), "Not a directory", "fashionops import")


def test_a_read_only_file_system_is_one_line(tmp_path, tiny_source):
    raw = tmp_path / "mnt" / "raw"
    proc = _in_private_mount(tmp_path, "size=64k,ro", False, _import_cmd(tiny_source, raw))
    _assert_one_line_error(proc, str(tmp_path / "mnt"), "Read-only file system", "read-only")


def test_a_full_disk_is_one_line(tmp_path, tiny_source):
    proc = _in_private_mount(tmp_path, "size=64k", True, _import_cmd(tiny_source, tmp_path / "mnt" / "raw"))
    _assert_one_line_error(proc, str(tmp_path / "mnt"), "No space left on device", "disk is full")


def test_debug_level_keeps_the_traceback(tmp_path, tiny_source):
    (tmp_path / "a_file").write_text("not a folder")
    proc = _run(_import_cmd(tiny_source, tmp_path / "a_file" / "sub" / "raw", "--log-level", "DEBUG"), tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "NotADirectoryError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_write_error_without_a_file_name_names_the_open_file():
    """A real ENOSPC from a real write (/dev/full): OSError.filename is None there, the message
    still names the file that was being written."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    try:
        with open("/dev/full", "w") as fh:
            fh.write("x" * 10)
            fh.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC and exc.filename is None
        message = os_error_message(exc, "prepare")
    else:
        pytest.fail("writing to /dev/full did not fail")
    assert message == "/dev/full: No space left on device (fashionops prepare: writing: the disk is full)"


def test_a_network_error_names_no_file():
    """A real refused connection (an OSError too, e.g. a tracking server that is down): no file
    is invented for it."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError as exc:
        message = os_error_message(exc, "register")
    else:
        pytest.skip("something listens on a just-freed port")
    assert message == "Connection refused (fashionops register)"
