#!/usr/bin/env bash
# Every check, in one command: installs what it needs, then lint, types and the whole test suite
# (the real-vLLM tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
# Python packages: into the active virtual environment (Debian's own Python refuses a system-wide
# pip install: "externally-managed-environment").
if ! python3 -m pip install --quiet -e '.[dev,tracing]'; then
  echo "test.sh: pip could not install the test dependencies. Run it inside a virtual environment:" >&2
  echo "  python3 -m venv .venv && . .venv/bin/activate && bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/setup-vllm.sh       # the CPU vLLM, in its own venv under ~/.cache (no root)
bash scripts/setup-services.sh   # Prometheus, Chromium, PostgreSQL, Redis from Debian, only if missing (root or sudo)
ruff check .
ruff format --check .
mypy
python3 -m pytest "$@"
