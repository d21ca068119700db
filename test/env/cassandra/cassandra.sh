#!/usr/bin/env bash
# A real one-node Apache Cassandra 5.0 for the tests and the demo, run straight from the
# jars on Maven Central (no Debian or npm package ships a Cassandra server).
# See docs/cassandra-node.md for what this does and why.
#
#   test/env/cassandra/cassandra.sh fetch    resolve cassandra-all + runtime deps into the cache
#   test/env/cassandra/cassandra.sh start    fetch if needed, write config, start, wait for CQL
#   test/env/cassandra/cassandra.sh stop     SIGTERM (drain), SIGKILL after a timeout
#   test/env/cassandra/cassandra.sh status   running/stopped, version; exit 0 running, 3 stopped
#   test/env/cassandra/cassandra.sh wipe     stop + remove the state dir
#   test/env/cassandra/cassandra.sh smoke    CQL round trip (keyspace, table, insert, select, LWT)
#   test/env/cassandra/cassandra.sh nodetool ARGS...   Cassandra's nodetool over local JMX
#   test/env/cassandra/cassandra.sh kill     SIGKILL (a crash, for the node-loss tests)
#   test/env/cassandra/cassandra.sh mesh DCS  this node, as coordinator, writes at ALL to a
#                                            keyspace with one replica in each of DCS (dc1,dc2,..):
#                                            exit 0 once it sees every datacenter's node alive
#   test/env/cassandra/cassandra.sh rss      resident memory of the node in MB
#
# A three-datacenter cluster on the sandbox hosts: test/env/cassandra/cluster.sh.
#
# Environment (all optional):
#   CASSANDRA_VERSION        5.0.9                    cassandra-all version on Maven Central
#   CASSANDRA_CACHE          /var/cache/storage-test/cassandra-$VERSION/lib   the jars
#   CASSANDRA_M2             /var/cache/storage-test/m2   Maven local repository used by fetch
#   CASSANDRA_STATE          /var/tmp/storage-cassandra   conf, data, commitlog, logs, pidfile
#   CASSANDRA_LISTEN         127.0.0.1                listen and rpc address
#   CASSANDRA_SEEDS          $CASSANDRA_LISTEN        seed addresses, comma-separated (a cluster:
#                                                     test/env/cassandra/cluster.sh sets them)
#   CASSANDRA_PORT           9042                     CQL native transport port
#   CASSANDRA_STORAGE_PORT   7000                     internode port
#   CASSANDRA_JMX_PORT       7199                     local-only JMX (nodetool); 0 disables JMX
#   CASSANDRA_DC             dc1                      datacenter (GossipingPropertyFileSnitch)
#   CASSANDRA_RACK           rack1
#   CASSANDRA_CLUSTER        storage-test             cluster_name
#   CASSANDRA_NUM_TOKENS     16
#   CASSANDRA_HEAP_MIN/MAX   512m / 1g                -Xms / -Xmx
#   CASSANDRA_START_TIMEOUT  180                      seconds until CQL must answer
#   CASSANDRA_STOP_TIMEOUT   60                       seconds after SIGTERM before SIGKILL
#   CASSANDRA_JAVA           java 17 (found automatically)
#   CASSANDRA_EXTRA_JVM_OPTS extra JVM flags, word-split
#   CASSANDRA_MLOCK          0                        1 lets Cassandra mlockall() its memory as root
#
# To run a node inside a network namespace, run the whole script there
# (`ip netns exec hostA env CASSANDRA_LISTEN=10.x.y.z CASSANDRA_STATE=... cassandra.sh start`),
# with a separate CASSANDRA_STATE per node.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=${CASSANDRA_VERSION:-5.0.9}
CACHE=${CASSANDRA_CACHE:-/var/cache/storage-test/cassandra-$VERSION/lib}
M2=${CASSANDRA_M2:-/var/cache/storage-test/m2}
STATE=${CASSANDRA_STATE:-/var/tmp/storage-cassandra}
LISTEN=${CASSANDRA_LISTEN:-127.0.0.1}
SEEDS=${CASSANDRA_SEEDS:-$LISTEN}
[[ "$SEEDS" =~ ^[0-9a-zA-Z.:-]+(,[0-9a-zA-Z.:-]+)*$ ]] || { printf 'cassandra: error: CASSANDRA_SEEDS=%s is not a comma-separated list of addresses\n' "$SEEDS" >&2; exit 1; }
# one node: its own seed, no gossip to wait for or shutdown to announce
SINGLE=0
[ "$SEEDS" = "$LISTEN" ] && SINGLE=1
PORT=${CASSANDRA_PORT:-9042}
STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7000}
JMX_PORT=${CASSANDRA_JMX_PORT:-7199}
DC=${CASSANDRA_DC:-dc1}
RACK=${CASSANDRA_RACK:-rack1}
CLUSTER=${CASSANDRA_CLUSTER:-storage-test}
NUM_TOKENS=${CASSANDRA_NUM_TOKENS:-16}
HEAP_MIN=${CASSANDRA_HEAP_MIN:-512m}
HEAP_MAX=${CASSANDRA_HEAP_MAX:-1g}
START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-180}
STOP_TIMEOUT=${CASSANDRA_STOP_TIMEOUT:-60}
MARKER=$CACHE/.fetch-complete
PIDFILE=$STATE/cassandra.pid
LOG=$STATE/logs/cassandra.log
CONF=$STATE/conf

