#!/usr/bin/env bash
# Make sure PostgreSQL's server programs are installed (for `make stack` and tests/stack/).
# Idempotent: does nothing when initdb is on PATH or in Debian's /usr/lib/postgresql/*/bin.
# Needs root (or sudo) for apt.
set -euo pipefail

if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "postgresql present: $(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "postgresql missing and not root (no sudo): cannot install" >&2; exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# apt may be locked by a concurrent install; wait for the lock instead of failing.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends postgresql >/dev/null
echo "postgresql installed: $(ls /usr/lib/postgresql/*/bin/initdb | tail -1)"
