#!/usr/bin/env bash
# Verifies systemd unit files with `systemd-analyze verify`, robustly, on any machine
# (with or without systemd as PID 1, with or without the deployment paths):
#
#   test/env/verify-unit.sh [UNIT_FILE...]     (default: systemd/storage-agent.service)
#
# `systemd-analyze verify` alone is not enough:
#  - it fails when an Exec*= program does not exist here (e.g. /usr/bin/node on a
#    machine whose node lives elsewhere), so the unit is verified inside a throw-away
#    root (--root) that holds the distribution's units and the deployment paths;
#  - it exits 0 on unknown keys and unparsable values ("..., ignoring"), so any
#    diagnostic that names the unit file counts as a failure;
#  - a self-test runs a broken copy through the same check and requires it to fail, so
#    a checker that silently accepts everything cannot pass.
# Exec*= programs are stubbed in the root only if they exist on this machine or are
# deployment paths of the product (DEPLOY_PATHS); any other missing program fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEPLOY_PATHS=(/usr/bin/node /usr/lib/storage-agent/bin/storage-agent /usr/lib/storage-agent/bin/storagectl)

die() { printf 'verify-unit: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'verify-unit: %s\n' "$*" >&2; }

ensure_analyze() {
  command -v systemd-analyze >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "systemd-analyze is missing and installing it (Debian package 'systemd') needs root"
  log "installing Debian package 'systemd' (for systemd-analyze)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; } ||
    die "apt-get install systemd failed"
  command -v systemd-analyze >/dev/null || die "package 'systemd' installed but systemd-analyze is still missing"
}

system_unit_dir() {
  local d
  for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$d/sysinit.target" ]; then printf '%s\n' "$d"; return 0; fi
  done
  die "no distribution unit directory with sysinit.target (/usr/lib/systemd/system): is systemd installed?"
}

# programs named by Exec*= lines (prefixes -@:+! stripped), one per line
exec_programs() {
  sed -n -E 's/^[[:space:]]*Exec[A-Za-z]*=[[:space:]]*[-@:+!]*([^[:space:]]+).*/\1/p' "$1" | sort -u
}

# verify_one FILE -> prints diagnostics, returns 0 when clean
verify_one() {
  local file=$1 name root out rc=0 prog
  name=$(basename "$file")
  root=$(mktemp -d "$WORK/root.XXXXXX")
  mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
  cp -a "$(system_unit_dir)" "$root/usr/lib/systemd/system"
  cp "$file" "$root/etc/systemd/system/$name"
  while read -r prog; do
    [ -n "$prog" ] || continue
    case "$prog" in
      /*) ;;
      *) printf '%s: Exec program "%s" is not an absolute path\n' "$file" "$prog"; return 1 ;;
    esac
    local deploy=0 p
    for p in "${DEPLOY_PATHS[@]}"; do [ "$p" = "$prog" ] && deploy=1; done
    if [ $deploy = 0 ] && [ ! -x "$prog" ]; then
      printf '%s: Exec program %s does not exist on this machine and is not a deployment path (%s)\n' "$file" "$prog" "${DEPLOY_PATHS[*]}"
      return 1
    fi
    mkdir -p "$root$(dirname "$prog")"
    printf '#!/bin/sh\nexit 0\n' > "$root$prog"
    chmod 755 "$root$prog"
  done < <(exec_programs "$file")
  out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no --generators=no --root="$root" "$name" 2>&1) || rc=$?
  # diagnostics about this unit (others come from the distribution's units)
  local ours
  ours=$(printf '%s\n' "$out" | grep -F -- "$name" || true)
  if [ $rc != 0 ] || [ -n "$ours" ]; then
    printf '%s\n' "${ours:-$out}" | sed "s#$root/etc/systemd/system/#$(dirname "$file")/#g"
    [ $rc != 0 ] && printf '(systemd-analyze verify exit %s)\n' "$rc"
    return 1
  fi
  return 0
}

# project rules checked on top of systemd's own (only for the storage agent's unit)
policy_checks() {
  local file=$1 bad=0 v
  want() { grep -qE "^$1\$" "$file" || { printf '%s: expected a line matching ^%s$\n' "$file" "$1"; bad=1; }; }
  want 'Type=simple'
  want 'ExecStart=/usr/bin/node /usr/lib/storage-agent/bin/storage-agent --config /etc/storage-agent/config.yaml'
  want 'ExecReload=/bin/kill -HUP \$MAINPID'
  want 'Restart=on-failure'
  want 'RestartSec=[0-9]+s?'
  want 'StartLimitIntervalSec=.+'
  want 'StartLimitBurst=[0-9]+'
  want 'KillSignal=SIGTERM'
  want 'KillMode=mixed'
  want 'OOMScoreAdjust=-900'
  want 'NoNewPrivileges=yes'
  want 'StateDirectory=storage-agent'
  want 'ConditionPathExists=/etc/storage-agent/config.yaml'
  # the agent mounts and unmounts (fence) in the host's mount namespace: no setting that
  # gives the service a namespace of its own (systemd/storage-agent.service says why)
  local ns
  ns=$(grep -nE '^(ProtectSystem=(yes|true|full|strict)|ProtectHome=(yes|true|read-only|tmpfs)|PrivateTmp=(yes|true)|PrivateDevices=(yes|true)|PrivateMounts=(yes|true)|ProtectKernelTunables=(yes|true)|ProtectKernelModules=(yes|true)|ProtectKernelLogs=(yes|true)|ProtectControlGroups=(yes|true)|ProtectHostname=(yes|true)|ProtectProc=|ProcSubset=|(ReadWrite|ReadOnly|Inaccessible|Exec|NoExec)Paths=|BindPaths=|BindReadOnlyPaths=|TemporaryFileSystem=|RootDirectory=|RootImage=|MountFlags=)' "$file" || true)
  if [ -n "$ns" ]; then
    printf '%s: gives the agent a mount namespace of its own (its fence would unmount for itself only):\n%s\n' "$file" "$ns"
    bad=1
  fi
  # the agent's shutdown grace is 20 s (--shutdown-grace): systemd must wait longer
  v=$(sed -n -E 's/^TimeoutStopSec=([0-9]+)s?$/\1/p' "$file")
  if [ -z "$v" ] || [ "$v" -le 20 ]; then
    printf '%s: TimeoutStopSec must be a number of seconds above the agent'"'"'s 20 s shutdown grace (got "%s")\n' "$file" "$v"
    bad=1
  fi
  # StartLimit* belong in [Unit] (in [Service] systemd ignores them with a warning)
  if awk '/^\[/{s=$0} /^StartLimit/{ if (s != "[Unit]") exit 0; else next } END{exit 1}' "$file"; then
    printf '%s: StartLimitIntervalSec/StartLimitBurst must be in [Unit]\n' "$file"
    bad=1
  fi
  return $bad
}

ensure_analyze
WORK=$(mktemp -d /tmp/verify-unit.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
units=("$@")
[ ${#units[@]} -gt 0 ] || units=("$REPO/systemd/storage-agent.service")

# self-test: a copy with an unknown key and a bad value must be rejected
st=$(mktemp -d "$WORK/selftest.XXXXXX")
sed -e 's/^Type=simple$/Type=simplex/' -e '/^\[Service\]/a NoSuchKey=1' "${units[0]}" > "$st/$(basename "${units[0]}")"
if verify_one "$st/$(basename "${units[0]}")" >/dev/null 2>&1; then
  die "self-test failed: a unit with 'Type=simplex' and 'NoSuchKey=1' passed; the check is not trustworthy here ($(systemd-analyze --version | head -1))"
fi

status=0
for u in "${units[@]}"; do
  [ -f "$u" ] || die "unit file $u does not exist"
  if ! verify_one "$u"; then
    log "FAILED: $u (systemd-analyze verify)"
    status=1
    continue
  fi
  if [ "$(basename "$u")" = storage-agent.service ] && ! policy_checks "$u"; then
    log "FAILED: $u (project rules)"
    status=1
    continue
  fi
  log "ok: $u ($(systemd-analyze --version | head -1))"
done
exit $status
