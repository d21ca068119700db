#!/usr/bin/env bash
# Builds, caches and restores the zfs-fuse pools of the fleet-scale benchmark in the
# sandbox `stb`: host a holds N project datasets x S automatic snapshots, host b a
# replica of each (seeded with the newest snapshot only: receiving all S through
# zfs-fuse would take far longer, and the agent's first cycle only needs a common base).
#
#   bash test/env/sandbox.sh up --name stb --pool-size 8G
#   bash bench/scale-pools.sh ensure --datasets 10000 --snapshots 30
#
# Cache: $SCALE_CACHE_DIR/scale-N-S/ (default /var/cache/storage-bench) holds a.img and
# b.img (sparse copies of the exported pools), ids.txt (the project uuids), snaps.txt
# (the S snapshot names, oldest first) and `complete`, written last (with the build's
# timings). A complete cache is restored in place of the sandbox's fresh pools; without
# one the pools are built on the live stb-a/stb-b, exported, copied and re-imported.
#
# Measured on 2 cores (zfs-fuse, a concurrent test run sharing the daemon), 10,000 x 30:
# build 23 min (create 85 s, 30 rounds of snapshot -r 22 s each, seed 31 ms/dataset,
# import 130 s), images 5.0G + 3.4G; restore 3.6 min (copy 45 s, import 130 s, verify 41 s).
#
# Knobs: SANDBOX_DIR (default /var/tmp/storage-sandbox-stb), SCALE_CACHE_DIR,
# SCALE_CREATE_JOBS / SCALE_SEED_JOBS (parallel zfs clients; defaults measured on 2 cores),
# SCALE_BATCH (datasets per progress line).
set -Eeuo pipefail
trap 'rc=$?; printf "scale-pools: error: line %s: %s (exit %s)\n" "$LINENO" "$BASH_COMMAND" "$rc" >&2' ERR

NAME=stb
DIR=${SANDBOX_DIR:-/var/tmp/storage-sandbox-$NAME}
CACHE_ROOT=${SCALE_CACHE_DIR:-/var/cache/storage-bench}
# measured at 1000 datasets on 2 cores (ms per dataset): create x2 11.2, x3 10.2,
# x4 8.2, x6 6.7, x8 6.1; send|recv x2 20.8, x3 17.2, x4 15.7, x6 14.2, x8 15.3
CREATE_JOBS=${SCALE_CREATE_JOBS:-6}
SEED_JOBS=${SCALE_SEED_JOBS:-6}
BATCH=${SCALE_BATCH:-500}
POOL_A=$NAME-a
POOL_B=$NAME-b
PROJECTS=$POOL_A/projects
REPLICAS=$POOL_B/replicas
MOUNT_A=$DIR/mnt/a

