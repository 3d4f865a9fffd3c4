"""The lock file pins every package with hashes and `make setup` installs with hash checking."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lock_entries(text: str) -> dict[str, list[str]]:
    """``{"name==version": [sha256 hashes]}`` of a pip-style lock file."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = line.split()[0]
            entries[current] = []
        elif current is not None:
            entries[current] += re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
    return entries


def test_every_locked_package_is_pinned_with_a_hash() -> None:
    entries = lock_entries((ROOT / "requirements.lock").read_text())
    assert len(entries) > 100
    unpinned = [name for name in entries if "==" not in name]
    unhashed = [name for name, hashes in entries.items() if not hashes]
    assert not unpinned, f"not pinned: {unpinned}"
    assert not unhashed, f"no hash: {unhashed}"
    assert any(name.startswith("uv==") for name in entries), "the installer is not in the lock"


def test_setup_installs_with_hash_checking() -> None:
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in recipe.splitlines() if " install " in line and "-e ." not in line]
    assert len(installs) == 2, installs  # the uv bootstrap and the lock
    assert all("--require-hashes" in line for line in installs), installs
