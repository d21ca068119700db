#!/usr/bin/env bash
# A real Prometheus server for the tests: Debian's `prometheus` package (the server
# and promtool), run as a plain background process inside a network namespace — never
# as the package's systemd service.
#
#   test/env/prometheus.sh install
#       installs Debian's `prometheus` if /usr/bin/prometheus or promtool is missing,
#       without letting its service start (policy-rc.d), and makes sure no packaged
#       service is left running or enabled
#   test/env/prometheus.sh start NETNS CONFIG PORT DATADIR
#       checks CONFIG with promtool, starts `prometheus` inside network namespace NETNS
#       (nsenter --net=/run/netns/NETNS; NETNS "-" = this process's namespace) listening
#       on $PROMETHEUS_LISTEN_HOST:PORT (default 127.0.0.1), TSDB and log in DATADIR,
#       pidfile DATADIR/prometheus.pid; waits until GET /-/ready answers 200
#       ($PROMETHEUS_READY_TIMEOUT seconds, default 30). Idempotent: a server already
#       running from DATADIR with the same arguments is kept; one with other arguments
#       is restarted. Prints the base URL.
#   test/env/prometheus.sh stop DATADIR
#       stops the server of DATADIR (SIGTERM, then SIGKILL after 10 s); no-op if none
#   test/env/prometheus.sh status DATADIR
#       exit 0 and prints the pid if the server of DATADIR runs, exit 1 otherwise
set -euo pipefail

die() { printf 'prometheus.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'prometheus.sh: %s\n' "$*" >&2; }

PROMETHEUS=${PROMETHEUS_BIN:-/usr/bin/prometheus}
PROMTOOL=${PROMTOOL_BIN:-/usr/bin/promtool}
LISTEN_HOST=${PROMETHEUS_LISTEN_HOST:-127.0.0.1}
READY_TIMEOUT=${PROMETHEUS_READY_TIMEOUT:-30}

install_prometheus() {
  if [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ]; then
    quiesce_packaged_service
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "prometheus is not installed and installing it needs root (apt-get install prometheus); you are uid $(id -u)"
  command -v apt-get >/dev/null || die "prometheus is not installed and there is no apt-get: install Debian's 'prometheus' package (it provides $PROMETHEUS and $PROMTOOL)"
  log "installing Debian package 'prometheus' (its service is kept from starting)"
  # Debian's invoke-rc.d / deb-systemd-invoke ask /usr/sbin/policy-rc.d before starting
  # a service; exit 101 = "not allowed". Keep an existing policy; remove only our own.
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary: written by test/env/prometheus.sh during apt-get install\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || log "warning: apt-get update failed; trying the install with the package lists at hand"
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  } || rc=$?
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install prometheus failed (exit $rc)"
  [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ] || die "package 'prometheus' installed but $PROMETHEUS or $PROMTOOL is missing"
  quiesce_packaged_service
  log "installed: $("$PROMETHEUS" --version 2>&1 | head -1)"
}

# The packaged service must not run beside ours (it would hold port 9090 and
# /var/lib/prometheus): stop and disable it where systemd runs. Elsewhere the install
# never started it (policy-rc.d); a packaged server found running anyway is reported,
# not killed (it is not ours to end).
quiesce_packaged_service() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    if systemctl is-active --quiet prometheus.service 2>/dev/null || systemctl is-enabled --quiet prometheus.service 2>/dev/null; then
      log "stopping and disabling the packaged prometheus.service"
      systemctl disable --now prometheus.service >/dev/null 2>&1 || log "warning: could not disable prometheus.service"
    fi
  elif [ -f /run/prometheus/prometheus.pid ] || pgrep -u prometheus -x prometheus >/dev/null 2>&1; then
    log "warning: a packaged prometheus (user 'prometheus') is running; it is left alone (stop it with 'service prometheus stop')"
  fi
}

