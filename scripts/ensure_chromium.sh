#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed (for tests/pipeline/test_web_ui.py).
# Idempotent: does nothing when a chromium binary is already on PATH. Needs root (or sudo) for apt.
set -euo pipefail

find_chromium() {
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if path=$(find_chromium); then
  echo "chromium present: $path"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "chromium missing and not root (no sudo): cannot install" >&2; exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# apt may be locked by a concurrent install; wait for the lock instead of failing.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
path=$(find_chromium)
echo "chromium installed: $path ($("$path" --version 2>/dev/null || true))"
