#!/bin/sh
# Debian's prometheus package (the server and promtool) for tests/test_metrics.py and
# `python -m bench dashboard`; `make setup` runs this. Idempotent, and it leaves no service
# running: the package's own service is kept from starting while it installs, and where
# systemd runs, it is disabled and stopped afterwards. The tests start their own server.
set -eu
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus/promtool not installed; as root: apt-get install --no-install-recommends prometheus" >&2
  exit 0
fi
added=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  added=1
fi
cleanup() { if [ -n "$added" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
