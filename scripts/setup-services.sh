#!/usr/bin/env bash
# System packages the test suite uses beside Python: Prometheus and promtool (tests/test_prometheus.py
# runs a real Prometheus against the gateway and checks the alert rules and the dashboard's queries),
# Chromium (headless screenshots) and PostgreSQL (tests/test_store.py starts its own cluster with
# initdb and pg_ctl in a temporary folder; Debian keeps them in /usr/lib/postgresql/*/bin) and Redis
# (tests/services.py starts its own redis-server on a free port: shared state across workers and
# gateway replicas, keys' rate limits). Debian packages; idempotent: installs only what is missing,
# with one `apt-get update` and one `apt-get install`.
# The Debian prometheus package may start a system Prometheus on :9090; nothing here stops it, and the
# tests never use that port (they start their own Prometheus on a free port with its own data dir).
set -euo pipefail

missing=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v redis-server >/dev/null 2>&1; then
  missing+=(redis-server)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "installing ${missing[*]} ..."
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in prometheus promtool chromium redis-server; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup-services: $tool still missing" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { echo "setup-services: postgresql still missing" >&2; exit 1; }
echo "installed: $(prometheus --version 2>&1 | head -1); $(chromium --version 2>/dev/null || true)"