die() { printf 'scale-pools: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'scale-pools: %s\n' "$*"; }

usage() { die "usage: scale-pools.sh ensure --datasets N --snapshots S"; }
cmd=${1:-}
[ "$cmd" = ensure ] || usage
shift
N="" S=""
while [ $# -gt 0 ]; do
  case "$1" in
    --datasets) [ $# -ge 2 ] || usage; N=$2; shift 2 ;;
    --snapshots) [ $# -ge 2 ] || usage; S=$2; shift 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "--datasets must be a positive integer (got '$N')"
[[ "$S" =~ ^[1-9][0-9]*$ ]] || die "--snapshots must be a positive integer (got '$S')"
for k in CREATE_JOBS SEED_JOBS BATCH; do
  [[ "${!k}" =~ ^[1-9][0-9]*$ ]] || die "SCALE_$k must be a positive integer (got '${!k}')"
done
CACHE=$CACHE_ROOT/scale-$N-$S

# ---------------------------------------------------------------- timing and progress
T0=$EPOCHREALTIME
now() { printf '%s' "$EPOCHREALTIME"; }
# seconds between two $EPOCHREALTIME values, 1 decimal
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
daemon_rss() {
  local pid
  pid=$(cat /run/zfs-fuse.pid 2>/dev/null || pgrep -x zfs-fuse | head -1 || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || { printf '?'; return; }
  awk '/^VmRSS:/ { printf "%d MiB", $2 / 1024 }' "/proc/$pid/status"
}
STEPS=() STEP_SECS=()
STEP_NAME="" STEP_T=""
step_begin() { STEP_NAME=$1; STEP_T=$(now); log "[$STEP_NAME] start"; }
step_end() {
  local s
  s=$(secs "$STEP_T" "$(now)")
  STEPS+=("$STEP_NAME${1:+ ($1)}") STEP_SECS+=("$s")
  log "[$STEP_NAME] done in ${s} s${1:+ ($1)}, zfs-fuse rss $(daemon_rss)"
}
# progress DONE TOTAL: one line with elapsed, rate and the extrapolated total
progress() {
  local done=$1 total=$2 e
  e=$(secs "$STEP_T" "$(now)")
  awk -v st="$STEP_NAME" -v d="$done" -v t="$total" -v e="$e" -v rss="$(daemon_rss)" 'BEGIN {
    ms = d > 0 ? 1000 * e / d : 0
    printf "scale-pools: [%s] %d/%d  %.1f s  %.1f ms each  est. total %.0f s  zfs-fuse rss %s\n", st, d, t, e, ms, ms * t / 1000, rss }'
}
summary() {
  local i
  log "timings (N=$N datasets, S=$S snapshots):"
  for i in "${!STEPS[@]}"; do printf '  %-48s %9s s\n' "${STEPS[$i]}" "${STEP_SECS[$i]}"; done
  printf '  %-48s %9s s\n' total "$(secs "$T0" "$(now)")"
  printf '  zfs-fuse daemon rss: %s\n' "$(daemon_rss)"
}

# ---------------------------------------------------------------- zfs helpers
# does the daemon answer within 30 s? (a wedged zfs-fuse hangs every client)
daemon_answers() { timeout 30 zpool list -H -o name >/dev/null 2>&1; }
pool_imported() { zpool list -H -o name "$1" >/dev/null 2>&1; }
exists() { zfs list -H -o name "$1" >/dev/null 2>&1; }
children() { zfs list -H -o name -d 1 -t filesystem "$1" | tail -n +2; }
count_fs() { zfs list -H -o name -d 1 -t filesystem "$1" | wc -l; }
guid() { zfs get -H -p -o value guid "$1"; }
run() { "$@" || die "'$*' failed (exit $?)"; }

# zfs-fuse sometimes answers "pool is busy" to an export right after heavy activity
export_pool() {
  local p=$1 i out
  for i in 1 2 3 4 5; do
    out=$(zpool export "$p" 2>&1) && return 0
    log "zpool export $p: $out (attempt $i, retrying)"
    sleep $((i * 2))
  done
  die "'zpool export $p' failed 5 times: $out"
}
import_pool() {
  local p=$1 out
  out=$(zpool import -d "$DIR/pools" "$p" 2>&1) || die "'zpool import -d $DIR/pools $p' failed: $out"
}

# filesystems directly under $PROJECTS and $REPLICAS, counted concurrently (zfs-fuse
# answers a listing dataset by dataset: ~25 s for 10,000 each), into the named variables
count_both() {
  local fa fb
  fa=$(mktemp) fb=$(mktemp)
  count_fs "$PROJECTS" > "$fa" & local pa=$!
  count_fs "$REPLICAS" > "$fb" & local pb=$!
  wait "$pa" || { rm -f "$fa" "$fb"; die "'zfs list -H -o name -d 1 -t filesystem $PROJECTS' failed"; }
  wait "$pb" || { rm -f "$fa" "$fb"; die "'zfs list -H -o name -d 1 -t filesystem $REPLICAS' failed"; }
  printf -v "$1" '%s' "$(cat "$fa")"
  printf -v "$2" '%s' "$(cat "$fb")"
  rm -f "$fa" "$fb"
}

# N+1 filesystems under each root, a sample of ids present on both sides with the newest
# snapshot and the same guid, S snapshots on the sampled primaries, none on the root.
verify() {
  local ids=$1 snaps=$2 newest na nb id ga gb ns sample
  newest=$(tail -1 "$snaps")
  count_both na nb
  [ "$na" = $((N + 1)) ] || die "verify: $PROJECTS has $((na - 1)) datasets, expected $N"
  [ "$nb" = $((N + 1)) ] || die "verify: $REPLICAS has $((nb - 1)) datasets, expected $N"
  # by name: a listing of the root's snapshots walks all N children on zfs-fuse (~25 s)
  while read -r snap; do
    ! exists "$PROJECTS@$snap" || die "verify: $PROJECTS itself carries the snapshot @$snap (only the datasets should)"
  done < "$snaps"
  # first, last, and 3 in between
  sample=$(awk -v n="$N" 'NR == 1 || NR == n || NR == int(n / 4) || NR == int(n / 2) || NR == int(3 * n / 4)' "$ids")
  for id in $sample; do
    ga=$(guid "$PROJECTS/$id@$newest") || die "verify: 'zfs get guid $PROJECTS/$id@$newest' failed"
    gb=$(guid "$REPLICAS/$id@$newest") || die "verify: 'zfs get guid $REPLICAS/$id@$newest' failed"
    [ "$ga" = "$gb" ] || die "verify: guid of $id@$newest differs: $ga on a, $gb on b"
    ns=$(zfs list -H -o name -t snapshot -d 1 "$PROJECTS/$id" | wc -l)
    [ "$ns" = "$S" ] || die "verify: $PROJECTS/$id has $ns snapshots, expected $S"
  done
  log "verify: $N datasets on a and b, sample of $(wc -w <<<"$sample") guids match, $S snapshots each, newest $newest"
}

# ---------------------------------------------------------------- preflight
[ "$(id -u)" = 0 ] || die "must run as root (you are uid $(id -u))"
[ -f "$DIR/sandbox.json" ] || die "sandbox $NAME is not up ($DIR/sandbox.json missing): bash test/env/sandbox.sh up --name $NAME --pool-size 8G"
daemon_answers || die "the zfs-fuse daemon does not answer 'zpool list' within 30 s (bash test/env/sandbox.sh deps starts it; a wedged one needs a restart)"
for p in "$POOL_A" "$POOL_B"; do
  pool_imported "$p" || die "pool $p is not imported (is sandbox $NAME up? bash test/env/sandbox.sh up --name $NAME --pool-size 8G)"
  [ -f "$DIR/pools/${p#"$NAME-"}.img" ] || die "pool file $DIR/pools/${p#"$NAME-"}.img is missing"
done
mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
exec 9>"$CACHE_ROOT/.scale-$N-$S.lock"
flock -n 9 || die "another scale-pools.sh is working on $CACHE (lock $CACHE_ROOT/.scale-$N-$S.lock)"

# ---------------------------------------------------------------- restore
already_in_place() {
  # cheap: the first and last ids with the newest snapshot on both sides (verify counts)
  local first last newest
  first=$(head -1 "$CACHE/ids.txt") last=$(tail -1 "$CACHE/ids.txt") newest=$(tail -1 "$CACHE/snaps.txt")
  exists "$PROJECTS/$first@$newest" && exists "$PROJECTS/$last@$newest" &&
    exists "$REPLICAS/$first@$newest" && exists "$REPLICAS/$last@$newest"
}

restore() {
  local h p
  if already_in_place; then
    log "the pools already hold the cached $N x $S state: nothing to do"
    step_begin verify; verify "$CACHE/ids.txt" "$CACHE/snaps.txt"; step_end
    summary
    exit 0
  fi
  log "restoring from $CACHE (built $(head -1 "$CACHE/complete"))"
  step_begin "destroy fresh pools"
  for h in a b; do
    p=$NAME-$h
    local top
    top=$(zfs list -H -o name -d 1 -t filesystem "$p" | tail -n +2 | paste -sd ' ' -)
    [ -z "$top" ] || log "note: $p is not empty (holds $top): destroying it anyway (a sandbox pool)"
    run zpool destroy -f "$p"
  done
  step_end
  step_begin "copy cached images"
  for h in a b; do
    rm -f "$DIR/pools/$h.img"
    run cp --sparse=always "$CACHE/$h.img" "$DIR/pools/$h.img"
  done
  step_end "$(du -h "$CACHE/a.img" | cut -f1) + $(du -h "$CACHE/b.img" | cut -f1)"
  step_begin import
  import_pool "$POOL_A"
  import_pool "$POOL_B"
  step_end
  # the mount base is stored in the image: follow a SANDBOX_DIR that differs from the build's
  local mp
  mp=$(zfs get -H -o value mountpoint "$PROJECTS")
  if [ "$mp" != "$MOUNT_A" ]; then
    log "mountpoint of $PROJECTS is $mp: setting it to $MOUNT_A"
    run zfs set mountpoint="$MOUNT_A" "$PROJECTS"
  fi
  step_begin verify; verify "$CACHE/ids.txt" "$CACHE/snaps.txt"; step_end
  log "restored: $N datasets x $S snapshots on $POOL_A, $N replicas on $POOL_B"
  summary
}

if [ -f "$CACHE/complete" ]; then
  for f in a.img b.img ids.txt snaps.txt; do
    [ -s "$CACHE/$f" ] || die "cache $CACHE is marked complete but $f is missing or empty: remove $CACHE and build again"
  done
  restore
  exit 0
fi

# ---------------------------------------------------------------- build
log "no complete cache in $CACHE: building on the live pools (N=$N, S=$S, create jobs $CREATE_JOBS, seed jobs $SEED_JOBS)"
rm -rf "$CACHE/complete" "$CACHE/a.img" "$CACHE/b.img" "$CACHE"/*.tmp "$CACHE/ids.txt" "$CACHE/snaps.txt" "$CACHE"/work.*
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step_begin roots
# exactly as Agent.init() creates them (ensureDataset: -p, canmount, mountpoint, readonly)
if exists "$PROJECTS"; then
  log "$PROJECTS exists ($(zfs get -H -o value mountpoint,canmount "$PROJECTS" | tr '\n' ' '))"
else
  run zfs create -p -o canmount=off -o mountpoint="$MOUNT_A" "$PROJECTS"
fi
if exists "$REPLICAS"; then
  log "$REPLICAS exists ($(zfs get -H -o value mountpoint,canmount,readonly "$REPLICAS" | tr '\n' ' '))"
else
  run zfs create -p -o canmount=off -o mountpoint=none -o readonly=on "$REPLICAS"
fi
for r in "$PROJECTS" "$REPLICAS"; do
  n=$(children "$r" | wc -l)
  [ "$n" = 0 ] || die "$r already has $n datasets (a partial build?): bring the sandbox up fresh (bash test/env/sandbox.sh up --name $NAME --pool-size 8G) and run again"
done
step_end

step_begin ids
: > "$WORK/ids.txt"
for ((i = 0; i < N; i++)); do
  read -r u < /proc/sys/kernel/random/uuid
  printf '%s\n' "$u"
done > "$WORK/ids.txt"
[ "$(sort -u "$WORK/ids.txt" | wc -l)" = "$N" ] || die "duplicate uuids from /proc/sys/kernel/random/uuid (?)"
grep -qvE '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' "$WORK/ids.txt" &&
  die "a uuid from /proc/sys/kernel/random/uuid is not a lowercase v4 uuid: $(grep -vE '^[0-9a-f-]{36}$' "$WORK/ids.txt" | head -1)"
split -l "$BATCH" -d -a 5 "$WORK/ids.txt" "$WORK/batch."
step_end

# snapshot names: hourly, the newest one hour before now, the oldest S hours before
BUILD_NOW=$(date -u +%s)
for ((i = S; i >= 1; i--)); do date -u -d "@$((BUILD_NOW - i * 3600))" +%Y-%m-%dT%H:%M:%SZ; done > "$WORK/snaps.txt"
NEWEST=$(tail -1 "$WORK/snaps.txt")
log "snapshots: $(head -1 "$WORK/snaps.txt") .. $NEWEST"

# in each batch file, run a command per id ({} in its arguments) with $jobs workers;
# report progress per batch (xargs exits 123 when a command failed: the command's own
# message names the dataset)
per_batch() {
  local jobs=$1 done=0 b rc
  shift
  for b in "$WORK"/batch.*; do
    rc=0
    xargs -P "$jobs" -I{} "$@" < "$b" || rc=$?
    [ "$rc" = 0 ] || die "[$STEP_NAME] '$*' failed for an id of batch $(basename "$b") (xargs exit $rc; the zfs message is above)"
    done=$((done + $(wc -l < "$b")))
    progress "$done" "$N"
  done
}

step_begin "create $N datasets (x$CREATE_JOBS)"
# zfs create -o canmount=noauto stb-a/projects/<id>: no mount (the mountpoint is inherited)
per_batch "$CREATE_JOBS" zfs create -o canmount=noauto "$PROJECTS/{}"
step_end "$(awk -v s="$(secs "$STEP_T" "$(now)")" -v n="$N" 'BEGIN { printf "%.1f ms/dataset", 1000 * s / n }')"

step_begin "snapshot -r x $S"
i=0
while read -r snap; do
  i=$((i + 1))
  run zfs snapshot -r "$PROJECTS@$snap"
  progress "$i" "$S"
done < "$WORK/snaps.txt"
step_end "$(awk -v s="$(secs "$STEP_T" "$(now)")" -v n="$S" 'BEGIN { printf "%.2f s/round", s / n }')"

step_begin "destroy root snapshots"
# the root's own snapshot only (never -r): the datasets keep theirs
while read -r snap; do run zfs destroy "$PROJECTS@$snap"; done < "$WORK/snaps.txt"
step_end

step_begin "seed b: send|recv @newest (x$SEED_JOBS)"
# full send of the newest snapshot (no -R, no -i): the replica starts at the common base
seed_one() {
  local src="$PROJECTS/$1@$NEWEST" dst="$REPLICAS/$1"
  zfs send "$src" | zfs recv "$dst"
  local st=("${PIPESTATUS[@]}")
  [ "${st[0]}" = 0 ] && [ "${st[1]}" = 0 ] && return 0
  printf "scale-pools: error: 'zfs send %s | zfs recv %s' failed (send exit %s, recv exit %s)\n" "$src" "$dst" "${st[0]}" "${st[1]}" >&2
  return 1
}
export -f seed_one
export PROJECTS REPLICAS NEWEST
per_batch "$SEED_JOBS" bash -c 'seed_one "$1"' _ {}
step_end "$(awk -v s="$(secs "$STEP_T" "$(now)")" -v n="$N" 'BEGIN { printf "%.1f ms/dataset", 1000 * s / n }')"

step_begin verify
verify "$WORK/ids.txt" "$WORK/snaps.txt"
step_end

step_begin "export pools"
export_pool "$POOL_A"
export_pool "$POOL_B"
step_end

step_begin "copy images to cache"
for h in a b; do
  run cp --sparse=always "$DIR/pools/$h.img" "$CACHE/$h.img.tmp"
  run mv "$CACHE/$h.img.tmp" "$CACHE/$h.img"
done
run cp "$WORK/ids.txt" "$CACHE/ids.txt"
run cp "$WORK/snaps.txt" "$CACHE/snaps.txt"
step_end "$(du -h "$CACHE/a.img" | cut -f1) + $(du -h "$CACHE/b.img" | cut -f1)"

step_begin "re-import pools"
import_pool "$POOL_A"
import_pool "$POOL_B"
step_end

step_begin "verify after import"
count_both na nb
[ "$na" = $((N + 1)) ] || die "after re-import: $PROJECTS holds $((na - 1)) datasets, expected $N"
[ "$nb" = $((N + 1)) ] || die "after re-import: $REPLICAS holds $((nb - 1)) datasets, expected $N"
step_end

# the marker, last: when it was built, and how long each step took
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  printf 'datasets %s snapshots %s create_jobs %s seed_jobs %s\n' "$N" "$S" "$CREATE_JOBS" "$SEED_JOBS"
  for i in "${!STEPS[@]}"; do printf '%s\t%s s\n' "${STEPS[$i]}" "${STEP_SECS[$i]}"; done
} > "$CACHE/complete.tmp"
mv "$CACHE/complete.tmp" "$CACHE/complete"
log "built and cached in $CACHE: $(du -h "$CACHE/a.img" | cut -f1) a.img, $(du -h "$CACHE/b.img" | cut -f1) b.img (sparse, apparent $(du -h --apparent-size "$CACHE/a.img" | cut -f1))"
summary
