#!/usr/bin/env bash
# The demo: a local multi-host sandbox on file-backed pools (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/demo-run.sh "$@"
