#!/usr/bin/env bash
# Build (once) and cache a Debian VM image with the release's OpenZFS (zfs-dkms):
#   OPENZFS_VM_RELEASE=bookworm (default): OpenZFS 2.1, the guest's PID 1 is our own init
#   OPENZFS_VM_RELEASE=trixie: OpenZFS 2.3, systemd is PID 1 (the job runs as a unit),
#     with Debian's nodejs and sudo (what the storage-agent package depends on)
# Output in $OPENZFS_VM_CACHE (default /var/cache/storage-test/openzfs-vm, and
# /var/cache/storage-test/openzfs-vm-trixie for trixie):
#   rootfs.img (raw ext4), vmlinuz, initrd.img, versions.txt, .built (marker, written last)
# Idempotent: if the marker exists the cached image is reused. A failed step aborts
# with the step name and the tail of its log. Needs root. Takes ~12 min on 2 cores.
set -euo pipefail

RELEASE="${OPENZFS_VM_RELEASE:-bookworm}"
case "$RELEASE" in
  bookworm) DEFAULT_CACHE=/var/cache/storage-test/openzfs-vm ;;
  trixie) DEFAULT_CACHE=/var/cache/storage-test/openzfs-vm-trixie ;;
  *) echo "openzfs-vm: OPENZFS_VM_RELEASE must be bookworm or trixie, got '$RELEASE'" >&2; exit 2 ;;
esac
CACHE="${OPENZFS_VM_CACHE:-$DEFAULT_CACHE}"
MARKER="$CACHE/.built"
# trixie: room for nodejs, the package test and the 1,000-project pool
IMG_SIZE="${OPENZFS_VM_IMG_SIZE:-}"
[[ -n $IMG_SIZE ]] || { [[ $RELEASE == trixie ]] && IMG_SIZE=5G || IMG_SIZE=3G; }

if [[ -f "$MARKER" ]]; then
  echo "openzfs-vm: cached image in $CACHE ($(cat "$MARKER"))"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "openzfs-vm: build.sh must run as root" >&2; exit 1; }

mkdir -p "$CACHE"
# one build at a time per image: a second caller (the tier, while test/run-all.sh builds
# the images in the background) waits for the first and then uses its image
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  echo "openzfs-vm: another build of $CACHE is running; waiting for it"
  flock 9
fi
if [[ -f "$MARKER" ]]; then
  echo "openzfs-vm: cached image in $CACHE ($(cat "$MARKER"))"
  exit 0
fi
WORK="$CACHE/build.tmp"
LOGDIR="$CACHE/logs"
ROOTFS="$WORK/rootfs"
mkdir -p "$LOGDIR"

cleanup_mounts() {
  for m in dev/pts dev proc sys; do
    mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
  done
}
trap cleanup_mounts EXIT

T0=$(date +%s)
step() { # step NAME CMD...  -> runs CMD with output to logs/NAME.log, fails loudly
  local name="$1"; shift
  local log="$LOGDIR/$name.log" t=$(date +%s)
  echo "openzfs-vm: [$name] ..."
  if ! "$@" >"$log" 2>&1; then
    echo "openzfs-vm: BUILD FAILED at step '$name' (log: $log); last lines:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  echo "openzfs-vm: [$name] ok ($(( $(date +%s) - t )) s)"
}

# --- mirrors: the ones apt on this host already uses ------------------------------
host_uris() { # print "URI SUITES" for every enabled debian source on the host
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1=="deb" { u=""; for(i=2;i<=NF;i++){ if($i ~ /^\[/){ while($i !~ /\]$/) i++; continue } u=$i; s=$(i+1); break } if(u!="") print u, s }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'BEGIN{RS=""; FS="\n"} { u=""; s=""; t=0; en=1
           for(i=1;i<=NF;i++){ if($i ~ /^URIs:/){ sub(/^URIs:[ \t]*/,"",$i); split($i,a," "); u=a[1] }
             if($i ~ /^Suites:/){ sub(/^Suites:[ \t]*/,"",$i); s=$i }
             if($i ~ /^Types:.*deb( |$)/) t=1
             if($i ~ /^Enabled:[ \t]*no/) en=0 }
           if(u!="" && t && en) print u, s }' "$f"
  done
}
MIRROR="${OPENZFS_VM_MIRROR:-$(host_uris | awk '$0 ~ /debian/ && $0 !~ /security/ {print $1; exit}')}"
SEC_MIRROR="${OPENZFS_VM_SECURITY_MIRROR:-$(host_uris | awk '$0 ~ /security/ {print $1; exit}')}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SEC_MIRROR="${SEC_MIRROR:-${MIRROR%/debian}/debian-security}"
echo "openzfs-vm: mirror $MIRROR, security mirror $SEC_MIRROR, cache $CACHE"

# --- host tools ---------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  step host-apt-update apt-get update
  step host-apt-install env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

# --- rootfs -------------------------------------------------------------------------
rm -rf "$WORK"; mkdir -p "$WORK"
step debootstrap debootstrap --variant=minbase "$RELEASE" "$ROOTFS" "$MIRROR"

cat >"$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR $RELEASE main contrib
deb $MIRROR $RELEASE-updates main contrib
deb $SEC_MIRROR $RELEASE-security main contrib
SRC
# no daemons may start inside the build chroot
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"; chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
echo openzfs-vm >"$ROOTFS/etc/hostname"

