#!/usr/bin/env bash
# A local multi-host sandbox on one machine: every simulated host is a network
# namespace with its own OpenSSH sshd (own host key, own authorized_keys), its own
# ZFS pool on a sparse file vdev (served by the one zfs-fuse daemon), and a
# datacenter label. Used by the integration tests and by the demo.
#
#   test/env/sandbox.sh up       [--name NAME] [--hosts "a:dc1 b:dc2 c:dc3"] [--pool-size 512M]
#   test/env/sandbox.sh down     [--name NAME]
#   test/env/sandbox.sh status   [--name NAME]
#   test/env/sandbox.sh deps     (install missing Debian packages, start zfs-fuse)
#
# ZFS implementation: zfs-fuse (default) or the kernel module (--zfs kernel, or
# SANDBOX_ZFS=kernel: real OpenZFS, e.g. inside the openzfs-vm guest). With the kernel
# module there is no daemon: pools are created on the same sparse files with
# `zpool create -f -o cachefile=none`, nothing is installed (the guest has no network)
# and a missing tool is an error. The subnet is SANDBOX_SUBNET (default 10.213.0).
#
# `up` is idempotent: it first removes whatever a previous run of the same NAME left
# behind (even one that was kill -9'd midway), then builds everything anew and writes
# a manifest, $SANDBOX_DIR/sandbox.json, that tests and the demo read.
set -Eeuo pipefail
# set -e ends the script at the first failing command; say which one, never exit silently
trap 'rc=$?; printf "sandbox: error: line %s: %s (exit %s)\n" "$LINENO" "$BASH_COMMAND" "$rc" >&2' ERR

NAME=${SANDBOX_NAME:-st}
HOSTS_SPEC=${SANDBOX_HOSTS:-"a:dc1 b:dc2 c:dc3"}
POOL_SIZE=${SANDBOX_POOL_SIZE:-512M}
SUBNET=${SANDBOX_SUBNET:-10.213.0}
ZFS_IMPL=${SANDBOX_ZFS:-fuse}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

die() { printf 'sandbox: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'sandbox: %s\n' "$*" >&2; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: sandbox.sh up|down|status|deps [--name NAME] [--hosts 'a:dc1 b:dc2'] [--pool-size 512M]"
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --hosts) HOSTS_SPEC=$2; shift 2 ;;
    --pool-size) POOL_SIZE=$2; shift 2 ;;
    --zfs) ZFS_IMPL=$2; shift 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ "$NAME" =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "--name '$NAME' must be 1-6 lowercase letters/digits starting with a letter (it prefixes namespace, pool and interface names)"
DIR=${SANDBOX_DIR:-/var/tmp/storage-sandbox-$NAME}
case "$ZFS_IMPL" in fuse|kernel) ;; *) die "--zfs '$ZFS_IMPL' must be fuse or kernel" ;; esac
kernel_zfs() { [ "$ZFS_IMPL" = kernel ]; }

preflight() {
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, sshd and zfs need it); you are uid $(id -u)"
  if kernel_zfs; then
    [ -c /dev/zfs ] || modprobe zfs 2>/dev/null || true
    [ -c /dev/zfs ] || die "/dev/zfs is missing: --zfs kernel needs the OpenZFS kernel module loaded (modprobe zfs)"
    return 0
  fi
  [ -c /dev/fuse ] || die "/dev/fuse is missing: zfs-fuse needs FUSE (load the fuse module or run on a machine with /dev/fuse)"
}

