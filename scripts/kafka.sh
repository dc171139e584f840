#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft: broker + controller in one JVM) on 127.0.0.1, for
# Waymark's tests and demo. No tarball and no Docker: the broker and its tools are fetched
# from Maven Central as jars, once, into $WAYMARK_CACHE/kafka-$KAFKA_VERSION/lib.
#
# Layout
#   $WAYMARK_CACHE/kafka-<version>/       pom.xml, lib/*.jar, mvn.log, tool configs,
#                                         .complete (download marker), download.lock
#   $KAFKA_DATA/                          one broker: server.properties, log4j2.properties,
#                                         kafka.pid, kafka.log (+ .1 .. .3 from earlier runs),
#                                         kafka.sh.lock (serialises start/stop),
#                                         logs/ (the formatted storage: partitions, metadata)
# Several brokers can run side by side if each has its own KAFKA_PORT (the data dir follows
# it by default), e.g. the demo on 9092 and `make test` on 19092.
#
# See ../shared/notes/kafka-from-maven.md for where the recipe comes from.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
LOG_PREFIX=kafka

# --- versions (one place) ---------------------------------------------------------------------
KAFKA_VERSION=4.1.1
SCALA_VERSION=2.13
LOG4J_VERSION=2.24.3
# Kafka 4.1.1's POMs declare slf4j-api 1.7.36 (and exclude Jetty's 2.x), so the log4j2
# binding must be the SLF4J 1.x one, log4j-slf4j-impl. Pinned here so nothing upgrades the
# API to 2.x behind our back, which would silently drop the binding (and all broker logs).
SLF4J_VERSION=1.7.36
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# --- configuration (environment) ----------------------------------------------------------------
WAYMARK_CACHE=${WAYMARK_CACHE:-$HOME/.cache/waymark}
KAFKA_HOME=$WAYMARK_CACHE/kafka-$KAFKA_VERSION
KAFKA_LIB=$KAFKA_HOME/lib
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_DATA=$(realpath -m "${KAFKA_DATA:-$WAYMARK_CACHE/kafka-data-$KAFKA_PORT}")
KAFKA_HEAP=${KAFKA_HEAP:-768m}
# 64 MiB log segments keep a dev box's disk small; Kafka's own default (and a production
# broker's) is 1 GiB. `make bench` uses that: on its two shared cores, the broker rolling the
# segments of every partition at once (and then compacting the changelog's) stalls Waymark.
KAFKA_SEGMENT_BYTES=${KAFKA_SEGMENT_BYTES:-67108864}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
WAYMARK_PARTITIONS=${WAYMARK_PARTITIONS:-4}
WAYMARK_TOPIC_PREFIX=${WAYMARK_TOPIC_PREFIX:-}

BOOTSTRAP=127.0.0.1:$KAFKA_PORT
PID_FILE=$KAFKA_DATA/kafka.pid
LOG_FILE=$KAFKA_DATA/kafka.log
LOG_DIRS=$KAFKA_DATA/logs

# The broker: a fixed heap, and the GC settings of Kafka's own bin/kafka-run-class.sh.
BROKER_JVM_OPTS=(
  "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP"
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true
)
# Short-lived tools (StorageTool, TopicCommand, console clients): start fast, stay small.
TOOL_JVM_OPTS=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -Xshare:auto -Xmx256m)

