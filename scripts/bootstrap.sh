#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: make .venv and install
# the project into it. Usage: scripts/bootstrap.sh [runtime|test|demo]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  [ "$#" -gt 0 ] || return 0
  echo "==> installing Debian packages: $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
# Debian's python3 ships venv/ensurepip separately.
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ "$profile" = "test" ]; then
  # Real servers the tests start: etcd (state store), Prometheus + promtool (scrape, rules);
  # systemd-analyze verifies the unit file.
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  # strace shows the hot journal's fsyncs (tests/integration/test_hot_disk_faults.py).
  command -v strace >/dev/null || need+=(strace)
  # The runnable doc examples are curl commands (tests/integration/test_docs_examples.py).
  command -v curl >/dev/null || need+=(curl)
  # Clock jumps of one region in the chaos suite (tests/chaos, libfaketime via LD_PRELOAD).
  command -v faketime >/dev/null || need+=(faketime)
fi
apt_install "${need[@]}"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
extras=""
[ "$profile" = "test" ] && extras="[test]"
[ "$profile" = "demo" ] && extras="[demo]"
echo "==> installing cryptorun-daemon${extras} into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras}"
