#!/usr/bin/env bash
# The demo: three hosts in three datacenters on this machine (network namespaces, each
# with its own sshd and its own zfs-fuse pool on a sparse file), a shared SQLite catalog,
# a storage-agent per host, projects with data, changes, and `storagectl status`.
# Ctrl-C tears everything down. Without a terminal it runs a few cycles and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
NAME=demo
DIR=/var/tmp/storage-sandbox-$NAME
[ "$(id -u)" = 0 ] || { echo "demo: must run as root (network namespaces, sshd, zfs)" >&2; exit 2; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing what is missing (Debian packages, npm packages) and building"
bash test/env/sandbox.sh deps
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.lock-hash 2>/dev/null)" != "$lock_hash" ]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > node_modules/.lock-hash
fi
npm run --silent build

pids=()
teardown() {
  trap - EXIT INT TERM
  say "tearing down"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash test/env/sandbox.sh down --name $NAME
}
trap teardown EXIT
trap 'exit 130' INT TERM

say "sandbox: hosts a (dc1), b (dc2), c (dc3)"
bash test/env/sandbox.sh up --name $NAME --hosts "a:dc1 b:dc2 c:dc3" >/dev/null
bash test/env/sandbox.sh status --name $NAME

ctl() { # ctl HOST storagectl-args...
  local h=$1; shift
  nsenter --net=/run/netns/$NAME-$h "$REPO/bin/storagectl" --config "$DIR/hosts/$h/agent.yaml" "$@"
}

say "creating 6 projects (2 per host) with some data"
projects=()
for h in a b c; do
  for _ in 1 2; do
    id=$(cat /proc/sys/kernel/random/uuid)
    ctl $h project create "$id" --quota $((64 * 1024 * 1024)) >/dev/null
    ctl $h open "$id" >/dev/null
    mnt="$DIR/mnt/$h/$id"
    head -c $((200 * 1024 + RANDOM)) /dev/urandom > "$mnt/data.bin"
    printf 'hello from project %s on host %s\n' "$id" "$h" > "$mnt/README.txt"
    projects+=("$h:$id")
  done
done
printf '  %s\n' "${projects[@]}"

say "starting a storage-agent per host (interval 10s; logs in $DIR/hosts/<host>/agent.log)"
for h in a b c; do
  nsenter --net=/run/netns/$NAME-$h node "$REPO/bin/storage-agent" --config "$DIR/hosts/$h/agent.yaml" \
    > "$DIR/hosts/$h/agent.log" 2>&1 &
  pids+=($!)
done

wait_replicated() {
  for _ in $(seq 1 60); do
    if ctl a status --json | node -e '
      const s = JSON.parse(require("fs").readFileSync(0, "utf8"));
      process.exit(s.projects.length && s.projects.every((p) => p.replicas.length >= 2 && p.missingReplicas.length === 0) ? 0 : 1);'; then
      return 0
    fi
    sleep 1
  done
  echo "demo: replicas did not appear within 60 s; agent logs:" >&2
  tail -5 "$DIR"/hosts/*/agent.log >&2
  return 1
}
wait_replicated
say "first cycle done: every project has 2 replicas in the other datacenters"
ctl a status

say "writing to two projects; the next cycle sends only their increments"
for spec in "${projects[0]}" "${projects[3]}"; do
  h=${spec%%:*} id=${spec#*:}
  head -c 100000 /dev/urandom >> "$DIR/mnt/$h/$id/data.bin"
done
sleep 22
ctl a status
ctl a hosts
say "snapshots of ${projects[0]#*:} on its primary and replicas"
ctl a snapshots "${projects[0]#*:}"
say "replication lag as Prometheus sees it (agent on host a, http://10.213.0.11:9464/metrics)"
nsenter --net=/run/netns/$NAME-ctl node -e '
  fetch("http://10.213.0.11:9464/metrics").then((r) => r.text()).then((t) =>
    console.log(t.split("\n").filter((l) => /^storage_replication_(lag_max_seconds|projects_over_slo|sent_bytes_total)/.test(l)).join("\n")));'

if [ -t 0 ]; then
  say "running; status every 15 s. Press Ctrl-C to tear down."
  while sleep 15; do ctl a status; done
fi
