#!/usr/bin/env bash
# README command 1: install and run the two-region demo. Extra arguments go to
# `cryptorun demo` (e.g. --duration 90 --dir /tmp/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh runtime
exec .venv/bin/cryptorun demo "$@"
