#!/usr/bin/env bash
# Seeded fault-injection run against a 3-region cluster in network namespaces (needs root).
# Usage: scripts/chaos.sh --seed N --duration S [--out DIR]   |   scripts/chaos.sh --cleanup
# See docs/RELIABILITY.md. Test-harness code: tests/chaos/.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.chaos.run "$@"
