#!/usr/bin/env bash
# Every check, in one command: installs what it needs, then lint, types and the whole test suite
# (the real-vLLM tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e '.[dev,tracing]'
bash scripts/setup-vllm.sh
bash scripts/setup-services.sh   # Prometheus (promtool) and Chromium, from Debian, for the dashboard tests
ruff check .
ruff format --check .
mypy
python3 -m pytest "$@"
