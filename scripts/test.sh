#!/usr/bin/env bash
# Installs the test dependencies (apt, npm, venv) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check amlfs tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
