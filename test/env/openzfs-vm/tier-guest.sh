#!/bin/sh
# The openzfs-2.x tier's job inside the openzfs-vm guest (see tier.sh): installs the node,
# jq and rsync binaries from the share, unpacks the built project on the guest's own disk
# (9p is slow), brings up the sandbox on the kernel module (--zfs kernel: hosts a b c
# as network namespaces on a bridge, each with its own sshd and pool) and runs the tier
# from the control namespace. Its exit code is the tier's.
set -eu
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
ts() { awk '{printf "[guest %7.1fs] ", $1}' /proc/uptime; echo "$*"; }
. /mnt/env.sh
export TEST_TIMEOUT_SCALE TEST_ONLY CI
[ -n "$TEST_ONLY" ] || unset TEST_ONLY
[ -n "$CI" ] || unset CI
boot=$(cat /mnt/boots 2>/dev/null || echo 1)
ts "boot $boot: kernel $(uname -r), $(zfs version | head -1) / $(cat /sys/module/zfs/version), PID 1 $(cat /proc/1/comm)"
if [ "$boot" = 1 ]; then
  sh /mnt/install.sh
  ts "node $(node -v), jq $(jq --version), $(rsync --version | head -1); project unpacked"
fi
cd /opt/storage
# the system tests (openzfs-2.3, systemd as PID 1): the first boot installs the package
# and makes the 1,000-project pool, then reboots; the second measures that boot
if [ "${SYSTEM_TESTS:-0}" = 1 ]; then
  if [ "$boot" = 1 ]; then
    bash test/system/boot-prepare.sh
    exit 0
  fi
  bash test/system/boot-measure.sh
fi
export SANDBOX_ZFS=kernel SANDBOX_MANIFEST=/var/tmp/storage-sandbox-stt/sandbox.json OPENZFS_RESULTS_DIR=/mnt/results
bash test/env/sandbox.sh up --name stt
ts "sandbox up"
set +e
tier=$TIER_NAME
if [ -n "${OPENZFS_TIER_DIRS:-}" ]; then
  tier="$TIER_NAME=$(printf '%s' "$OPENZFS_TIER_DIRS" | sed 's#[^,][^,]*#dist/test/&#g')"
fi
ts "running $tier"
# what the guest is doing, once a minute, for a run that hangs (readable from the host
# while it runs: results/ps.txt, each process with the kernel function it waits in)
( while sleep 60; do ps -eo pid,ppid,stat,wchan:32,etime,args --sort=start_time > /mnt/results/ps.tmp 2>&1 && mv /mnt/results/ps.tmp /mnt/results/ps.txt; done ) &
ps_pid=$!
nsenter --net=/run/netns/stt-ctl node dist/test/run.js "$tier"
rc=$?
kill "$ps_pid" 2>/dev/null
set -e
ts "tier done (exit $rc)"
bash test/env/sandbox.sh down --name stt || true
exit $rc