have_all() {
  command -v zfs-fuse >/dev/null && command -v zfs >/dev/null && command -v zpool >/dev/null &&
    [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null &&
    command -v ip >/dev/null && command -v nft >/dev/null && command -v tc >/dev/null &&
    command -v fusermount >/dev/null && command -v jq >/dev/null && command -v rsync >/dev/null &&
    command -v fuser >/dev/null && command -v faketime >/dev/null && command -v setfattr >/dev/null
}

deps() {
  preflight
  if kernel_zfs; then
    local t missing=()
    for t in zfs zpool ssh ssh-keygen ip jq nsenter rsync fuser faketime; do command -v "$t" >/dev/null || missing+=("$t"); done
    [ -x /usr/sbin/sshd ] || missing+=(sshd)
    [ ${#missing[@]} -eq 0 ] || die "--zfs kernel: missing tools: ${missing[*]} (nothing is installed in this mode)"
    return 0
  fi
  if ! have_all; then
    log "installing missing Debian packages (zfs-fuse openssh-server openssh-client iproute2 nftables fuse jq rsync psmisc faketime attr)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends zfs-fuse openssh-server openssh-client iproute2 nftables fuse jq rsync psmisc faketime attr >/dev/null ||
      die "apt-get install failed (zfs-fuse openssh-server openssh-client iproute2 nftables fuse jq rsync psmisc faketime attr)"
    have_all || die "packages installed but a tool is still missing (zfs-fuse, zfs, zpool, sshd, ssh, ip, nft, tc, fusermount, jq, rsync, fuser, faketime, setfattr)"
  fi
  start_zfs_fuse
}

# does the daemon answer? (a zpool that a dying daemon aborts is reported by bash; the
# command substitution keeps that report on its own stderr, /dev/null)
zpool_answers() {
  local rc
  rc=$( { zpool list -H >/dev/null 2>&1; echo $?; } 2>/dev/null )
  [ "$rc" = 0 ]
}

start_zfs_fuse() {
  if ! pgrep -x zfs-fuse >/dev/null; then
    log "starting zfs-fuse daemon"
    # A daemon that was killed leaves its socket and FUSE mounts behind.
    # (awk, not grep: on a fresh machine there is no FUSE mount, and a grep that matches
    # nothing would end this script under pipefail without a word)
    awk '$3 ~ /^fuse/ && $1 ~ /^[a-z]/ {print $2}' /proc/mounts | while read -r m; do
      fusermount -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    # a stale pidfile or socket makes zfs-fuse exit 1 at once
    rm -f /var/run/zfs/zfs_socket /run/zfs-fuse.pid
    zfs-fuse --pidfile /run/zfs-fuse.pid || die "zfs-fuse failed to start (exit $?)"
  fi
  # it imports every pool of its cache first: under load that takes a while
  for _ in $(seq 1 300); do
    if zpool_answers; then return 0; fi
    # the daemon seen above was exiting (stopped just before): start a new one, once
    if ! pgrep -x zfs-fuse >/dev/null && [ -z "${_zfs_fuse_restarted:-}" ]; then
      _zfs_fuse_restarted=1
      log "the zfs-fuse daemon exited while we waited for it; starting a new one"
      start_zfs_fuse
      return
    fi
    sleep 0.1
  done
  die "zfs-fuse is running but 'zpool list' does not answer after 30 s"
}

restart_zfs_fuse() {
  local pid
  pid=$(cat /run/zfs-fuse.pid 2>/dev/null || pgrep -x zfs-fuse || true)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do pgrep -x zfs-fuse >/dev/null || break; sleep 0.1; done
  pgrep -x zfs-fuse >/dev/null && pkill -9 -x zfs-fuse
  sleep 0.2
  start_zfs_fuse
}

host_names() { for h in $HOSTS_SPEC; do printf '%s\n' "${h%%:*}"; done; }

down() {
  preflight
  # sshd processes of this sandbox (pidfiles first, then any stragglers by config path)
  if [ -d "$DIR/hosts" ]; then
    for pidf in "$DIR"/hosts/*/sshd.pid; do
      [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
    done
  fi
  pkill -f "sshd -f $DIR/hosts/" 2>/dev/null || true
  # agents or other processes started inside this sandbox's namespaces
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  # pools of this sandbox: names start with "$NAME-"
  if kernel_zfs; then
    for pool in $(zpool list -H -o name 2>/dev/null | grep -E "^$NAME-" || true); do
      zpool destroy -f "$pool" 2>/dev/null || zpool export -f "$pool" 2>/dev/null ||
        log "warning: could not destroy pool $pool: $(zpool destroy -f "$pool" 2>&1)"
    done
  elif pgrep -x zfs-fuse >/dev/null; then
    local stuck=()
    for pool in $(zpool list -H -o name 2>/dev/null | grep -E "^$NAME-" || true); do
      zpool destroy -f "$pool" 2>/dev/null || zpool export -f "$pool" 2>/dev/null || stuck+=("$pool")
    done
    if [ ${#stuck[@]} -gt 0 ]; then
      # zfs-fuse can keep a pool "busy" after a failed mount inside a receive; only a
      # restart of the daemon releases it (pools are re-imported from its cache)
      log "pools ${stuck[*]} are busy: restarting the zfs-fuse daemon to release them"
      restart_zfs_fuse
      for pool in "${stuck[@]}"; do
        zpool destroy -f "$pool" 2>/dev/null || zpool export -f "$pool" 2>/dev/null ||
          log "warning: could not destroy pool $pool: $(zpool destroy -f "$pool" 2>&1)"
      done
    fi
  fi
  # anything still mounted below the sandbox directory (stale FUSE mounts after a crash)
  if [ -d "$DIR" ]; then
    awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || fusermount -u -z "$m" 2>/dev/null || true
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-" || true); do
    ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
  done
  rm -rf "$DIR"
}

up() {
  deps
  down
  mkdir -p "$DIR/hosts" "$DIR/pools" "$DIR/mnt" /run/sshd
  chmod 700 "$DIR"
  local sw="$NAME-sw"
  ip netns add "$sw"
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  ip -n "$sw" link set lo up

  # The control namespace is where tests and admin commands run from: it reaches all hosts.
  add_ns "$NAME-ctl" "$SUBNET.1" ctl

  ssh-keygen -q -t ed25519 -N '' -C "sandbox-$NAME-admin" -f "$DIR/admin_key"
  : > "$DIR/known_hosts"

  local i=10 hosts_json="" first=1
  for spec in $HOSTS_SPEC; do
    local h=${spec%%:*} dc=${spec#*:}
    [[ "$h" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "host name '$h' in --hosts must be 1-8 lowercase letters/digits"
    [[ "$dc" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "datacenter '$dc' of host '$h' must be lowercase letters/digits/-"
    i=$((i + 1))
    local ns="$NAME-$h" addr="$SUBNET.$i" hd="$DIR/hosts/$h" pool="$NAME-$h"
    mkdir -p "$hd" "$DIR/mnt/$h"
    add_ns "$ns" "$addr" "$h"

    # pool on a sparse file
    truncate -s "$POOL_SIZE" "$DIR/pools/$h.img"
    local create=(zpool create -O mountpoint=none)
    kernel_zfs && create=(zpool create -f -o cachefile=none -O mountpoint=none)
    "${create[@]}" "$pool" "$DIR/pools/$h.img" >/dev/null 2>&1 ||
      die "${create[*]} $pool $DIR/pools/$h.img failed: $("${create[@]}" "$pool" "$DIR/pools/$h.img" 2>&1)"

    # sshd with its own host key; this host's own replication key (peers know it by name)
    ssh-keygen -q -t ed25519 -N '' -C "$ns" -f "$hd/ssh_host_ed25519_key"
    ssh-keygen -q -t ed25519 -N '' -C "storage-repl-$h" -f "$hd/repl_key"
    printf '%s\n' "$(cat "$DIR/admin_key.pub")" > "$hd/authorized_keys"
    chmod 600 "$hd/authorized_keys"
    cat > "$hd/sshd_config" <<EOF
Port 22
ListenAddress $addr
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
AuthorizedKeysFile $hd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
ExposeAuthInfo yes
StrictModes no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
ClientAliveInterval 15
LogLevel VERBOSE
SyslogFacility AUTH
EOF
    # nsenter --net (not `ip netns exec`): keep the root mount namespace, so that a zfs
    # mount made by a command run through this sshd is visible everywhere.
    nsenter --net="/run/netns/$ns" /usr/sbin/sshd -f "$hd/sshd_config" -E "$hd/sshd.log" ||
      die "sshd for host $h failed to start: $(tail -5 "$hd/sshd.log" 2>/dev/null)"
    printf '%s %s\n' "$addr" "$(cut -d' ' -f1,2 "$hd/ssh_host_ed25519_key.pub")" >> "$DIR/known_hosts"

    # test instrumentation: this host's zfs, logging every invocation before running it
    printf '#!/bin/sh\nprintf "%%s\\n" "$*" >> "%s/zfs-calls.log"\nexec /usr/sbin/zfs "$@"\n' "$hd" > "$hd/zfs"
    chmod 755 "$hd/zfs"
    # the agent's (and the receiver's) configuration for this host
    cat > "$hd/agent.yaml" <<EOF
# sandbox host $h (datacenter $dc), written by test/env/sandbox.sh
host: $h
datacenter: $dc
address: $addr
port: 22
pool: $pool
projectsRoot: $pool/projects
replicasRoot: $pool/replicas
mountBase: $DIR/mnt/$h
catalog:
  backend: sqlite
  path: $DIR/catalog.db
ssh:
  user: root
  privateKey: $hd/repl_key
  knownHosts: $DIR/known_hosts
  stallTimeout: 30s
interval: 10s
zfs:
  zfsPath: $hd/zfs
metrics:
  listen: "$addr:9464"
  lagSloSeconds: 120
receiverLog: $hd/receiver.log
stateDir: $hd/state
EOF

    [ $first = 1 ] || hosts_json+=","
    first=0
    hosts_json+=$(jq -n --arg name "$h" --arg dc "$dc" --arg ns "$ns" --arg addr "$addr" --arg pool "$pool" \
      --arg dir "$hd" --arg mnt "$DIR/mnt/$h" \
      '{name:$name, datacenter:$dc, netns:$ns, exec:["nsenter", ("--net=/run/netns/" + $ns)], address:$addr, port:22, pool:$pool, dir:$dir, mountBase:$mnt, replKey:($dir + "/repl_key")}')
  done
  # every host accepts every host's replication key, each line bound to its peer's name
  # (what `storagectl authorized-keys` generates from the catalog in production)
  for h in $(printf '%s\n' $HOSTS_SPEC | cut -d: -f1); do
    for peer in $(printf '%s\n' $HOSTS_SPEC | cut -d: -f1); do
      printf 'restrict,command="%s --config %s serve-ssh --peer %s" %s\n' "$REPO/bin/storagectl" "$DIR/hosts/$h/agent.yaml" "$peer" "$(cut -d' ' -f1,2 "$DIR/hosts/$peer/repl_key.pub")"
    done >> "$DIR/hosts/$h/authorized_keys"
  done

  jq -n --arg name "$NAME" --arg dir "$DIR" --arg ctl "$NAME-ctl" --arg repo "$REPO" --arg zfs "$ZFS_IMPL" \
    --arg admin "$DIR/admin_key" --arg kh "$DIR/known_hosts" \
    --argjson hosts "[$hosts_json]" \
    '{name:$name, zfs:$zfs, dir:$dir, controlNetns:$ctl, repo:$repo, adminKey:$admin, knownHosts:$kh, hosts:$hosts}' \
    > "$DIR/sandbox.json"
  # wait until every sshd answers
  for h in $(host_names); do
    local addr ok=0
    addr=$(jq -r --arg n "$h" '.hosts[] | select(.name==$n) | .address' "$DIR/sandbox.json")
    for _ in $(seq 1 50); do
      if nsenter --net="/run/netns/$NAME-ctl" ssh -q -i "$DIR/admin_key" -o BatchMode=yes -o ConnectTimeout=2 \
        -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=yes root@"$addr" true 2>/dev/null; then
        ok=1; break
      fi
      sleep 0.1
    done
    [ $ok = 1 ] || die "sshd of host $h at $addr does not accept the admin key (see $DIR/hosts/$h/sshd.log)"
  done
  log "up: $(host_names | tr '\n' ' ')-> $DIR/sandbox.json"
  echo "$DIR/sandbox.json"
}

add_ns() {
  local ns=$1 addr=$2 tag=$3 sw="$NAME-sw"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$sw" link add "v-$tag" type veth peer name eth0 netns "$ns"
  ip -n "$sw" link set "v-$tag" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

status() {
  [ -f "$DIR/sandbox.json" ] || { echo "sandbox '$NAME': down"; return 1; }
  jq -r '.hosts[] | "\(.name)\t\(.datacenter)\t\(.netns)\t\(.address)\t\(.pool)"' "$DIR/sandbox.json"
  zpool list -H -o name,size,alloc,health 2>/dev/null | grep -E "^$NAME-" || true
}

case "$cmd" in
  up) up ;;
  down) down; log "down: $NAME" ;;
  status) status ;;
  deps) deps ;;
  *) die "unknown command '$cmd' (up|down|status|deps)" ;;
esac
