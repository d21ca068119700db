#!/usr/bin/env bash
# A real three-datacenter Apache Cassandra cluster on the sandbox: one node per sandbox host,
# inside that host's network namespace and bound to its address, in the host's datacenter
# (a:dc1, b:dc2, c:dc3). Every node is a seed; GossipingPropertyFileSnitch; small heaps.
# Cutting a host off the network therefore cuts off its datacenter's catalog node too.
# Each node is test/env/cassandra/cassandra.sh with its own state dir; see
# docs/cassandra-node.md ("A three-datacenter cluster") for figures and choices.
#
#   test/env/cassandra/cluster.sh start         fetch if needed, start every node in parallel,
#                                               wait until each node sees every other alive
#   test/env/cassandra/cluster.sh stop          stop every node (drain)
#   test/env/cassandra/cluster.sh status        one line per node; exit 0 if all run
#   test/env/cassandra/cluster.sh wipe          stop and remove every node's state
#   test/env/cassandra/cluster.sh kill DC       SIGKILL the node of datacenter DC
#   test/env/cassandra/cluster.sh start-node DC start that node again, wait until the mesh is whole
#   test/env/cassandra/cluster.sh contact       the contact points, comma-separated (addr:port)
#   test/env/cassandra/cluster.sh env DC        the environment cassandra.sh needs for DC's node
#
# Environment: SANDBOX_MANIFEST (default /var/tmp/storage-sandbox-stt/sandbox.json; the
# sandbox must be up), CASSANDRA_CLUSTER_HEAP (768m per node), CASSANDRA_CLUSTER_STATE
# (/var/tmp/storage-cassandra-<sandbox>), and everything cassandra.sh reads.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MANIFEST=${SANDBOX_MANIFEST:-/var/tmp/storage-sandbox-stt/sandbox.json}
HEAP=${CASSANDRA_CLUSTER_HEAP:-768m}
PORT=${CASSANDRA_PORT:-9042}
TIMEOUT=${CASSANDRA_START_TIMEOUT:-240}

die() { printf 'cassandra cluster: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'cassandra cluster: %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ -f "$MANIFEST" ] || die "no sandbox manifest at $MANIFEST: bring the sandbox up first (test/env/sandbox.sh up) or set SANDBOX_MANIFEST"
command -v jq >/dev/null || die "jq is missing (test/env/sandbox.sh deps installs it)"
SB=$(jq -r '.name' "$MANIFEST")
STATE_BASE=${CASSANDRA_CLUSTER_STATE:-/var/tmp/storage-cassandra-$SB}
mapfile -t NODES < <(jq -r '.hosts[] | "\(.datacenter) \(.netns) \(.address)"' "$MANIFEST")
[ "${#NODES[@]}" -ge 3 ] || die "the sandbox in $MANIFEST has ${#NODES[@]} hosts; a cluster needs one per datacenter, at least 3"
SEEDS=$(printf '%s\n' "${NODES[@]}" | awk '{ print $3 }' | paste -sd,)
DCS=$(printf '%s\n' "${NODES[@]}" | awk '{ print $1 }' | paste -sd,)
[ "$(printf '%s\n' "${NODES[@]}" | awk '{ print $1 }' | sort -u | wc -l)" = "${#NODES[@]}" ] || die "the sandbox hosts share datacenters ($DCS): one node per datacenter is what this script builds"

node_of() {
  local n
  for n in "${NODES[@]}"; do
    read -r dc ns addr <<<"$n"
    [ "$dc" = "$1" ] && return 0
  done
  die "no sandbox host in datacenter '$1' (datacenters: $DCS)"
}

# runs cassandra.sh inside the node's namespace with the node's settings
node_sh() {
  local dc=$1
  shift
  node_of "$dc"
  nsenter --net="/run/netns/$ns" env CASSANDRA_LISTEN="$addr" CASSANDRA_SEEDS="$SEEDS" CASSANDRA_DC="$dc" \
    CASSANDRA_CLUSTER="storage-$SB" CASSANDRA_STATE="$STATE_BASE-$dc" CASSANDRA_HEAP_MIN="$HEAP" CASSANDRA_HEAP_MAX="$HEAP" \
    CASSANDRA_START_TIMEOUT="$TIMEOUT" bash "$HERE/cassandra.sh" "$@"
}