usage() {
  cat <<EOF
Usage: scripts/kafka.sh COMMAND

Runs a local single-node Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1, fetched from Maven
Central on first use.

Commands
  start                 download (once), format storage (once), start, and wait until a client
                        request succeeds; a no-op when this broker is already running
  stop                  SIGTERM, wait up to ${KAFKA_STOP_TIMEOUT}s, then SIGKILL; a no-op when not running
  reset                 stop, then delete this broker's data dir (all topics and offsets); the next
                        start formats fresh storage. \`make test\` does this so leftover test topics
                        never pile up (thousands of them make a broker restart take a minute)
  status                print bootstrap address and pid; exit 0 when up, 1 when not
  topics                create Waymark's topics if missing (idempotent): customer-events,
                        intervention-outcomes, commands.{email,sms,contact-center}, journey-events,
                        customer-events.{dlq,late}, and waymark.state-changelog (compacted)
  topics list           list all topics
  topics create NAME PARTITIONS [KEY=VALUE...]
                        create one topic (if missing) with topic configs, e.g. cleanup.policy=compact
  logs [-f]             the last 100 lines of the broker log; -f follows it
  tool CLASS [ARGS...]  run any Kafka tool class on the broker's classpath, e.g.
                        org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server $BOOTSTRAP ...

Environment (current value)
  KAFKA_PORT=$KAFKA_PORT  KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT  KAFKA_HEAP=$KAFKA_HEAP
  KAFKA_DATA=$KAFKA_DATA  KAFKA_SEGMENT_BYTES=$KAFKA_SEGMENT_BYTES
  WAYMARK_CACHE=$WAYMARK_CACHE
  WAYMARK_PARTITIONS=$WAYMARK_PARTITIONS  WAYMARK_TOPIC_PREFIX=${WAYMARK_TOPIC_PREFIX:-(none)}
  KAFKA_START_TIMEOUT=$KAFKA_START_TIMEOUT  KAFKA_STOP_TIMEOUT=$KAFKA_STOP_TIMEOUT (seconds)
  KAFKA_OPTS            extra JVM options for the broker
EOF
}

# ================================================================================================
# Download: a generated pom (packaging pom) whose runtime dependencies are copied into lib/.
# Idempotent: the .complete marker holds the pom's hash and is written only after success, so
# an interrupted download is redone and a version change in this script refetches.
# ================================================================================================
pom_xml() {
  cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh; edit the versions there, not here. -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.waymark.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- the broker (kafka.Kafka) and kafka.tools.StorageTool -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- TopicCommand, ConsoleProducer/ConsoleConsumer, TransactionsCommand, ... -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- logging: the release tarball bundles these, the POMs do not -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

ensure_jars() {
  local pom hash
  pom=$(pom_xml)
  hash=$(sha256sum <<<"$pom" | cut -d' ' -f1)
  if [[ -f $KAFKA_HOME/.complete && $(<"$KAFKA_HOME/.complete") == "$hash" ]]; then
    write_tool_configs
    return 0
  fi

  have mvn || die "mvn not found; run scripts/setup.sh"
  have java || die "java not found; run scripts/setup.sh"
  mkdir -p "$KAFKA_HOME"
  # One download at a time: `make test` and `make demo` may start together on a fresh machine.
  (
    flock -w 900 9 || die "timed out waiting for another download ($KAFKA_HOME/download.lock)"
    [[ -f $KAFKA_HOME/.complete && $(<"$KAFKA_HOME/.complete") == "$hash" ]] && exit 0
    local started=$SECONDS
    info "downloading Kafka $KAFKA_VERSION and its dependencies from Maven Central (once) ..."
    printf '%s\n' "$pom" >"$KAFKA_HOME/pom.xml"
    rm -rf "$KAFKA_LIB.tmp"
    # Maven's output goes to a file: it is empty on success (-q), except for stray colour
    # codes that Debian's Maven 3.8 prints even in batch mode.
    if ! mvn -q -B -f "$KAFKA_HOME/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB.tmp" >"$KAFKA_HOME/mvn.log" 2>&1; then
      tail -n 30 "$KAFKA_HOME/mvn.log" >&2
      die "maven could not fetch the Kafka jars (above; full log $KAFKA_HOME/mvn.log); is Maven Central reachable?"
    fi
    local jar
    for jar in "kafka_$SCALA_VERSION-$KAFKA_VERSION" "kafka-tools-$KAFKA_VERSION" \
      "log4j-slf4j-impl-$LOG4J_VERSION" "slf4j-api-$SLF4J_VERSION"; do
      [[ -f $KAFKA_LIB.tmp/$jar.jar ]] || die "download incomplete: $jar.jar missing in $KAFKA_LIB.tmp"
    done
    rm -rf "$KAFKA_LIB" && mv "$KAFKA_LIB.tmp" "$KAFKA_LIB"
    printf '%s\n' "$hash" >"$KAFKA_HOME/.complete"
    info "fetched $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIB" | cut -f1)) in $((SECONDS - started))s into $KAFKA_LIB"
  ) 9>"$KAFKA_HOME/download.lock"
  write_tool_configs
}

# write_if_changed FILE: replace FILE with stdin, atomically, only when the content differs,
# so that concurrent invocations never see a half-written file.
write_if_changed() {
  local file=$1 content
  content=$(cat)
  [[ -f $file && $(<"$file") == "$content" ]] && return 0
  printf '%s\n' "$content" >"$file.$$"
  mv -f "$file.$$" "$file"
}

# Logging and client settings for the short-lived tools: warnings only, on stderr, and
# timeouts short enough that a dead broker fails a command in seconds rather than a minute.
write_tool_configs() {
  write_if_changed "$KAFKA_HOME/tools-log4j2.properties" <<'EOF'
# Generated by scripts/kafka.sh: logging of Kafka's command-line tools.
rootLogger.level=WARN
rootLogger.appenderRef.stderr.ref=STDERR
appender.stderr.type=Console
appender.stderr.name=STDERR
appender.stderr.target=SYSTEM_ERR
appender.stderr.layout.type=PatternLayout
appender.stderr.layout.pattern=[%d] %p %m (%c)%n
EOF
  write_if_changed "$KAFKA_HOME/tools-admin.properties" <<'EOF'
# Generated by scripts/kafka.sh: admin client settings of TopicCommand.
request.timeout.ms=5000
default.api.timeout.ms=15000
EOF
}

# tool CLASS ARGS...: run a Kafka tool class (foreground) on the downloaded classpath.
tool() {
  ensure_jars
  java "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_HOME/tools-log4j2.properties" \
    -cp "$KAFKA_LIB/*" "$@"
}

# ================================================================================================
# Broker configuration, generated into the data dir on every start (edit here, not there).
# ================================================================================================
write_broker_configs() {
  [[ $KAFKA_SEGMENT_BYTES =~ ^[0-9]+$ ]] ||
    die "KAFKA_SEGMENT_BYTES must be a number of bytes (say 1073741824 for 1 GiB), not '$KAFKA_SEGMENT_BYTES'"
  mkdir -p "$LOG_DIRS"
  cat >"$KAFKA_DATA/server.properties" <<EOF
# Generated by scripts/kafka.sh on every start; edit the script, not this file.
# A single node that is both KRaft controller and broker, on loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS

# One replica of everything. Kafka's internal topics default to replication factor 3
# (min.isr 2), with which consumer groups and transactional producers never find a
# coordinator on a single broker.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer partitions for the internal topics than the default 50: they are created on first
# use (first consumer group, first transaction), which is then much quicker on a dev box.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8

# Topics are created explicitly (scripts/kafka.sh topics, or waymark topics create); a typo
# in a topic name must fail, not silently create an empty topic.
auto.create.topics.enable=false
num.partitions=1
# Consumer groups form immediately instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0

# Disk use of a dev box: small segments (KAFKA_SEGMENT_BYTES, 64 MiB unless set), at most
# 2 GiB per partition. No time-based retention: it compares against record timestamps, and
# replayed or generated traffic (the demo's loadgen starts 12 days back) would have fresh
# records deleted at once.
log.segment.bytes=$KAFKA_SEGMENT_BYTES
log.retention.ms=-1
log.retention.bytes=2147483648
log.retention.check.interval.ms=60000
# The compacting cleaner (for waymark.state-changelog): one thread, 32 MiB of heap.
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
EOF

  cat >"$KAFKA_DATA/log4j2.properties" <<'EOF'
# Generated by scripts/kafka.sh: broker logging to stdout, which the script sends to kafka.log.
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
# Per-request logging is far too chatty at INFO.
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.authorizer.name=kafka.authorizer.logger
logger.authorizer.level=WARN
EOF
}

# ================================================================================================
# Process helpers
# ================================================================================================

# running_pid: print the broker's pid and succeed when *this* broker (this data dir) runs.
# A pid file whose process is gone, or was reused by something else, counts as not running.
running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $KAFKA_DATA/server.properties" || return 1
  echo "$pid"
}

# rotate_log: keep the logs of the last three runs as kafka.log.1 .. kafka.log.3, so that
# kafka.log holds this run only (the readiness check reads it).
rotate_log() {
  local i
  for i in 2 1; do
    [[ -f $LOG_FILE.$i ]] && mv -f "$LOG_FILE.$i" "$LOG_FILE.$((i + 1))"
  done
  [[ -f $LOG_FILE ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
  return 0
}

# probe: a real client request (list topics) answered by the broker within a few seconds.
probe() {
  timeout 30 java "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_HOME/tools-log4j2.properties" \
    -cp "$KAFKA_LIB/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
    --command-config "$KAFKA_HOME/tools-admin.properties" --list >/dev/null 2>&1
}

# ================================================================================================
# Commands
# ================================================================================================
cmd_start() {
  ensure_jars
  mkdir -p "$KAFKA_DATA"
  exec 8>"$KAFKA_DATA/kafka.sh.lock"
  flock -w 120 8 || die "another start/stop of this broker is in progress ($KAFKA_DATA/kafka.sh.lock)"

  local pid
  if pid=$(running_pid); then
    info "already running: bootstrap $BOOTSTRAP (pid $pid)"
    return 0
  fi
  rm -f "$PID_FILE"

  require_free_ports "pick other ports (KAFKA_PORT=... KAFKA_CONTROLLER_PORT=...)" \
    "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"

  write_broker_configs

  # Format the storage once. --standalone makes this node the sole voter of the KRaft quorum
  # (it pairs with controller.quorum.bootstrap.servers). meta.properties marks a formatted dir.
  if [[ ! -f $LOG_DIRS/meta.properties ]]; then
    local cluster_id
    cluster_id=$(tool kafka.tools.StorageTool random-uuid)
    info "formatting storage in $LOG_DIRS (cluster id $cluster_id)"
    tool kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$KAFKA_DATA/server.properties" >/dev/null ||
      die "formatting $LOG_DIRS failed (see above)"
  fi

  # Launch in its own session (setsid), detached from this terminal: a Ctrl-C in the shell
  # that started it must not kill the broker; `stop` does that. The inner shell writes its own
  # pid, which exec hands to the JVM, so the pid file is exact whether or not setsid forks.
  # `8>&-`: the broker must not inherit (and so hold forever) this script's lock.
  rotate_log
  local started=$SECONDS
  info "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller :$KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP, data $KAFKA_DATA)"
  # shellcheck disable=SC2016,SC2086
  nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    java "${BROKER_JVM_OPTS[@]}" ${KAFKA_OPTS:-} \
    -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DATA" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_DATA/server.properties" \
    </dev/null >"$LOG_FILE" 2>&1 8>&- &

  # The pid file appears within milliseconds (the inner shell writes it before exec).
  local i
  for i in {1..50}; do
    [[ -s $PID_FILE ]] && break
    sleep 0.1
  done

  # Ready means both: the broker says so in its log, and a client request succeeds.
  printf '%s: waiting for the broker ' "$LOG_PREFIX"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! pid=$(running_pid); then
      printf ' died\n'
      tail -n 40 "$LOG_FILE" >&2
      die "the broker exited during start-up; last lines of $LOG_FILE above"
    fi
    if grep -q 'Kafka Server started' "$LOG_FILE" 2>/dev/null && probe; then
      printf ' ready\n'
      info "up in $((SECONDS - started))s: bootstrap $BOOTSTRAP (pid $pid, log $LOG_FILE)"
      echo "$BOOTSTRAP"
      return 0
    fi
    printf '.'
    sleep 1
  done
  printf ' timed out\n'
  tail -n 40 "$LOG_FILE" >&2
  die "the broker did not become ready within ${KAFKA_START_TIMEOUT}s (still running as pid ${pid:-?}; 'scripts/kafka.sh stop' stops it)"
}

cmd_stop() {
  mkdir -p "$KAFKA_DATA"
  exec 8>"$KAFKA_DATA/kafka.sh.lock"
  flock -w 120 8 || die "another start/stop of this broker is in progress ($KAFKA_DATA/kafka.sh.lock)"

  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    info "not running ($BOOTSTRAP)"
    return 0
  fi
  # SIGTERM runs Kafka's controlled shutdown: it flushes and closes the logs cleanly, so the
  # next start needs no log recovery.
  local started=$SECONDS
  printf '%s: stopping pid %s ' "$LOG_PREFIX" "$pid"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((SECONDS - started < KAFKA_STOP_TIMEOUT)); do
    printf '.'
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    printf ' still up after %ss, SIGKILL\n' "$KAFKA_STOP_TIMEOUT"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  else
    printf ' stopped in %ss\n' "$((SECONDS - started))"
  fi
  rm -f "$PID_FILE"
}

# Stop the broker and delete its storage (topics, offsets, logs); the next start formats anew.
# Guarded: only a directory that looks like one of this script's data dirs is removed.
cmd_reset() {
  cmd_stop
  # `stop` has just created the directory with its lock file in it: on a fresh machine that is
  # all there is.
  if [[ -d $KAFKA_DATA && ! -f $KAFKA_DATA/server.properties &&
    -n $(ls -A "$KAFKA_DATA" | grep -vx 'kafka.sh.lock') ]]; then
    die "$KAFKA_DATA does not look like a broker data dir of this script (no server.properties); not deleting it"
  fi
  rm -rf "$KAFKA_DATA"
  info "deleted $KAFKA_DATA; the next start formats fresh storage"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    echo "running: bootstrap $BOOTSTRAP pid $pid data $KAFKA_DATA"
    return 0
  fi
  echo "not running: $BOOTSTRAP (data $KAFKA_DATA)"
  return 1
}

cmd_logs() {
  [[ -f $LOG_FILE ]] || die "no broker log yet at $LOG_FILE"
  case ${1:-} in
    -f) tail -n 100 -F "$LOG_FILE" ;;
    "") tail -n 100 "$LOG_FILE" ;;
    *) die "logs: unknown option '$1' (use -f to follow)" ;;
  esac
}

# TopicCommand with short admin timeouts against this broker.
topic_command() {
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
    --command-config "$KAFKA_HOME/tools-admin.properties" "$@"
}

# create_topic NAME PARTITIONS [KEY=VALUE...]: create unless it exists (replication factor 1).
create_topic() {
  local name=$1 partitions=$2 kv
  shift 2
  [[ $partitions =~ ^[1-9][0-9]*$ ]] || die "partitions must be a positive number, got '$partitions'"
  local args=(--create --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1)
  for kv in "$@"; do
    [[ $kv == *=* ]] || die "topic config must be KEY=VALUE, got '$kv'"
    args+=(--config "$kv")
  done
  topic_command "${args[@]}" >/dev/null
  info "topic $name: $partitions partitions${*:+ ($*)}"
}

cmd_topics() {
  running_pid >/dev/null || die "the broker on $BOOTSTRAP is not running; run: scripts/kafka.sh start"
  case ${1:-} in
    list)
      topic_command --list
      ;;
    create)
      (($# >= 3)) || die "usage: scripts/kafka.sh topics create NAME PARTITIONS [KEY=VALUE...]"
      shift
      create_topic "$@"
      ;;
    "")
      # Waymark's topics; the names are the processor's defaults (processor/src/config.rs).
      local p=$WAYMARK_TOPIC_PREFIX n=$WAYMARK_PARTITIONS name existing
      local plain=(customer-events intervention-outcomes commands.email commands.sms
        commands.contact-center journey-events customer-events.dlq customer-events.late)
      # One listing first, so that a re-run costs one JVM start instead of one per topic.
      existing=$(topic_command --list)
      for name in "${plain[@]}"; do
        if grep -qxF -- "$p$name" <<<"$existing"; then
          info "topic $p$name: exists"
        else
          create_topic "$p$name" "$n"
        fi
      done
      # The state changelog is compacted: only the latest state per customer key is kept.
      name=${p}waymark.state-changelog
      if grep -qxF -- "$name" <<<"$existing"; then
        info "topic $name: exists"
      else
        create_topic "$name" "$n" cleanup.policy=compact
      fi
      ;;
    *)
      die "topics: unknown subcommand '$1' (list | create NAME PARTITIONS [KEY=VALUE...])"
      ;;
  esac
}

# ================================================================================================
main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    topics) cmd_topics "$@" ;;
    logs) cmd_logs "$@" ;;
    tool)
      (($#)) || die "usage: scripts/kafka.sh tool CLASS [ARGS...]"
      tool "$@"
      ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) printf 'kafka: unknown command %s\n\n' "$cmd" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"
