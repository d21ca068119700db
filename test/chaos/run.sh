#!/usr/bin/env bash
# npm run chaos -- [--minutes M] [--seed S] [--projects N]: the long form of tier chaos.
# Brings up its own sandbox (name chs, subnet 10.217.0: beside a test run's) and the
# three-node Cassandra cluster in it, runs test/chaos/main.ts in the control namespace,
# and tears both down (KEEP_SANDBOX=1 keeps them). The seed is printed first; the same
# seed replays the same faults. Logs of the agents: /var/tmp/storage-sandbox-chs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "npm run chaos: must run as root (namespaces, sshd, ZFS pools, Cassandra nodes)" >&2
  exit 2
fi
SANDBOX=${SANDBOX_NAME:-chs}
export SANDBOX_SUBNET=${SANDBOX_SUBNET:-10.217.0}
export SANDBOX_MANIFEST=/var/tmp/storage-sandbox-$SANDBOX/sandbox.json
bash test/env/sandbox.sh deps
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run --silent build
cleanup() {
  if [ -z "${KEEP_SANDBOX:-}" ]; then
    bash test/env/cassandra/cluster.sh stop >/dev/null 2>&1 || true
    bash test/env/cassandra/cluster.sh wipe >/dev/null 2>&1 || true
    bash test/env/sandbox.sh down --name "$SANDBOX" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
bash test/env/sandbox.sh up --name "$SANDBOX"
bash test/env/cassandra/cassandra.sh fetch
bash test/env/cassandra/cluster.sh start
nsenter --net=/run/netns/$SANDBOX-ctl node dist/test/chaos/main.js "$@"
