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
why=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
  why+=("prometheus: tests/test_prometheus.py runs a real Prometheus and promtool on the gateway's metrics")
fi
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
  why+=("chromium: the dashboard tests take headless screenshots")
fi
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing+=(postgresql)
  why+=("postgresql: tests/test_store.py starts its own PostgreSQL cluster (initdb, pg_ctl)")
fi
if ! command -v redis-server >/dev/null 2>&1; then
  missing+=(redis-server)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0  # all present: nothing to install, no root needed
fi

echo "setup-services: installing ${missing[*]} with apt-get, for:"
printf '  %s\n' "${why[@]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup-services: installing needs root, and this user is not root and has no sudo." >&2
    echo "  Ask an administrator to run: apt-get install --no-install-recommends ${missing[*]}" >&2
    echo "  (or run scripts/setup-services.sh as root once); then run scripts/test.sh again." >&2
    exit 1
  fi
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in prometheus promtool chromium redis-server; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup-services: $tool still missing" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { echo "setup-services: postgresql still missing" >&2; exit 1; }
echo "installed: $(prometheus --version 2>&1 | head -1); $(chromium --version 2>/dev/null || true)"
