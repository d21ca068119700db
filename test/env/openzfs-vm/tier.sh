#!/usr/bin/env bash
# The openzfs test tier (run by test/run-all.sh): real OpenZFS 2.1 (kernel module) in
# the openzfs-vm guest. Builds the image if it is not cached (build.sh, ~8-11 min once),
# packs the BUILT project (bin, dist, node_modules) with this host's node binary and jq
# into a share directory, boots the guest (run.sh) with tier-guest.sh as its job, which
# brings up a kernel-ZFS sandbox (network namespaces + sshd per host) inside the guest
# and runs `node dist/test/run.js openzfs` there. The guest's output streams here live;
# its `tier openzfs: ...` line is appended to $TIER_SUMMARY_FILE.
# Never silent: whatever goes wrong (no image, no VM, no result) ends in a failing line
#   tier openzfs: 0 passed, 1 failed, 0 skipped (reason)
# Env: TEST_ONLY, CI (passed to the guest), OPENZFS_TIER_DIRS (test directories under
#      dist/test, comma-separated; default: the tier's own, integration,openzfs; e.g.
#      integration,openzfs,operations), OPENZFS_TIER_TIMEOUT (s, default 3600),
#      OPENZFS_TIER_SCALE (timing bounds in tests x this, default 6), OPENZFS_VM_MEM
#      (MiB, default 6144 here), OPENZFS_VM_SMP, OPENZFS_VM_CACHE, OPENZFS_TIER_KEEP=1.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"

summary_line() { echo "$1"; if [ -n "${TIER_SUMMARY_FILE:-}" ]; then echo "$1" >> "$TIER_SUMMARY_FILE"; fi; }
fail() { summary_line "tier openzfs: 0 passed, 1 failed, 0 skipped ($*)"; exit 1; }
now() { date +%s; }

[ "$(id -u)" = 0 ] || fail "must run as root (image build, qemu)"
[ -f dist/test/run.js ] && [ -f dist/src/cli/serve-ssh.js ] || fail "the project is not built (npm run build)"
[ -d node_modules ] || fail "node_modules missing (npm ci)"

t_start=$(now)
echo "openzfs tier: image"
bash "$HERE/build.sh" || fail "the VM image could not be built: see the BUILD FAILED lines above"
t_built=$(now)

SHARE=$(mktemp -d /var/tmp/openzfs-tier.XXXXXX)
cleanup() { [ -n "${tail_pid:-}" ] && kill "$tail_pid" 2>/dev/null; [ "${OPENZFS_TIER_KEEP:-0}" = 1 ] || rm -rf "$SHARE/repo.tar" "$SHARE/tools"; }
trap cleanup EXIT
echo "openzfs tier: packing the built project into $SHARE"
. "$HERE/pack.sh"
pack_project "$SHARE" || fail "could not pack the project for the guest: see above"
{
  printf 'TEST_TIMEOUT_SCALE=%q\n' "${OPENZFS_TIER_SCALE:-6}"
  printf 'TEST_ONLY=%q\n' "${TEST_ONLY:-}"
  printf 'CI=%q\n' "${CI:-}"
  printf 'OPENZFS_TIER_DIRS=%q\n' "${OPENZFS_TIER_DIRS:-}"
} > "$SHARE/env.sh"

echo "openzfs tier: booting the guest (qemu TCG, ${OPENZFS_VM_SMP:-2} cores, ${OPENZFS_VM_MEM:-6144} MiB); guest output follows"
: > "$SHARE/output.log"
tail -n +1 -F "$SHARE/output.log" 2>/dev/null | sed -u 's/^/  [guest] /' &
tail_pid=$!
t_boot=$(now)
OPENZFS_VM_TIMEOUT=${OPENZFS_TIER_TIMEOUT:-3600} OPENZFS_VM_MEM=${OPENZFS_VM_MEM:-6144} \
  bash "$HERE/run.sh" "$HERE/tier-guest.sh" "$SHARE"
rc=$?
t_end=$(now)
sleep 1; kill "$tail_pid" 2>/dev/null; pkill -P "$tail_pid" 2>/dev/null; tail_pid=""
echo "openzfs tier: image step $((t_built - t_start)) s, VM $((t_end - t_boot)) s (guest: $(cat "$SHARE/init.log" 2>/dev/null)); results in $SHARE"
[ -f "$SHARE/results/figures.txt" ] && sed 's/^/openzfs tier: /' "$SHARE/results/figures.txt"
line=$(grep -E '^tier openzfs: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$SHARE/output.log" | tail -n 1)
if [ -z "$line" ]; then
  case $rc in
    125) fail "the VM produced no result (timeout or crash): see $SHARE/console.log" ;;
    *) fail "the guest reported no tier line (exit $rc): see $SHARE/output.log" ;;
  esac
fi
summary_line "$line"
exit "$rc"
