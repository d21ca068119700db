#!/usr/bin/env bash
# Boot the cached openzfs-vm image under qemu TCG and run one guest script in it.
#   run.sh GUEST_SCRIPT [SHARE_DIR]
# GUEST_SCRIPT is copied to SHARE_DIR/job.sh (SHARE_DIR: a fresh temp dir unless given) and
# run by the guest's init as root with zfs loaded. Afterwards SHARE_DIR holds output.log
# (the script's stdout+stderr), rc (its exit code), init.log and console.log (serial console).
# The image is never modified: the guest writes to a qcow2 copy-on-write overlay that is
# deleted afterwards. Exit code: the guest script's, or 125 if the VM produced no result.
# OPENZFS_VM_RELEASE=trixie boots the trixie image (OpenZFS 2.3) with systemd as PID 1;
# its job may ask for a real reboot (it writes SHARE_DIR/reboot and exits: see
# guest-systemd.sh): the same disk is booted again, at most 3 times in all, within the
# one timeout; SHARE_DIR/boots counts them.
# Env: OPENZFS_VM_RELEASE (bookworm|trixie), OPENZFS_VM_CACHE, OPENZFS_VM_TIMEOUT (s,
#      default 900, for all boots), OPENZFS_VM_MEM (MiB, 2048), OPENZFS_VM_SMP (2),
#      OPENZFS_VM_KEEP_OVERLAY=1 to keep the overlay in SHARE_DIR/..
set -euo pipefail
RELEASE="${OPENZFS_VM_RELEASE:-bookworm}"
case "$RELEASE" in
  bookworm) CACHE="${OPENZFS_VM_CACHE:-/var/cache/storage-test/openzfs-vm}"; INIT="init=/sbin/openzfs-vm-init" ;;
  # systemd (/sbin/init) is PID 1; openzfs-vm-job.service runs the job
  trixie) CACHE="${OPENZFS_VM_CACHE:-/var/cache/storage-test/openzfs-vm-trixie}"; INIT="systemd.show_status=0" ;;
  *) echo "openzfs-vm: OPENZFS_VM_RELEASE must be bookworm or trixie, got '$RELEASE'" >&2; exit 2 ;;
esac
[[ $# -ge 1 && -f "$1" ]] || { echo "usage: $0 GUEST_SCRIPT [SHARE_DIR]" >&2; exit 2; }
[[ -f "$CACHE/.built" ]] || { echo "openzfs-vm: no image in $CACHE; run build.sh first" >&2; exit 2; }
SCRIPT="$1"
SHARE="${2:-$(mktemp -d /tmp/openzfs-vm-share.XXXXXX)}"
mkdir -p "$SHARE"; SHARE="$(cd "$SHARE" && pwd)"
rm -f "$SHARE/rc" "$SHARE/output.log" "$SHARE/init.log" "$SHARE/console.log" "$SHARE/reboot" "$SHARE/boots"
cp "$SCRIPT" "$SHARE/job.sh"

OVL_DIR="$(mktemp -d /tmp/openzfs-vm-ovl.XXXXXX)"
OVL="$OVL_DIR/overlay.qcow2"
cleanup() { [[ "${OPENZFS_VM_KEEP_OVERLAY:-0}" == 1 ]] || rm -rf "$OVL_DIR"; }
trap cleanup EXIT
qemu-img create -q -f qcow2 -b "$CACHE/rootfs.img" -F raw "$OVL"

t0=$(date +%s.%N)
deadline=$(( $(date +%s) + ${OPENZFS_VM_TIMEOUT:-900} ))
boot=0
set +e
while :; do
boot=$((boot + 1))
rm -f "$SHARE/reboot"
left=$(( deadline - $(date +%s) )); (( left > 0 )) || break
timeout --foreground -k 10 "$left" \
  qemu-system-x86_64 -accel tcg -smp "${OPENZFS_VM_SMP:-2}" -m "${OPENZFS_VM_MEM:-2048}" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -drive file="$OVL",format=qcow2,if=virtio \
    -virtfs local,path="$SHARE",mount_tag=host0,security_model=none \
    -append "console=ttyS0 root=/dev/vda rw $INIT quiet panic=-1" \
    </dev/null >>"$SHARE/console.log" 2>&1
qrc=$?
# a reboot the job asked for (and no result yet): boot the same disk again
[[ -f "$SHARE/reboot" && ! -f "$SHARE/rc" && $boot -lt 3 ]] || break
echo "openzfs-vm: the guest rebooted (boot $boot done after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s); booting again" >&2
done
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