# every node, as the coordinator, writes at ALL to a keyspace with a replica in each
# datacenter: each one sees all the others alive
wait_mesh() {
  local t0=$1 deadline n dc ok out
  deadline=$(( $(date +%s) + TIMEOUT ))
  for n in "${NODES[@]}"; do
    read -r dc _ _ <<<"$n"
    while :; do
      if out=$(node_sh "$dc" mesh "$DCS" 2>&1); then log "$out"; break; fi
      [ "$(date +%s)" -lt "$deadline" ] || die "the node of $dc does not see every datacenter alive after ${TIMEOUT} s: $out"
      sleep 2
    done
  done
  log "mesh whole: every node sees all ${#NODES[@]} alive, $(elapsed "$t0") s after the start"
}

cmd_start() {
  local t0 pids=() n dc fails=0 rss total=0
  bash "$HERE/cassandra.sh" fetch # in the root namespace: the sandbox has no route out
  t0=$(now)
  for n in "${NODES[@]}"; do
    read -r dc _ _ <<<"$n"
    node_sh "$dc" start 2>&1 | sed "s/^/[$dc] /" >&2 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  # and each node checked directly (a start that "succeeded" but whose node died since)
  for n in "${NODES[@]}"; do
    read -r dc _ _ <<<"$n"
    node_sh "$dc" status >/dev/null 2>&1 || { log "the node of $dc is not running"; fails=$((fails + 1)); }
  done
  [ "$fails" = 0 ] || die "$fails node(s) did not start (see above); '$0 stop' stops the others"
  log "every node answers CQL after $(elapsed "$t0") s"
  wait_mesh "$t0"
  for n in "${NODES[@]}"; do
    read -r dc _ _ <<<"$n"
    rss=$(node_sh "$dc" rss 2>/dev/null || echo 0)
    total=$((total + rss))
  done
  log "ready: ${#NODES[@]} nodes ($DCS), contact points $(contact), RSS ${total} MB in all, $(elapsed "$t0") s"
}

contact() { printf '%s\n' "${NODES[@]}" | awk -v p="$PORT" '{ print $3 ":" p }' | paste -sd,; }

each() {
  local n dc rc=0
  for n in "${NODES[@]}"; do
    read -r dc _ _ <<<"$n"
    node_sh "$dc" "$@" 2>&1 | sed "s/^/[$dc] /" >&2 || rc=1
  done
  return $rc
}

cmd_status() {
  local n dc rc=0
  for n in "${NODES[@]}"; do
    read -r dc _ addr <<<"$n"
    printf '%s %s: ' "$dc" "$addr"
    node_sh "$dc" status || rc=3
  done
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop)
    # in parallel: each drains on its own
    for n in "${NODES[@]}"; do read -r dc _ _ <<<"$n"; node_sh "$dc" stop 2>&1 | sed "s/^/[$dc] /" >&2 & done
    wait
    ;;
  status) cmd_status ;;
  wipe) each wipe ;;
  kill) [ -n "${2:-}" ] || die "usage: $0 kill DC"; node_sh "$2" kill ;;
  start-node)
    [ -n "${2:-}" ] || die "usage: $0 start-node DC"
    t0=$(now)
    node_sh "$2" start
    wait_mesh "$t0"
    ;;
  contact) contact ;;
  env) [ -n "${2:-}" ] || die "usage: $0 env DC"; node_of "$2"; echo "CASSANDRA_LISTEN=$addr CASSANDRA_DC=$dc CASSANDRA_STATE=$STATE_BASE-$dc netns=$ns" ;;
  -h|--help|help|"") sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  *) die "unknown command '$1' (start|stop|status|wipe|kill DC|start-node DC|contact|env DC)" ;;
esac