die() { printf 'cassandra: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'cassandra: %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- tools

apt_install() {
  [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root: apt-get install -y ${*:2}"
  log "installing ${*:2} with apt-get (missing: $1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${@:2}" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${@:2}" >&2 ||
      die "apt-get install ${*:2} failed; install it by hand"
  }
}

java_major() { "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ { print $2; exit }'; }

# Cassandra 5.0 runs on Java 11 or 17; the JPMS flags below are the Java 17 list.
find_java() {
  local c
  for c in ${CASSANDRA_JAVA:-} "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if [ "$(java_major "$c")" = 17 ]; then JAVA=$c; return 0; fi
  done
  [ -n "${CASSANDRA_JAVA:-}" ] && die "CASSANDRA_JAVA=$CASSANDRA_JAVA is not a Java 17 'java'"
  apt_install "java 17" openjdk-17-jre-headless
  for c in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [ -x "$c" ] && { JAVA=$c; return 0; }
  done
  die "no Java 17 found even after installing openjdk-17-jre-headless"
}

need_mvn() { command -v mvn >/dev/null || apt_install mvn maven; command -v mvn >/dev/null || die "mvn not found"; }
need_node() {
  command -v node >/dev/null || die "node is missing (needed to check CQL with the project's cassandra-driver)"
}

# ---------------------------------------------------------------- fetch

fetched() { [ -f "$MARKER" ] && [ -f "$CACHE/cassandra-all-$VERSION.jar" ]; }

cmd_fetch() {
  if fetched; then log "cassandra-all $VERSION already in $CACHE ($(jar_summary))"; return 0; fi
  find_java
  need_mvn
  mkdir -p "$(dirname "$CACHE")" "$M2"
  # one fetch at a time per cache dir (parallel test runs)
  exec 9>"$CACHE.lock"
  flock 9
  if fetched; then log "cassandra-all $VERSION already in $CACHE ($(jar_summary))"; return 0; fi
  local tmp="$CACHE.partial.$$" t0
  if [ -d "$CACHE" ] && find "$CACHE" -mindepth 1 -maxdepth 1 ! -name '*.jar' | grep -q .; then
    die "$CACHE exists, is incomplete and holds more than jars; refusing to replace it (check CASSANDRA_CACHE)"
  fi
  rm -rf "$CACHE" "$CACHE".partial.*
  t0=$(now)
  log "resolving org.apache.cassandra:cassandra-all:$VERSION and its runtime dependencies from Maven Central"
  if ! (cd "$HERE" && JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$JAVA")")") \
        mvn -B -q -U -Dstyle.color=never -f "$HERE/pom.xml" -Dmaven.repo.local="$M2" -Dcassandra.version="$VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1); then
    tail -n 30 "$tmp.mvn.log" >&2
    rm -rf "$tmp" "$tmp.mvn.log"
    if [ -z "$(ip route show default 2>/dev/null)" ] && [ -z "$(ip -6 route show default 2>/dev/null)" ]; then
      die "fetching cassandra-all $VERSION failed: this network namespace has no default route, so Maven Central is unreachable from here; run '$0 fetch' in the root namespace first (Maven output above)"
    fi
    die "fetching cassandra-all $VERSION failed (see Maven output above; is Maven Central reachable? does version $VERSION exist?)"
  fi
  rm -f "$tmp.mvn.log"
  [ -f "$tmp/cassandra-all-$VERSION.jar" ] || { rm -rf "$tmp"; die "Maven finished but cassandra-all-$VERSION.jar is not in the output"; }
  ls "$tmp"/jamm-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "Maven finished but the jamm agent jar is not among the dependencies"; }
  printf 'cassandra-all %s fetched %s\n' "$VERSION" "$(date -u +%FT%TZ)" >"$tmp/.fetch-complete"
  mv "$tmp" "$CACHE"
  log "fetched cassandra-all $VERSION into $CACHE in $(elapsed "$t0") s ($(jar_summary))"
}