mount -t proc proc "$ROOTFS/proc"
mount -t sysfs sys "$ROOTFS/sys"
mount --bind /dev "$ROOTFS/dev"
mount --bind /dev/pts "$ROOTFS/dev/pts"

inchroot() { chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
APT="apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"

step chroot-apt-update inchroot apt-get update
# resolve the concrete kernel ABI the current point release carries (linux-image-6.1.0-NN-amd64)
KPKG=$(inchroot apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[[ -n "$KPKG" ]] || { echo "openzfs-vm: BUILD FAILED at step 'resolve-kernel': cannot resolve linux-image-amd64" >&2; exit 1; }
KVER=${KPKG#linux-image-}
echo "openzfs-vm: kernel $KVER"
step kernel inchroot $APT install linux-image-amd64 linux-headers-amd64 "linux-image-$KVER" "linux-headers-$KVER" initramfs-tools
step base-tools inchroot $APT install openssh-server iproute2 procps kmod udev
step zfs inchroot $APT install zfs-dkms zfsutils-linux
if [[ $RELEASE == trixie ]]; then
  # systemd as PID 1 (the agent runs as the shipped unit), and what the .deb depends on
  step systemd inchroot $APT install systemd systemd-sysv nodejs sudo
fi
# make sure the module was built for the kernel we boot (dkms in a chroot may pick `uname -r`)
if ! ls "$ROOTFS/lib/modules/$KVER/updates/dkms/zfs.ko"* >/dev/null 2>&1; then
  step dkms-autoinstall inchroot dkms autoinstall -k "$KVER"
fi
ls "$ROOTFS/lib/modules/$KVER/updates/dkms/zfs.ko"* >/dev/null 2>&1 \
  || { echo "openzfs-vm: BUILD FAILED at step 'zfs-module': zfs.ko missing for $KVER" >&2; tail -n 40 "$LOGDIR/zfs.log" >&2; exit 1; }
step depmod inchroot depmod -a "$KVER"
# virtio + 9p in the initramfs are harmless; 9p is loaded later from the root fs anyway
printf 'virtio_pci\nvirtio_blk\nvirtio_net\n9p\n9pnet_virtio\n' >>"$ROOTFS/etc/initramfs-tools/modules"
step initramfs inchroot update-initramfs -u -k "$KVER"
ls "$ROOTFS/lib/modules/$KVER/kernel/fs/9p/"9p.ko* >/dev/null 2>&1 \
  || { echo "openzfs-vm: BUILD FAILED at step '9p-check': no 9p module in $KVER" >&2; exit 1; }

# guest init: mounts, modprobe zfs, runs /mnt/job.sh from the 9p share, writes results, powers off
install -m 0755 "$(dirname "$0")/guest-init.sh" "$ROOTFS/sbin/openzfs-vm-init"
if [[ $RELEASE == trixie ]]; then
  # systemd boots; the job is a unit (guest-systemd.sh), the same job contract as above
  install -m 0755 "$(dirname "$0")/guest-systemd.sh" "$ROOTFS/sbin/openzfs-vm-job"
  cat >"$ROOTFS/etc/systemd/system/openzfs-vm-job.service" <<'UNIT'
[Unit]
Description=openzfs-vm job: runs /mnt/job.sh from the host's 9p share, then powers off
After=local-fs.target systemd-journald.service zfs-import.target
[Service]
Type=oneshot
ExecStart=/sbin/openzfs-vm-job
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
  mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
  ln -sf /etc/systemd/system/openzfs-vm-job.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/openzfs-vm-job.service"
  # nothing that waits for a network or a terminal, nothing periodic
  for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
           systemd-networkd-wait-online.service getty@tty1.service serial-getty@ttyS0.service \
           zfs-zed.service zfs-scrub-monthly@.timer zfs-trim-monthly@.timer; do
    ln -sf /dev/null "$ROOTFS/etc/systemd/system/$u"
  done
  echo 'root:openzfs-vm' | chroot "$ROOTFS" chpasswd
fi

{
  echo "kernel=$KVER"
  inchroot dpkg-query -W -f='${Package}=${Version}\n' zfs-dkms zfsutils-linux "linux-image-$KVER" openssh-server
  [[ $RELEASE != trixie ]] || inchroot dpkg-query -W -f='${Package}=${Version}\n' systemd nodejs
  echo "mirror=$MIRROR security_mirror=$SEC_MIRROR"
} >"$WORK/versions.txt"
inchroot apt-get clean
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
cleanup_mounts

cp -L "$ROOTFS/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp -L "$ROOTFS/boot/initrd.img-$KVER" "$WORK/initrd.img"
step mke2fs mke2fs -F -q -t ext4 -L openzfs-vm -d "$ROOTFS" "$WORK/rootfs.img" "$IMG_SIZE"

mv -f "$WORK/rootfs.img" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/versions.txt" "$CACHE/"
rm -rf "$WORK"
echo "built $(date -u +%FT%TZ) in $(( $(date +%s) - T0 )) s; $(tr '\n' ' ' <"$CACHE/versions.txt")" >"$MARKER"
echo "openzfs-vm: done: $(cat "$MARKER")"
