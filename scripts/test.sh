#!/usr/bin/env bash
# README command 2: install everything (Debian packages and .venv), run the fast
# check (scripts/check.sh: format, lint, types), then the whole test suite with
# coverage of cryptorun_daemon (daemon subprocesses included) held to the floor
# in [tool.coverage.report] fail_under. Exits non-zero if any step fails.
#
# Extra arguments go to pytest and run that selection without coverage (a
# subset would always fall below the floor), e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
bash scripts/check.sh
echo "==> pytest"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest --cov --cov-report=term
