#!/usr/bin/env bash
# README command 1: install and run the two-region demo. Extra arguments go to
# `cryptorun demo` (e.g. --duration 90 --dir /tmp/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
# --object-store needs the local S3 server (moto), which the demo extra installs.
profile=runtime
for arg in "$@"; do [ "$arg" = "--object-store" ] && profile=demo; done
bash scripts/bootstrap.sh "$profile"
exec .venv/bin/cryptorun demo "$@"