jar_summary() {
  local n size
  n=$(find "$CACHE" -maxdepth 1 -name '*.jar' | wc -l)
  size=$(du -sh "$CACHE" | cut -f1)
  echo "$n jars, $size"
}

# ---------------------------------------------------------------- process

# the pid of the Cassandra of *this* state dir, if it runs (pidfile first, /proc scan second)
ours() {
  local pid=$1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-Dcassandra.storagedir=$STATE" &&
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF org.apache.cassandra.service.CassandraDaemon
}

running_pid() {
  local pid p
  if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid"; then echo "$pid"; return 0; fi
  fi
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if ours "$p"; then echo "$p"; return 0; fi
  done
  return 1
}

cql() { CASSANDRA_DRIVER=${CASSANDRA_DRIVER:-} node "$HERE/cql.cjs" "$1" "$LISTEN" "$PORT" "$DC" "${@:2}"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

tail_log() {
  if [ -f "$LOG" ]; then
    printf -- '---- last 40 lines of %s ----\n' "$LOG" >&2
    tail -n 40 "$LOG" >&2
    printf -- '----\n' >&2
  fi
}

# ---------------------------------------------------------------- config

write_config() {
  mkdir -p "$CONF" "$STATE/data" "$STATE/commitlog" "$STATE/saved_caches" "$STATE/hints" \
    "$STATE/cdc_raw" "$STATE/logs" "$STATE/tmp" "$STATE/triggers"
  cat >"$CONF/cassandra.yaml" <<EOF
# written by test/env/cassandra/cassandra.sh; regenerated on every start
cluster_name: '$CLUSTER'
num_tokens: $NUM_TOKENS
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
auto_bootstrap: false

seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$(printf '%s' "$SEEDS" | sed "s/\([^,]*\)/\1:$STORAGE_PORT/g")"
listen_address: $LISTEN
rpc_address: $LISTEN
storage_port: $STORAGE_PORT
native_transport_port: $PORT
start_native_transport: true
endpoint_snitch: GossipingPropertyFileSnitch
dynamic_snitch: false

data_file_directories:
  - $STATE/data
commitlog_directory: $STATE/commitlog
saved_caches_directory: $STATE/saved_caches
hints_directory: $STATE/hints
cdc_raw_directory: $STATE/cdc_raw

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
commitlog_total_space: 256MiB
disk_failure_policy: stop
commit_failure_policy: stop

# a test node: no snapshots on drop/truncate, small caches
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
key_cache_size: 8MiB
counter_cache_size: 4MiB
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
file_cache_size: 64MiB
concurrent_compactors: 1
compaction_throughput: 0MiB/s
# one node: nobody to hint for; a cluster: a node that was down gets the writes it missed
# replayed when it returns (within max_hint_window, 3 h by default)
hinted_handoff_enabled: $([ "$SINGLE" = 1 ] && echo false || echo true)
EOF
  cat >"$CONF/cassandra-rackdc.properties" <<EOF
dc=$DC
rack=$RACK
EOF
  cat >"$CONF/logback.xml" <<'EOF'
<configuration scan="false">
  <!-- written by cassandra.sh: everything at INFO to stdout, which the script sends to logs/cassandra.log -->
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
EOF
  cat >"$CONF/logback-tools.xml" <<'EOF'
<configuration scan="false">
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
EOF
  cat >"$STATE/node.env" <<EOF
# what the node in this state dir was started with (checked on the next start)
CLUSTER=$CLUSTER
DC=$DC
RACK=$RACK
EOF
}

# Cassandra refuses to start when cluster name or dc/rack changed on existing data.
check_identity() {
  [ -f "$STATE/node.env" ] && [ -d "$STATE/data/system" ] || return 0
  local old_cluster old_dc old_rack
  old_cluster=$(sed -n 's/^CLUSTER=//p' "$STATE/node.env")
  old_dc=$(sed -n 's/^DC=//p' "$STATE/node.env")
  old_rack=$(sed -n 's/^RACK=//p' "$STATE/node.env")
  if [ "$old_cluster" != "$CLUSTER" ] || [ "$old_dc" != "$DC" ] || [ "$old_rack" != "$RACK" ]; then
    die "the data in $STATE belongs to cluster '$old_cluster' dc '$old_dc' rack '$old_rack', not '$CLUSTER' '$DC' '$RACK'; Cassandra would refuse to start. Run '$0 wipe' first (or use another CASSANDRA_STATE)"
  fi
}

# JPMS: the list in Cassandra 5.0's conf/jvm17-server.options (server and tools need it)
JPMS=(
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
)

jvm_opts() {
  local jamm
  jamm=$(ls "$CACHE"/jamm-*.jar | head -n 1)
  JVM=(
    -ea -da:net.openhft...
    "-Xms$HEAP_MIN" "-Xmx$HEAP_MAX"
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:MaxGCPauseMillis=300
    -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:+ExitOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true
    "-javaagent:$jamm"
    "${JPMS[@]}"
    # Netty, as in jvm17-server.options
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # what bin/cassandra and cassandra-env.sh would pass
    "-Dcassandra.config=file://$CONF/cassandra.yaml"
    "-Dcassandra-rackdc.properties=file://$CONF/cassandra-rackdc.properties"
    "-Dlogback.configurationFile=file://$CONF/logback.xml"
    "-Dcassandra.logdir=$STATE/logs"
    "-Dcassandra.storagedir=$STATE"
    -Dcassandra-foreground=yes
    "-Djava.io.tmpdir=$STATE/tmp"
    "-Dcassandra.triggers_dir=$STATE/triggers"
  )
  if [ "$SINGLE" = 1 ]; then
    # one node: no gossip to wait for, nobody to announce the shutdown to (default waits 2 s)
    JVM+=(-Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.shutdown_announce_in_ms=0)
  else
    # a cluster: the peers must hear of a shutdown (default 2 s); the gossip settle wait is
    # shortened (cluster.sh waits until every node sees every other one instead)
    JVM+=(-Dcassandra.skip_wait_for_gossip_to_settle=0)
  fi
  if [ "$JMX_PORT" != 0 ]; then
    JVM+=("-Dcassandra.jmx.local.port=$JMX_PORT" -Dcom.sun.management.jmxremote.authenticate=false)
  fi
  # shellcheck disable=SC2206
  [ -z "${CASSANDRA_EXTRA_JVM_OPTS:-}" ] || JVM+=(${CASSANDRA_EXTRA_JVM_OPTS})
}

# ---------------------------------------------------------------- start / stop

wait_ready() {
  local pid=$1 t0=$2 deadline ver err=$STATE/probe.err
  deadline=$(( $(date +%s) + START_TIMEOUT ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail_log
      die "Cassandra (pid $pid) exited during startup after $(elapsed "$t0") s; log: $LOG"
    fi
    if port_open "$LISTEN" "$PORT" && ver=$(cql probe 2>"$err"); then
      rm -f "$err"
      log "ready: Cassandra ${ver%% *} answers CQL on $LISTEN:$PORT (dc ${ver#* }, pid $pid) after $(elapsed "$t0") s"
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail_log
      if [ -s "$err" ]; then log "last CQL probe error: $(cat "$err")"; else log "the CQL port $LISTEN:$PORT never accepted a connection"; fi
      log "giving up after ${START_TIMEOUT} s: stopping it, so a failed start leaves nothing running"
      STOP_TIMEOUT=15 cmd_stop
      die "Cassandra did not answer CQL on $LISTEN:$PORT within ${START_TIMEOUT} s (CASSANDRA_START_TIMEOUT); log: $LOG"
    fi
    sleep 1
  done
}

cmd_start() {
  need_node
  local pid ver t0
  if pid=$(running_pid); then
    if ver=$(cql probe 2>/dev/null); then
      echo "$pid" >"$PIDFILE"
      log "already running: Cassandra ${ver%% *} on $LISTEN:$PORT (pid $pid)"
      return 0
    fi
    log "a Cassandra for $STATE is running (pid $pid) but does not answer CQL on $LISTEN:$PORT; waiting for it"
    wait_ready "$pid" "$(now)"
    return 0
  fi
  if [ -f "$PIDFILE" ]; then log "removing stale pidfile $PIDFILE"; rm -f "$PIDFILE"; fi
  cmd_fetch
  find_java
  check_identity
  port_open "$LISTEN" "$PORT" && die "CQL port $LISTEN:$PORT is already in use by another process (set CASSANDRA_PORT)"
  port_open "$LISTEN" "$STORAGE_PORT" && die "internode port $LISTEN:$STORAGE_PORT is already in use by another process (set CASSANDRA_STORAGE_PORT)"
  if [ "$JMX_PORT" != 0 ] && port_open 127.0.0.1 "$JMX_PORT"; then
    die "JMX port 127.0.0.1:$JMX_PORT is already in use (JMX always binds loopback; a second node in the same network namespace needs its own CASSANDRA_JMX_PORT, or 0 to disable JMX)"
  fi
  write_config
  jvm_opts
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
  printf '# cassandra.sh start %s: %s %s\n' "$(date -u +%FT%TZ)" "$JAVA" "${JVM[*]}" >"$LOG"
  t0=$(now)
  # setsid: the node survives the caller's terminal/process group; without job control the
  # background child is not a group leader, so setsid execs in place and $! is java's pid.
  # Cassandra always calls mlockall(MCL_CURRENT); as root (CAP_IPC_LOCK) that succeeds and pins
  # the whole committed heap and every mapped jar in RAM. A test node does not want that:
  # drop CAP_IPC_LOCK so mlockall fails against RLIMIT_MEMLOCK (a logged warning, no more).
  local prefix=()
  if [ "${CASSANDRA_MLOCK:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    prefix=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)
  fi
  # fds 8/9 hold this script's flocks: the daemon must not inherit them (it would hold the
  # lock for its whole life and every later stop/start would block on it)
  (exec 8>&- 9>&-; cd "$STATE" && { [ "$(ulimit -l)" != unlimited ] || ulimit -l 65536; } && exec setsid "${prefix[@]}" "$JAVA" "${JVM[@]}" -cp "$CONF:$CACHE/*" \
     org.apache.cassandra.service.CassandraDaemon </dev/null >>"$LOG" 2>&1) &
  pid=$!
  echo "$pid" >"$PIDFILE"
  log "started Cassandra $VERSION (pid $pid), waiting up to ${START_TIMEOUT} s for CQL on $LISTEN:$PORT; log: $LOG"
  sleep 0.5
  if ! ours "$pid" && kill -0 "$pid" 2>/dev/null; then
    log "warning: pid $pid does not look like our java process yet"
  fi
  wait_ready "$pid" "$t0"
}

cmd_stop() {
  local pid t0 deadline
  if ! pid=$(running_pid); then
    [ -f "$PIDFILE" ] && { log "removing stale pidfile $PIDFILE"; rm -f "$PIDFILE"; }
    log "not running ($STATE)"
    return 0
  fi
  t0=$(now)
  log "stopping Cassandra (pid $pid): SIGTERM, SIGKILL after ${STOP_TIMEOUT} s"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(date +%s) + STOP_TIMEOUT ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "still running after ${STOP_TIMEOUT} s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  # reap a zombie if we are (unusually) its parent
  wait "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "stopped in $(elapsed "$t0") s"
}

cmd_status() {
  local pid ver
  if pid=$(running_pid); then
    if command -v node >/dev/null && ver=$(cql probe 2>/dev/null); then
      echo "running: Cassandra ${ver%% *} pid $pid cql $LISTEN:$PORT dc ${ver#* } state $STATE"
    else
      echo "running (not answering CQL on $LISTEN:$PORT yet): Cassandra $VERSION pid $pid state $STATE"
    fi
    return 0
  fi
  if fetched; then
    echo "stopped: Cassandra $VERSION (fetched, $CACHE) state $STATE"
  else
    echo "stopped: Cassandra $VERSION (not fetched) state $STATE"
  fi
  return 3
}

cmd_wipe() {
  cmd_stop
  case "$STATE" in
    /|/var|/var/tmp|/tmp|"$HOME"|"") die "refusing to remove CASSANDRA_STATE=$STATE" ;;
  esac
  rm -rf "$STATE" "$STATE.lock"
  log "removed $STATE"
}

cmd_nodetool() {
  [ "$JMX_PORT" != 0 ] || die "JMX is disabled (CASSANDRA_JMX_PORT=0); nodetool needs it"
  fetched || die "not fetched; '$0 fetch' first"
  find_java
  "$JAVA" "${JPMS[@]}" -Duser.home="$STATE" -Dcassandra.logdir="$STATE/logs" -Dlogback.configurationFile=file://"$CONF"/logback-tools.xml \
    -cp "$CACHE/*" org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$JMX_PORT" "$@"
}

cmd_kill() {
  local pid
  pid=$(running_pid) || die "not running ($STATE)"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$PIDFILE"
  log "killed pid $pid (SIGKILL)"
}

cmd_mesh() {
  need_node
  [ -n "${1:-}" ] || die "usage: $0 mesh dc1,dc2,dc3"
  running_pid >/dev/null || die "not running ($STATE)"
  cql mesh "$1"
}

cmd_rss() {
  local pid
  pid=$(running_pid) || die "not running ($STATE)"
  awk '/^VmRSS:/ { printf "%d\n", $2 / 1024 }' "/proc/$pid/status"
}

cmd_smoke() {
  need_node
  running_pid >/dev/null || die "not running; '$0 start' first"
  cql smoke
}

# start/stop/wipe of one state dir never run concurrently (parallel test runs)
lock_state() {
  mkdir -p "$(dirname "$STATE")"
  exec 8>"$STATE.lock"
  flock -w "$((START_TIMEOUT + STOP_TIMEOUT + 60))" 8 || die "another cassandra.sh holds $STATE.lock"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) lock_state; cmd_start ;;
  stop) lock_state; cmd_stop ;;
  status) cmd_status ;;
  wipe) lock_state; cmd_wipe ;;
  smoke) cmd_smoke ;;
  kill) lock_state; cmd_kill ;;
  mesh) cmd_mesh "${2:-}" ;;
  rss) cmd_rss ;;
  nodetool) shift; cmd_nodetool "$@" ;;
  -h|--help|help|"") usage ;;
  *) log "unknown command '$1'"; usage ;;
esac
