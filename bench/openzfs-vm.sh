#!/usr/bin/env bash
# The scale benchmark on real OpenZFS 2.1 (kernel module) in the openzfs-vm guest:
#   bash bench/openzfs-vm.sh            (BENCH_DATASETS=500 BENCH_SNAPSHOTS=30 BENCH_RUNS=5 BENCH_CHANGED=50)
# Builds the VM image if none is cached (test/env/openzfs-vm/build.sh), packs the built
# project, boots the guest with bench/openzfs-vm-guest.sh as its job: a kernel-ZFS
# sandbox, the pools built by bench/scale-pools.sh inside the guest (nothing persists
# between boots: the guest builds them every run, ~20-30 min under emulation), then
# bench/scale-bench.ts. The guest's output streams here. Emulated (TCG): compare shapes
# and ratios, not absolute times, with a real host.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=test/env/openzfs-vm
[ "$(id -u)" = 0 ] || { echo "bench: must run as root" >&2; exit 2; }
bash test/env/sandbox.sh deps
npm run --silent build
bash "$HERE/build.sh"
SHARE=$(mktemp -d /var/tmp/openzfs-bench.XXXXXX)
. "$HERE/pack.sh"
pack_project "$SHARE"
{
  printf 'BENCH_DATASETS=%q\n' "${BENCH_DATASETS:-500}"
  printf 'BENCH_SNAPSHOTS=%q\n' "${BENCH_SNAPSHOTS:-30}"
  printf 'BENCH_RUNS=%q\n' "${BENCH_RUNS:-5}"
  printf 'BENCH_CHANGED=%q\n' "${BENCH_CHANGED:-50}"
  printf 'BENCH_BASELINE_SAMPLE=%q\n' "${BENCH_BASELINE_SAMPLE:-50}"
} > "$SHARE/env.sh"
: > "$SHARE/output.log"
tail -n +1 -F "$SHARE/output.log" 2>/dev/null | sed -u 's/^/  [guest] /' &
tail_pid=$!
trap 'kill "$tail_pid" 2>/dev/null || true' EXIT
set +e
OPENZFS_VM_TIMEOUT=${OPENZFS_BENCH_TIMEOUT:-5400} OPENZFS_VM_MEM=${OPENZFS_VM_MEM:-6144} bash "$HERE/run.sh" bench/openzfs-vm-guest.sh "$SHARE"
rc=$?
set -e
sleep 1
echo "openzfs bench: exit $rc; output in $SHARE/output.log"
exit "$rc"
