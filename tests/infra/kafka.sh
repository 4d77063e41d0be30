#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for integration tests.
#
#   kafka.sh fetch   download/cache the broker jars with Maven (no-op when cached)
#   kafka.sh start   (re)start a fresh broker on free 127.0.0.1 ports; wait until it
#                    answers a metadata request; print export lines on stdout. While the
#                    test cluster runs (cluster.sh), it also listens on the node's address,
#                    which pods reach: SLUICE_TEST_CLUSTER_BOOTSTRAP
#   kafka.sh env     print the export lines of the running broker (exit 1 if none)
#   kafka.sh stop    stop the broker and remove its run dir (exit 0 if none runs)
#
# stdout carries only the export lines; all progress and diagnostics go to stderr.
# Use it as `exports="$(tests/infra/kafka.sh start)" && eval "$exports"` (a bare
# `eval "$(...)"` would swallow a failed start). The same lines are in <run dir>/env.
#
# `start` while a broker from the same run dir is running stops that broker first
# and starts a fresh one with empty data: every start gives a clean cluster.
#
# Environment:
#   SLUICE_CACHE            cache root for jars       (default: $HOME/.cache/sluice)
#   SLUICE_RUN_DIR          run root; broker uses <it>/kafka (default: $HOME/.cache/sluice/run)
#   SLUICE_KAFKA_JAVA_OPTS  extra JVM options for the broker (optional)
#   JAVA_HOME               Java 17+ to use (default: java on PATH)
set -euo pipefail

KAFKA_VERSION=4.1.1
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_DIR="$SCRIPT_DIR/kafka"
POM="$CONF_DIR/pom.xml"

