#!/usr/bin/env bash
# The fast check (seconds, no installs, no servers): formatting, lint and types
# over the package, the tests and the benchmarks — what CI and the pre-commit
# hooks also run. Needs the .venv that scripts/test.sh (or bootstrap.sh test) made.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
  echo "no .venv with ruff and mypy: run scripts/test.sh (or scripts/bootstrap.sh test) once" >&2
  exit 2
fi
echo "==> ruff format --check"
.venv/bin/ruff format --check .
echo "==> ruff check"
.venv/bin/ruff check .
echo "==> mypy (cryptorun_daemon, tests, bench: see [tool.mypy] in pyproject.toml)"
.venv/bin/mypy