# pid of the server of DATADIR, or nothing (pidfile checked against /proc: a recycled
# pid of another program is never taken for ours)
running_pid() {
  local datadir=$1 pid
  [ -f "$datadir/prometheus.pid" ] || return 0
  pid=$(cat "$datadir/prometheus.pid" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [ -r "/proc/$pid/cmdline" ] || return 0
  if tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--storage.tsdb.path=$datadir/tsdb"; then
    printf '%s\n' "$pid"
  fi
}

# GET http://HOST:PORT/PATH from inside the namespace; prints the status code (000 when
# nothing answers). bash's /dev/tcp: no dependency on curl inside a bare namespace.
http_status() {
  local ns=$1 port=$2 path=$3
  local -a pre=()
  [ "$ns" = - ] || pre=(nsenter "--net=/run/netns/$ns")
  "${pre[@]}" timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3
    IFS= read -r line <&3 || exit 1
    set -- $line
    printf "%s\n" "$2"
  ' _ "$LISTEN_HOST" "$port" "$path" 2>/dev/null || echo 000
}

start() {
  [ $# = 4 ] || die "usage: prometheus.sh start NETNS CONFIG PORT DATADIR"
  local ns=$1 config=$2 port=$3 datadir=$4
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "PORT '$port' is not a TCP port number"
  [ -f "$config" ] || die "CONFIG '$config' does not exist"
  case "$datadir" in /*) ;; *) die "DATADIR '$datadir' must be an absolute path" ;; esac
  case "$config" in /*) ;; *) config="$PWD/$config" ;; esac
  if [ "$ns" != - ]; then
    [[ "$ns" =~ ^[A-Za-z0-9_.-]+$ ]] || die "NETNS '$ns' is not a namespace name"
    [ -e "/run/netns/$ns" ] || die "network namespace '$ns' does not exist (/run/netns/$ns); is the sandbox up? (bash test/env/sandbox.sh up --name ...)"
  fi
  [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ] || install_prometheus
  local out
  out=$("$PROMTOOL" check config "$config" 2>&1) || die "promtool check config $config failed:
$out"
  mkdir -p "$datadir/tsdb"

  local -a args=(
    "--config.file=$config"
    "--storage.tsdb.path=$datadir/tsdb"
    "--storage.tsdb.retention.time=1d"
    "--web.listen-address=$LISTEN_HOST:$port"
    "--web.enable-lifecycle"
    "--web.console.templates=/etc/prometheus/consoles"
    "--web.console.libraries=/etc/prometheus/console_libraries"
    "--log.level=info"
  )
  local want
  want="$ns ${args[*]}"
  local pid
  pid=$(running_pid "$datadir")
  if [ -n "$pid" ]; then
    if [ "$(cat "$datadir/prometheus.args" 2>/dev/null)" = "$want" ]; then
      log "already running from $datadir (pid $pid)"
      wait_ready "$ns" "$port" "$datadir" "$pid"
      printf 'http://%s:%s\n' "$LISTEN_HOST" "$port"
      return 0
    fi
    log "a server with other arguments runs from $datadir (pid $pid): restarting it"
    stop "$datadir"
  fi
  if [ "$(http_status "$ns" "$port" /-/ready)" != 000 ]; then
    die "something already answers on $LISTEN_HOST:$port in namespace $ns (not the server of $datadir)"
  fi

  local -a pre=()
  [ "$ns" = - ] || pre=(nsenter "--net=/run/netns/$ns")
  : > "$datadir/prometheus.log"
  # setsid: own session, so a Ctrl-C of the caller's terminal does not reach it; the
  # caller stops it with `stop DATADIR`. nsenter and setsid exec (no fork): $! is the
  # server itself.
  "${pre[@]}" setsid "$PROMETHEUS" "${args[@]}" </dev/null >>"$datadir/prometheus.log" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" > "$datadir/prometheus.pid"
  printf '%s\n' "$want" > "$datadir/prometheus.args"
  wait_ready "$ns" "$port" "$datadir" "$pid"
  log "ready: pid $pid, http://$LISTEN_HOST:$port (namespace $ns, data $datadir)"
  printf 'http://%s:%s\n' "$LISTEN_HOST" "$port"
}

wait_ready() {
  local ns=$1 port=$2 datadir=$3 pid=$4 deadline=$((SECONDS + READY_TIMEOUT)) code
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$datadir/prometheus.pid"
      die "prometheus (pid $pid) exited while starting; last lines of $datadir/prometheus.log:
$(tail -15 "$datadir/prometheus.log" 2>/dev/null)"
    fi
    code=$(http_status "$ns" "$port" /-/ready)
    [ "$code" = 200 ] && return 0
    if [ $SECONDS -ge $deadline ]; then
      die "prometheus (pid $pid) is not ready after ${READY_TIMEOUT}s (GET /-/ready -> $code); last lines of $datadir/prometheus.log:
$(tail -15 "$datadir/prometheus.log" 2>/dev/null)"
    fi
    sleep 0.2
  done
}

stop() {
  [ $# = 1 ] || die "usage: prometheus.sh stop DATADIR"
  local datadir=$1 pid
  pid=$(running_pid "$datadir")
  if [ -z "$pid" ]; then
    rm -f "$datadir/prometheus.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop within 10 s of SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$datadir/prometheus.pid"
  log "stopped (pid $pid, data $datadir)"
}

status() {
  [ $# = 1 ] || die "usage: prometheus.sh status DATADIR"
  local pid
  pid=$(running_pid "$1")
  [ -n "$pid" ] || { echo "not running ($1)"; return 1; }
  echo "$pid"
}

cmd=${1:-}
[ -n "$cmd" ] || die "usage: prometheus.sh install | start NETNS CONFIG PORT DATADIR | stop DATADIR | status DATADIR"
shift
case "$cmd" in
  install) [ $# = 0 ] || die "usage: prometheus.sh install"; install_prometheus ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) status "$@" ;;
  *) die "unknown command '$cmd' (install | start | stop | status)" ;;
esac
