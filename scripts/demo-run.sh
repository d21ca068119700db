#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: must run as root (namespaces, sshd, zfs)" >&2; exit 2; }
bash test/env/sandbox.sh deps
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run --silent build
NAME=demo
trap 'echo; echo "demo: tearing down"; bash test/env/sandbox.sh down --name $NAME' EXIT INT TERM
bash test/env/sandbox.sh up --name $NAME
bash test/env/sandbox.sh status --name $NAME
./bin/storagectl capabilities
echo "demo: sandbox '$NAME' is up; press Ctrl-C to tear it down"
if [ -t 0 ]; then while sleep 3600; do :; done; fi
