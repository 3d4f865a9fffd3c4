"""Headless Chromium that can resolve no host but the loopback: what a page shows offline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def chromium() -> str:
    """Debian's chromium; installed by scripts/ensure_chromium.sh when missing, else the test skips."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return str(shutil.which(name))
    subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], capture_output=True, timeout=600)
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed and could not be installed")
    return path


def rendered_dom(url: str) -> str:
    """The DOM of ``url`` after its scripts ran, in headless Chromium that can reach no other host."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            OFFLINE,
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
