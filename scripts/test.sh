#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: set up, lint, type-check, test.
# Extra arguments go to pytest (for example: scripts/test.sh -k maincf).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
start=$(date +%s)

bash scripts/setup.sh
export PATH="$here/.venv/bin:$PATH:/usr/sbin:/usr/lib/postfix/sbin"

echo "== ruff"
ruff check src tests scripts benchmarks
echo "== mypy --strict"
mypy
echo "== pytest"
# pytest exits 5 when it collected no test: that is a failure here, as is any other non-zero.
status=0
pytest "$@" || status=$?
echo "test.sh: wall time $(( $(date +%s) - start ))s, pytest exit $status"
exit "$status"
