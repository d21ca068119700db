#!/bin/sh
# PID 1 inside the openzfs-vm guest (baked into the image as /sbin/openzfs-vm-init by build.sh).
# Mounts proc/sys/dev, mounts the 9p share (tag host0) on /mnt, loads zfs, runs /mnt/job.sh,
# writes /mnt/output.log and /mnt/rc (the job's exit code), then powers the VM off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
# initramfs-tools already moved /proc /sys /dev /run onto the real root; mount what is missing
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mountpoint -q /run || mount -t tmpfs tmpfs /run
mount -o remount,rw / 2>/dev/null
hostname openzfs-vm
ip link set lo up 2>/dev/null
modprobe 9pnet_virtio; modprobe 9p
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt; then
  echo "openzfs-vm-init: cannot mount 9p share host0" >&2
  echo o >/proc/sysrq-trigger; sleep 5; reboot -f
fi
t0=$(date +%s.%N)
if modprobe zfs; then
  echo "openzfs-vm-init: modprobe zfs took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s; uptime at job start: $(cut -d' ' -f1 /proc/uptime) s" >/mnt/init.log
  if [ -f /mnt/job.sh ]; then
    ( cd /tmp && sh /mnt/job.sh ) >/mnt/output.log 2>&1
    rc=$?
  else
    echo "no /mnt/job.sh" >/mnt/output.log; rc=127
  fi
else
  echo "modprobe zfs failed" >/mnt/output.log; rc=126
fi
echo "$rc" >/mnt/rc.tmp && mv /mnt/rc.tmp /mnt/rc
sync; umount /mnt 2>/dev/null
# export pools and make / read-only so power-off does not race in-flight I/O
zpool export -a 2>/dev/null; mount -o remount,ro / 2>/dev/null; sync
echo o >/proc/sysrq-trigger
sleep 5; reboot -f
