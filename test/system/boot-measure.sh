#!/bin/bash
# Second boot of the openzfs-2.3 guest (see boot-prepare.sh): how long from the kernel's
# start until the packaged agent has finished its first cycle over the 1,000 projects,
# what the import took, and what got mounted. Writes /mnt/results/boot.json (read by
# test/system/boot.test.ts), then stops the agent and exports the pool, so that the
# tier's tests run on a quiet guest.
set -euo pipefail
R=/mnt/results
ts() { awk '{printf "[guest %7.1fs] ", $1}' /proc/uptime; echo "$*"; }
first_cycle() { journalctl -b -u storage-agent -o json | jq -c 'select((.MESSAGE // "") | test("\"msg\":\"cycle done\""))' | head -1; }
for i in $(seq 1800); do
  [ -n "$(first_cycle)" ] && break
  sleep 1
done
line=$(first_cycle)
[ -n "$line" ] || { ts "no cycle done after the reboot"; journalctl -b -u storage-agent --no-pager | tail -30; systemctl status storage-agent --no-pager || true; }
mono() { systemctl show "$1" -p "$2" --value; }
mounted=$(awk '$3 == "zfs" && $1 ~ /^boot\/projects\// {n++} END {print n+0}' /proc/mounts)
jq -n --argjson line "${line:-null}" \
  --arg importStart "$(mono zfs-import-cache.service ExecMainStartTimestampMonotonic)" \
  --arg importExit "$(mono zfs-import-cache.service ExecMainExitTimestampMonotonic)" \
  --arg importResult "$(mono zfs-import-cache.service Result)" \
  --arg mountExit "$(mono zfs-mount.service ExecMainExitTimestampMonotonic)" \
  --arg agentStart "$(mono storage-agent.service ExecMainStartTimestampMonotonic)" \
  --arg agentState "$(mono storage-agent.service ActiveState)" \
  --arg mounted "$mounted" \
  --arg datasets "$(zfs list -H -o name -r -t filesystem boot/projects | wc -l)" \
  --arg imported "$(zpool list -H -o name boot 2>/dev/null)" \
  '{ firstCycleMonotonicUs: ($line.__MONOTONIC_TIMESTAMP // null), firstCycle: (($line.MESSAGE // "null") | fromjson? // null),
     importStartUs: $importStart, importExitUs: $importExit, importResult: $importResult, zfsMountExitUs: $mountExit,
     agentStartUs: $agentStart, agentState: $agentState, projectsMounted: ($mounted | tonumber),
     datasets: ($datasets | tonumber), pool: $imported }' >"$R/boot.json"
ts "boot: $(jq -c '{firstCycleS: ((.firstCycleMonotonicUs // "0" | tonumber) / 1e6), importS: (((.importExitUs | tonumber) - (.importStartUs | tonumber)) / 1e6), projectsMounted, datasets}' "$R/boot.json")"
journalctl -b -u storage-agent -o json >"$R/boot-journal.json"
# the capability probe's inputs on this OpenZFS (test/fixtures/openzfs-2.3.*: the unit tests)
mkdir -p "$R/fixtures"
zfs version >"$R/fixtures/openzfs-2.3.version.txt" 2>&1 || true
zfs '-?' >"$R/fixtures/openzfs-2.3.usage.txt" 2>/dev/null || true
zfs get 2>"$R/fixtures/openzfs-2.3.get-usage.txt" >/dev/null || true
zpool '-?' >"$R/fixtures/openzfs-2.3.zpool-usage.txt" 2>/dev/null || true
/usr/bin/storagectl --config /etc/storage-agent/config.yaml capabilities --json >"$R/capabilities-2.3.json" 2>&1 || true