CACHE_ROOT="${SLUICE_CACHE:-$HOME/.cache/sluice}"
RUN_ROOT="${SLUICE_RUN_DIR:-$HOME/.cache/sluice/run}"
# Relative overrides are resolved against the caller's cwd (the broker keeps absolute paths).
[[ "$CACHE_ROOT" == /* ]] || CACHE_ROOT="$PWD/$CACHE_ROOT"
[[ "$RUN_ROOT" == /* ]] || RUN_ROOT="$PWD/$RUN_ROOT"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
MARKER="$KAFKA_HOME/.libs-complete"

RUN_DIR="$RUN_ROOT/kafka"
PID_FILE="$RUN_DIR/kafka.pid"
ENV_FILE="$RUN_DIR/env"
LOG_DIR="$RUN_DIR/logs"
SERVER_LOG="$LOG_DIR/server.log"
STDOUT_LOG="$LOG_DIR/stdout.log"
PROPS="$RUN_DIR/server.properties"

START_DEADLINE_S=90
STOP_GRACE_S=30

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  echo "usage: $(basename "$0") {start|stop|env|fetch}" >&2
}

# ---------------------------------------------------------------- jars

pom_sum() { sha256sum "$POM" | cut -d' ' -f1; }

libs_complete() {
  [[ -f "$MARKER" && -d "$LIBS" ]] || return 1
  [[ "$(cat "$MARKER")" == "$(pom_sum)" ]] || return 1
  compgen -G "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null
}

fetch() {
  if libs_complete; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (needed to fetch the Kafka jars)"
  mkdir -p "$KAFKA_HOME"
  # Serialize concurrent fetches into the same cache.
  exec 9>"$KAFKA_HOME/.fetch.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if libs_complete; then
    exec 9>&-
    return 0
  fi
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIBS"
  local tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$tmp"
  local started=$SECONDS
  # Maven output is kept in a file (Maven 3.8 prints stray ANSI resets even with -q)
  # and shown only on failure.
  local mvn_log="$KAFKA_HOME/fetch.log"
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" | tail -n 50 >&2
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed (full output: $mvn_log)"
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "mvn did not produce kafka_2.13-$KAFKA_VERSION.jar"; }
  rm -f "$MARKER"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  pom_sum >"$MARKER"
  log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started))s"
  exec 9>&-
}

check_java() {
  command -v "$JAVA" >/dev/null || die "java not found (Java 17+ required)"
  local v
  v="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  [[ "$v" =~ ^[0-9]+$ && "$v" -ge 17 ]] || die "Java 17+ required for Kafka $KAFKA_VERSION (found: ${v:-unknown})"
}

# Run a Kafka CLI class from the cached jars, logging warnings to stderr only.
kafka_tool() {
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF_DIR/log4j2-tools.properties" \
    -cp "$LIBS/*" "$@"
}

# ---------------------------------------------------------------- process state

# Prints the pid of the broker recorded in the run dir if it is alive and really is
# our broker (guards against a recycled pid); returns 1 otherwise.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *"kafka.Kafka $PROPS"* ]] || return 1
  echo "$pid"
}

stop_broker() {
  local pid
  if pid="$(running_pid)"; then
    log "stopping broker pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < STOP_GRACE_S * 10)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "broker pid $pid still alive after ${STOP_GRACE_S}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -rf "$RUN_DIR"
}

# ---------------------------------------------------------------- start helpers

# Prints "<plaintext port> <controller port> <cluster id>".
pick_ports_and_id() {
  if command -v python3 >/dev/null; then
    python3 - <<'PY'
import base64, os, socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
ports = [s.getsockname()[1] for s in socks]
for s in socks:
    s.close()
while True:  # Kafka Uuid: 16 random bytes, url-safe base64 without padding, no leading '-'
    cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not cid.startswith("-"):
        break
print(ports[0], ports[1], cid)
PY
  else
    local p1 p2 cid
    p1="$(free_port_fallback)"
    while p2="$(free_port_fallback)"; [[ "$p2" == "$p1" ]]; do :; done
    cid="$(kafka_tool kafka.tools.StorageTool random-uuid)"
    echo "$p1 $p2 $cid"
  fi
}

free_port_fallback() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

render_props() {
  local tpl
  tpl="$(<"$CONF_DIR/server.properties.in")"
  tpl="${tpl//@PLAINTEXT_PORT@/"$1"}"
  tpl="${tpl//@CONTROLLER_PORT@/"$2"}"
  tpl="${tpl//@LOG_DIR@/"$RUN_DIR/data"}"
  printf '%s\n' "$tpl" >"$PROPS"
}

dump_logs() {
  local f
  for f in "$SERVER_LOG" "$STDOUT_LOG"; do
    if [[ -s "$f" ]]; then
      log "---- last 50 lines of $f ----"
      tail -n 50 "$f" >&2
    fi
  done
}

# One start attempt. Sets START_RESULT to "ready", "retry" (a picked port was taken
# before the broker bound it) or "failed". Always returns 0 so that `set -e` stays
# in force inside it.
START_RESULT=""
start_once() {
  START_RESULT=failed
  local port cport cid
  local picked
  picked="$(pick_ports_and_id)" || die "could not pick free ports / a cluster id"
  read -r port cport cid <<<"$picked"
  [[ -n "${cid:-}" ]] || die "could not pick free ports / a cluster id"

  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR/data" "$LOG_DIR"
  render_props "$port" "$cport"
  # While the test cluster runs (tests/infra/cluster.sh), pods must reach the broker: a second
  # listener on the node's address, advertised as such.
  local node_ip cluster_port=""
  node_ip="$("$SCRIPT_DIR/cluster.sh" node-ip 2>/dev/null || true)"
  if [[ -n "$node_ip" ]]; then
    cluster_port="$(python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$node_ip")"
    sed -i -e "s|^listeners=\(.*\)|listeners=\1,CLUSTER://$node_ip:$cluster_port|" \
      -e "s|^advertised.listeners=\(.*\)|advertised.listeners=\1,CLUSTER://$node_ip:$cluster_port|" \
      -e "s|^listener.security.protocol.map=\(.*\)|listener.security.protocol.map=\1,CLUSTER:PLAINTEXT|" "$PROPS"
  fi

  log "formatting KRaft storage (cluster id $cid)"
  if ! kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$PROPS" --standalone \
      >"$RUN_DIR/format.log" 2>&1; then
    cat "$RUN_DIR/format.log" >&2
    die "kafka-storage format failed"
  fi

  log "starting broker on 127.0.0.1:$port (controller 127.0.0.1:$cport)"
  local -a jvm_opts=(
    -Xms256m -Xmx1g
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dkafka.logs.dir="$LOG_DIR"
    -Dlog4j2.configurationFile="$CONF_DIR/log4j2-broker.properties"
  )
  if [[ -n "${SLUICE_KAFKA_JAVA_OPTS:-}" ]]; then
    local -a extra
    read -r -a extra <<<"$SLUICE_KAFKA_JAVA_OPTS"
    jvm_opts+=("${extra[@]}")
  fi
  # setsid: own session, so a Ctrl-C or process-group kill of the caller leaves
  # the broker alone; the inner bash records its pid and execs java in place.
  # The broker runs with the run dir as cwd (JVM crash files land there).
  # shellcheck disable=SC2016  # $$ / $1 are meant for the inner bash
  (cd "$RUN_DIR" && exec setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    "$JAVA" "${jvm_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    >"$STDOUT_LOG" 2>&1 </dev/null) &
  disown $! 2>/dev/null || true

  local t0=$SECONDS pid="" started_seen=0
  while ((SECONDS - t0 < START_DEADLINE_S)); do
    [[ -n "$pid" ]] || pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      if grep -qs 'BindException\|Address already in use' "$SERVER_LOG" "$STDOUT_LOG"; then
        log "a picked port was taken before the broker bound it ($(grep -hom1 'failed to bind to [0-9.:]*' "$SERVER_LOG" || true))"
        START_RESULT=retry
        return 0
      fi
      log "broker process exited during startup"
      dump_logs
      return 0
    fi
    if ((started_seen == 0)) && port_open "$port" \
        && grep -qs 'Kafka Server started' "$SERVER_LOG"; then
      started_seen=1
    fi
    if ((started_seen == 1)); then
      # A real metadata round trip through the PLAINTEXT listener.
      if timeout 30 "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
          -Dlog4j2.configurationFile="$CONF_DIR/log4j2-tools.properties" -cp "$LIBS/*" \
          org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list \
          >/dev/null 2>"$RUN_DIR/probe.err"; then
        {
          echo "export SLUICE_TEST_BOOTSTRAP=127.0.0.1:$port"
          echo "export SLUICE_TEST_KAFKA_VERSION=$KAFKA_VERSION"
          [[ -z "$cluster_port" ]] || echo "export SLUICE_TEST_CLUSTER_BOOTSTRAP=$node_ip:$cluster_port"
        } >"$ENV_FILE"
        log "broker pid $pid ready on 127.0.0.1:$port after $((SECONDS - t0))s"
        START_RESULT=ready
        return 0
      fi
    fi
    sleep 0.5
  done
  log "broker not ready after ${START_DEADLINE_S}s"
  if [[ -s "$RUN_DIR/probe.err" ]]; then
    log "last metadata probe said:"
    tail -n 20 "$RUN_DIR/probe.err" >&2
  fi
  dump_logs
}

# ---------------------------------------------------------------- commands

cmd_start() {
  fetch
  check_java
  if running_pid >/dev/null; then
    log "a broker from $RUN_DIR is running; restarting it fresh"
  fi
  stop_broker
  mkdir -p "$RUN_ROOT"

  local attempt
  for attempt in 1 2 3; do
    start_once
    case "$START_RESULT" in
      ready) cat "$ENV_FILE"; return 0 ;;
      retry)
        stop_broker
        if ((attempt < 3)); then log "retrying with new ports (attempt $((attempt + 1)) of 3)"; fi
        ;;
      *) stop_broker_keep_logs; exit 1 ;;
    esac
  done
  die "could not start the broker after 3 attempts"
}

# After a failed start: kill the broker if still up but keep the run dir for post-mortem.
stop_broker_keep_logs() {
  local pid
  if pid="$(running_pid)"; then
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE" "$ENV_FILE"
  log "logs kept in $LOG_DIR"
}

cmd_env() {
  if running_pid >/dev/null && [[ -f "$ENV_FILE" ]]; then
    cat "$ENV_FILE"
  else
    log "no Kafka broker running from $RUN_DIR"
    exit 1
  fi
}

cmd_stop() {
  if ! running_pid >/dev/null; then
    if [[ -d "$RUN_DIR" ]]; then
      log "no broker running; removing $RUN_DIR"
    else
      log "no broker running"
    fi
  fi
  stop_broker
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  fetch) fetch ;;
  *) usage; exit 2 ;;
esac
