#!/usr/bin/env bash
# Build the documentation site (API pages, MyST benchmark pages, the executed gallery)
# warning-free into docs/_build/html. Usage: docs/build.sh [python] (default: python3).
# The interpreter needs convsv's "docs" extra (and torch for the gallery's training example).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
rm -rf docs/_build docs/generated docs/auto_examples  # a clean build: the gallery runs every time
start=$(date +%s)
"$PY" -m sphinx -W --keep-going -b html -j 1 docs docs/_build/html
echo "docs built in $(( $(date +%s) - start )) s: docs/_build/html/index.html"
