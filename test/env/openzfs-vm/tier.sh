#!/usr/bin/env bash
# The openzfs VM tiers (run by test/run-all.sh), one per release:
#   tier.sh 2.1  -> tier openzfs-2.1: Debian bookworm, OpenZFS 2.1, our own init as PID 1
#   tier.sh 2.3  -> tier openzfs-2.3: Debian trixie, OpenZFS 2.3, systemd as PID 1, and
#                   the system tests (the .deb installed, the shipped unit, a reboot with
#                   1,000 projects: test/system)
# real OpenZFS (kernel module) in the openzfs-vm guest. Builds the image if it is not cached (build.sh, ~8-11 min once),
# packs the BUILT project (bin, dist, node_modules) with this host's node binary and jq
# into a share directory, boots the guest (run.sh) with tier-guest.sh as its job, which
# brings up a kernel-ZFS sandbox (network namespaces + sshd per host) inside the guest
# and runs `node dist/test/run.js openzfs-2.x` there. The guest's output streams here live;
# its `tier openzfs-2.x: ...` line is appended to $TIER_SUMMARY_FILE.
# Never silent: whatever goes wrong (no image, no VM, no result) ends in a failing line
#   tier openzfs-2.x: 0 passed, 1 failed, 0 skipped (reason)
# Env: TEST_ONLY, CI (passed to the guest), OPENZFS_TIER_DIRS (test directories under
#      dist/test, comma-separated; default: the tier's own, integration,openzfs; e.g.
#      integration,openzfs,operations), OPENZFS_TIER_TIMEOUT (s, default 3600),
#      OPENZFS_TIER_SCALE (timing bounds in tests x this, default 6), OPENZFS_VM_MEM
#      (MiB, default 6144 here), OPENZFS_VM_SMP, OPENZFS_VM_CACHE, OPENZFS_TIER_KEEP=1.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"

ZFS_LINE=${1:-2.1}
TIER=openzfs-$ZFS_LINE
summary_line() { echo "$1"; if [ -n "${TIER_SUMMARY_FILE:-}" ]; then echo "$1" >> "$TIER_SUMMARY_FILE"; fi; }
fail() { summary_line "tier $TIER: 0 passed, 1 failed, 0 skipped ($*)"; exit 1; }
case $ZFS_LINE in
  2.1) export OPENZFS_VM_RELEASE=bookworm; SYSTEM_TESTS=0 ;;
  2.3) export OPENZFS_VM_RELEASE=trixie; SYSTEM_TESTS=1 ;;
  *) fail "unknown OpenZFS line '$ZFS_LINE' (2.1 or 2.3)" ;;
esac
now() { date +%s; }

[ "$(id -u)" = 0 ] || fail "must run as root (image build, qemu)"
[ -f dist/test/run.js ] && [ -f dist/src/cli/serve-ssh.js ] || fail "the project is not built (npm run build)"
[ -d node_modules ] || fail "node_modules missing (npm ci)"

t_start=$(now)
echo "$TIER tier: image ($OPENZFS_VM_RELEASE)"
bash "$HERE/build.sh" || fail "the VM image could not be built: see the BUILD FAILED lines above"
t_built=$(now)

SHARE=$(mktemp -d /var/tmp/openzfs-tier.XXXXXX)
cleanup() { [ -n "${tail_pid:-}" ] && kill "$tail_pid" 2>/dev/null; [ -n "${started_pid:-}" ] && kill "$started_pid" 2>/dev/null; [ "${OPENZFS_TIER_KEEP:-0}" = 1 ] || rm -rf "$SHARE/repo.tar" "$SHARE/tools"; }
trap cleanup EXIT
echo "$TIER tier: packing the built project into $SHARE"
. "$HERE/pack.sh"
pack_project "$SHARE" || fail "could not pack the project for the guest: see above"
if [ "$SYSTEM_TESTS" = 1 ]; then
  echo "$TIER tier: building the Debian package (npm run package)"
  PKG_SKIP_BUILD=1 PKG_OUT="$SHARE" bash packaging/build-deb.sh 2>"$SHARE/package.log" >/dev/null || { cat "$SHARE/package.log"; fail "npm run package failed: see above"; }
  grep -o 'storage-agent_[^ ]*\.deb ([^)]*)' "$SHARE/package.log" > "$SHARE/results/package-size.txt"
fi
{
  printf 'TEST_TIMEOUT_SCALE=%q\n' "${OPENZFS_TIER_SCALE:-6}"
  printf 'TEST_ONLY=%q\n' "${TEST_ONLY:-}"
  printf 'CI=%q\n' "${CI:-}"
  printf 'OPENZFS_TIER_DIRS=%q\n' "${OPENZFS_TIER_DIRS:-}"
  printf 'TIER_NAME=%q\n' "$TIER"
  printf 'SYSTEM_TESTS=%q\n' "$SYSTEM_TESTS"
} > "$SHARE/env.sh"

echo "$TIER tier: booting the $OPENZFS_VM_RELEASE guest (qemu TCG, ${OPENZFS_VM_SMP:-2} cores, ${OPENZFS_VM_MEM:-6144} MiB); guest output follows"
: > "$SHARE/output.log"
tail -n +1 -F "$SHARE/output.log" 2>/dev/null | sed -u 's/^/  [guest] /' &
tail_pid=$!
# OPENZFS_TIER_TESTS_STARTED=FILE: created when the guest starts the tier's tests (after
# its boot phases), so that run-all.sh can start the other VM tier beside the tests
if [ -n "${OPENZFS_TIER_TESTS_STARTED:-}" ]; then
  ( until grep -qE "\] running $TIER(=|\$)" "$SHARE/output.log" 2>/dev/null; do sleep 5; done; : > "$OPENZFS_TIER_TESTS_STARTED" ) &
  started_pid=$!
fi
t_boot=$(now)
OPENZFS_VM_TIMEOUT=${OPENZFS_TIER_TIMEOUT:-3600} OPENZFS_VM_MEM=${OPENZFS_VM_MEM:-6144} \
  bash "$HERE/run.sh" "$HERE/tier-guest.sh" "$SHARE"
rc=$?
t_end=$(now)
sleep 1; kill "$tail_pid" 2>/dev/null; pkill -P "$tail_pid" 2>/dev/null; tail_pid=""
echo "$TIER tier: image step $((t_built - t_start)) s, VM $((t_end - t_boot)) s (guest: $(cat "$SHARE/init.log" 2>/dev/null)); results in $SHARE"
[ -f "$SHARE/results/figures.txt" ] && sed "s/^/$TIER tier: /" "$SHARE/results/figures.txt"
line=$(grep -E "^tier $TIER: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped" "$SHARE/output.log" | tail -n 1)
if [ -z "$line" ]; then
  case $rc in
    125) fail "the VM produced no result (timeout or crash): see $SHARE/console.log" ;;
    *) fail "the guest reported no tier line (exit $rc): see $SHARE/output.log" ;;
  esac
fi
summary_line "$line"
exit "$rc"
