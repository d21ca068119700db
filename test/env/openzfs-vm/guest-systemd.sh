#!/bin/sh
# The job runner of the trixie openzfs-vm guest, where systemd is PID 1 (baked into the
# image as /sbin/openzfs-vm-job by build.sh; started by openzfs-vm-job.service).
# The same contract as guest-init.sh (the bookworm guest's PID 1): mounts the 9p share
# (tag host0) on /mnt, loads zfs, runs /mnt/job.sh, appends its output to
# /mnt/output.log, writes its exit code to /mnt/rc and powers the VM off.
# One addition: a job that needs a real reboot (the boot-time test) writes /mnt/reboot
# and exits; then no rc is written and the VM reboots (qemu -no-reboot exits; run.sh
# boots the same disk again and this job runs again: /mnt/boots counts the boots).
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /mnt
if ! mountpoint -q /mnt && ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt; then
  echo "openzfs-vm-job: cannot mount 9p share host0" >&2
  systemctl poweroff --force --force
fi
boots=$(( $(cat /mnt/boots 2>/dev/null || echo 0) + 1 )); echo "$boots" >/mnt/boots
t0=$(date +%s.%N)
if modprobe zfs; then
  echo "openzfs-vm-job: boot $boots: modprobe zfs took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s; uptime at job start: $(cut -d' ' -f1 /proc/uptime) s; PID 1 $(cat /proc/1/comm)" >>/mnt/init.log
  rm -f /mnt/reboot
  if [ -f /mnt/job.sh ]; then
    ( cd /tmp && sh /mnt/job.sh ) >>/mnt/output.log 2>&1
    rc=$?
  else
    echo "no /mnt/job.sh" >>/mnt/output.log; rc=127
  fi
else
  echo "modprobe zfs failed" >>/mnt/output.log; rc=126
fi
if [ -f /mnt/reboot ]; then
  sync; umount /mnt 2>/dev/null
  systemctl reboot
  exit 0
fi
echo "$rc" >/mnt/rc.tmp && mv /mnt/rc.tmp /mnt/rc
sync; umount /mnt 2>/dev/null
zpool export -a 2>/dev/null; sync
systemctl poweroff --force --force
