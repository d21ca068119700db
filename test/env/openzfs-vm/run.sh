#!/usr/bin/env bash
# Boot the cached openzfs-vm image under qemu TCG and run one guest script in it.
#   run.sh GUEST_SCRIPT [SHARE_DIR]
# GUEST_SCRIPT is copied to SHARE_DIR/job.sh (SHARE_DIR: a fresh temp dir unless given) and
# run by the guest's init as root with zfs loaded. Afterwards SHARE_DIR holds output.log
# (the script's stdout+stderr), rc (its exit code), init.log and console.log (serial console).
# The image is never modified: the guest writes to a qcow2 copy-on-write overlay that is
# deleted afterwards. Exit code: the guest script's, or 125 if the VM produced no result.
# Env: OPENZFS_VM_CACHE, OPENZFS_VM_TIMEOUT (s, default 900), OPENZFS_VM_MEM (MiB, 2048),
#      OPENZFS_VM_SMP (2), OPENZFS_VM_KEEP_OVERLAY=1 to keep the overlay in SHARE_DIR/..
set -euo pipefail
CACHE="${OPENZFS_VM_CACHE:-/var/cache/storage-test/openzfs-vm}"
[[ $# -ge 1 && -f "$1" ]] || { echo "usage: $0 GUEST_SCRIPT [SHARE_DIR]" >&2; exit 2; }
[[ -f "$CACHE/.built" ]] || { echo "openzfs-vm: no image in $CACHE; run build.sh first" >&2; exit 2; }
SCRIPT="$1"
SHARE="${2:-$(mktemp -d /tmp/openzfs-vm-share.XXXXXX)}"
mkdir -p "$SHARE"; SHARE="$(cd "$SHARE" && pwd)"
rm -f "$SHARE/rc" "$SHARE/output.log" "$SHARE/init.log" "$SHARE/console.log"
cp "$SCRIPT" "$SHARE/job.sh"

OVL_DIR="$(mktemp -d /tmp/openzfs-vm-ovl.XXXXXX)"
OVL="$OVL_DIR/overlay.qcow2"
cleanup() { [[ "${OPENZFS_VM_KEEP_OVERLAY:-0}" == 1 ]] || rm -rf "$OVL_DIR"; }
trap cleanup EXIT
qemu-img create -q -f qcow2 -b "$CACHE/rootfs.img" -F raw "$OVL"

t0=$(date +%s.%N)
set +e
timeout --foreground -k 10 "${OPENZFS_VM_TIMEOUT:-900}" \
  qemu-system-x86_64 -accel tcg -smp "${OPENZFS_VM_SMP:-2}" -m "${OPENZFS_VM_MEM:-2048}" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -drive file="$OVL",format=qcow2,if=virtio \
    -virtfs local,path="$SHARE",mount_tag=host0,security_model=none \
    -append "console=ttyS0 root=/dev/vda rw init=/sbin/openzfs-vm-init quiet panic=-1" \
    </dev/null >"$SHARE/console.log" 2>&1
qrc=$?
set -e
el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
if [[ ! -f "$SHARE/rc" ]]; then
  echo "openzfs-vm: no result from guest (qemu exit $qrc after ${el}s); console tail:" >&2
  tail -n 40 "$SHARE/console.log" >&2
  exit 125
fi
rc=$(cat "$SHARE/rc")
echo "openzfs-vm: guest script exit $rc, VM wall time ${el}s, results in $SHARE" >&2
exit "$rc"
