#!/usr/bin/env bash
# A real Confluent-compatible schema registry on 127.0.0.1, for Waymark's tests: Apicurio
# Registry, whose ccompat API (/apis/ccompat/v7) speaks Confluent Schema Registry's REST API.
# No Docker: the built application is fetched from Maven Central once
# (io.apicurio:apicurio-registry-app:<version>:tar.gz:all) into $WAYMARK_CACHE and run with
# the machine's Java 17. Storage is in memory (H2): every start is an empty registry.
#
# Layout
#   $WAYMARK_CACHE/apicurio-<version>/    app/ (the unpacked application), mvn.log,
#                                         .complete (download marker), download.lock
#   $REGISTRY_DATA/                       registry.pid, registry.log
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
LOG_PREFIX=registry

# --- versions (one place) ---------------------------------------------------------------------
# 3.0.9 is the newest Apicurio release that runs on Java 17 (3.3.x needs Java 21).
APICURIO_VERSION=3.0.9
# 2.8's `get` fetches an artifact whose parent POM is missing from Maven Central (with a
# warning); 3.x refuses. Apicurio's parent POM of 3.0.9 is not there.
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:2.8

# --- configuration (environment) ----------------------------------------------------------------
WAYMARK_CACHE=${WAYMARK_CACHE:-$HOME/.cache/waymark}
APICURIO_HOME=$WAYMARK_CACHE/apicurio-$APICURIO_VERSION
REGISTRY_PORT=${REGISTRY_PORT:-18081}
REGISTRY_MANAGEMENT_PORT=${REGISTRY_MANAGEMENT_PORT:-$((REGISTRY_PORT + 1))}
REGISTRY_DATA=$(realpath -m "${REGISTRY_DATA:-$WAYMARK_CACHE/registry-$REGISTRY_PORT}")
REGISTRY_START_TIMEOUT=${REGISTRY_START_TIMEOUT:-90}
PID_FILE=$REGISTRY_DATA/registry.pid
LOG_FILE=$REGISTRY_DATA/registry.log
API=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7

usage() {
  cat <<EOF
Usage: scripts/registry.sh start|stop|status|url

  start    fetch Apicurio Registry $APICURIO_VERSION (once) and start it on 127.0.0.1:$REGISTRY_PORT;
           prints the Confluent-compatible API URL (schema-registry.url) when it is ready
  stop     stop it
  status   running or not (exit 1 when not)
  url      print the API URL

Environment: REGISTRY_PORT (default 18081; the management port is the next one),
REGISTRY_DATA (pid and log; default \$WAYMARK_CACHE/registry-\$REGISTRY_PORT),
REGISTRY_START_TIMEOUT (seconds, default 90), WAYMARK_CACHE (default ~/.cache/waymark).
EOF
}

# ensure_app: the unpacked application in $APICURIO_HOME/app, fetched once.
ensure_app() {
  [[ -f $APICURIO_HOME/.complete ]] && return 0
  have mvn || die "mvn not found; run scripts/setup.sh"
  mkdir -p "$APICURIO_HOME"
  (
    flock -w 900 9 || die "timed out waiting for another download ($APICURIO_HOME/download.lock)"
    [[ -f $APICURIO_HOME/.complete ]] && exit 0
    local started=$SECONDS
    info "downloading Apicurio Registry $APICURIO_VERSION from Maven Central (once, ~110 MB) ..."
    rm -rf "$APICURIO_HOME/app.tmp"
    # Into a repository of its own, so the tarball's path is known; deleted once unpacked.
    local repo=$APICURIO_HOME/m2
    local tarball=$repo/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz
    if ! mvn -q -B "$DEPENDENCY_PLUGIN:get" -Dmaven.repo.local="$repo" -Dtransitive=false \
      -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
      >"$APICURIO_HOME/mvn.log" 2>&1 || [[ ! -f $tarball ]]; then
      tail -n 30 "$APICURIO_HOME/mvn.log" >&2
      die "maven could not fetch Apicurio Registry (above; full log $APICURIO_HOME/mvn.log); is Maven Central reachable?"
    fi
    mkdir -p "$APICURIO_HOME/app.tmp"
    tar xzf "$tarball" -C "$APICURIO_HOME/app.tmp" || die "cannot unpack $tarball"
    rm -f "$tarball"
    local jar=$APICURIO_HOME/app.tmp/apicurio-registry-app-$APICURIO_VERSION-runner.jar
    [[ -f $jar ]] || die "download incomplete: $(basename "$jar") missing in $APICURIO_HOME/app.tmp"
    rm -rf "$APICURIO_HOME/app" && mv "$APICURIO_HOME/app.tmp" "$APICURIO_HOME/app"
    touch "$APICURIO_HOME/.complete"
    info "fetched in $((SECONDS - started))s into $APICURIO_HOME/app"
  ) 9>"$APICURIO_HOME/download.lock"
}

running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "apicurio-registry-app-$APICURIO_VERSION-runner.jar" || return 1
  echo "$pid"
}

cmd_start() {
  ensure_app
  mkdir -p "$REGISTRY_DATA"
  local pid
  if pid=$(running_pid); then
    info "already running: $API (pid $pid)"
    echo "$API"
    return 0
  fi
  require_free_ports "set REGISTRY_PORT" "$REGISTRY_PORT" "$REGISTRY_MANAGEMENT_PORT"
  local started=$SECONDS
  info "starting Apicurio Registry $APICURIO_VERSION on 127.0.0.1:$REGISTRY_PORT (in-memory storage, log $LOG_FILE)"
  # Its own session, so a Ctrl-C in the calling shell leaves it running; `stop` ends it.
  # shellcheck disable=SC2016
  QUARKUS_HTTP_HOST=127.0.0.1 QUARKUS_HTTP_PORT=$REGISTRY_PORT \
    QUARKUS_MANAGEMENT_HOST=127.0.0.1 QUARKUS_MANAGEMENT_PORT=$REGISTRY_MANAGEMENT_PORT \
    APICURIO_STORAGE_KIND=sql APICURIO_STORAGE_SQL_KIND=h2 \
    nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    java -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -jar "$APICURIO_HOME/app/apicurio-registry-app-$APICURIO_VERSION-runner.jar" \
    </dev/null >"$LOG_FILE" 2>&1 &
  printf '%s: waiting for the registry ' "$LOG_PREFIX"
  local deadline=$((SECONDS + REGISTRY_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    sleep 1
    if ! pid=$(running_pid); then
      printf ' died\n'
      tail -n 40 "$LOG_FILE" >&2
      die "the registry exited during start-up; last lines of $LOG_FILE above"
    fi
    # Ready: the Confluent-compatible API answers a real request.
    if curl -sf "$API/subjects" >/dev/null 2>&1; then
      printf ' ready\n'
      info "up in $((SECONDS - started))s: $API (pid $pid)"
      echo "$API"
      return 0
    fi
    printf '.'
  done
  printf ' timed out\n'
  tail -n 40 "$LOG_FILE" >&2
  die "the registry did not answer within ${REGISTRY_START_TIMEOUT}s (pid ${pid:-?}; 'scripts/registry.sh stop' stops it)"
}

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    info "not running (127.0.0.1:$REGISTRY_PORT)"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in {1..100}; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  info "stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    echo "running: $API pid $pid"
    return 0
  fi
  echo "not running: 127.0.0.1:$REGISTRY_PORT"
  return 1
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$API" ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) printf 'registry: unknown command %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
esac
