#!/bin/sh
# Demo / smoke test run inside the openzfs-vm guest by run.sh:
# two file-vdev pools, replication (-R -i) with resumable receive, and an interrupted
# receive that leaves receive_resume_token, then resumed with `zfs send -t`.
set -eu
ts() { awk '{printf "[%7.2fs] ", $1}' /proc/uptime; echo "$*"; }
ts "uname: $(uname -r)"
ts "zfs version:"; zfs version
truncate -s 1G /var/tmp/src.vdev /var/tmp/dst.vdev
zpool create -f -o ashift=12 -O mountpoint=/src src /var/tmp/src.vdev
zpool create -f -o ashift=12 -O mountpoint=none dst /var/tmp/dst.vdev
zfs create src/data
dd if=/dev/urandom of=/src/data/f1 bs=1M count=8 status=none
zfs snapshot -r src/data@a
dd if=/dev/urandom of=/src/data/f2 bs=1M count=8 status=none
zfs snapshot -r src/data@b
ts "full send -R @a"
zfs send -R src/data@a | zfs recv -u -s dst/data
ts "incremental send -R -i @a @b | recv -u -s"
zfs send -R -i @a src/data@b | zfs recv -u -s dst/data
ts "zfs list -H -p -o name,guid,creation,written (snapshots and filesystems):"
zfs list -H -p -t all -o name,guid,creation,written -r src dst
# interrupted receive
dd if=/dev/urandom of=/src/data/f3 bs=1M count=32 status=none
zfs snapshot src/data@c
ts "interrupted receive: send -i @b @c | head -c 4MiB | recv -u -s"
set +e
zfs send -i @b src/data@c | head -c 4194304 | zfs recv -u -s dst/data
echo "recv exit (expected non-zero): $?"
set -e
TOKEN=$(zfs get -H -o value receive_resume_token dst/data)
ts "receive_resume_token=$TOKEN"
[ -n "$TOKEN" ] && [ "$TOKEN" != "-" ] || { echo "FAIL: no resume token"; exit 1; }
zfs send -nv -t "$TOKEN" 2>&1 | head -3 || true
ts "resuming: zfs send -t TOKEN | zfs recv -u -s"
zfs send -t "$TOKEN" | zfs recv -u -s dst/data
ts "after resume: token=$(zfs get -H -o value receive_resume_token dst/data)"
zfs list -H -p -t all -o name,guid,creation,written -r dst
[ "$(zfs get -H -o value guid src/data@c)" = "$(zfs get -H -o value guid dst/data@c)" ] || { echo "FAIL: guid mismatch"; exit 1; }
zpool export dst; zpool export src
ts "OK"
