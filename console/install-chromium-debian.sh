#!/bin/sh
# Debian's Chromium and its WebDriver for tests/test_console.py (the web console in a real
# headless browser); `make setup` runs this. Idempotent: quick when both are there.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium/chromedriver not installed; as root: apt-get install chromium chromium-driver" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
