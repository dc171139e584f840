#!/usr/bin/env bash
# Checks the Kafka Streams baseline against `waymark simulate`: for the golden trace
# (../shared/golden/events.jsonl) and a generated one (waymark loadgen), produce the trace to
# fresh topics (4 partitions) on a running broker, run the Streams application until it is
# idle (every partition caught up, its timers fired), read its output back with `waymark tail`
# and compare it with simulate's: commands and journey events as sets, matched by id, every
# field equal. The golden trace is also checked with ../shared/golden/check.py.
#
#   KSTREAMS_CHECK_BROKERS   broker (default 127.0.0.1:29092; `make kstreams-check` starts one)
#   KSTREAMS_CHECK_CUSTOMERS customers in the generated trace (default 2000)
#   KSTREAMS_CHECK_THREADS   stream threads (default 2)
#   WAYMARK                  the waymark binary (default $CARGO_TARGET_DIR/release/waymark)
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD

brokers=${KSTREAMS_CHECK_BROKERS:-127.0.0.1:29092}
customers=${KSTREAMS_CHECK_CUSTOMERS:-2000}
threads=${KSTREAMS_CHECK_THREADS:-2}
cache=${WAYMARK_CACHE:-$HOME/.cache/waymark}
waymark=${WAYMARK:-${CARGO_TARGET_DIR:-$cache/target}/release/waymark}
golden=$root/../shared/golden
journeys=$root/deploy/journeys/b2b-onboarding.yaml
run_id=$(date +%Y%m%d%H%M%S)-$$
work=$root/.waymark/kstreams-check-$run_id

say() { echo "kstreams-check: $*" >&2; }
die() { say "$*"; exit 1; }

[[ -x $waymark ]] || die "no waymark binary at $waymark; run \`make build\` (or set WAYMARK)"
[[ -f $golden/events.jsonl ]] || die "the golden trace $golden/events.jsonl is missing"
first=${brokers%%,*}
(exec 3<>"/dev/tcp/${first%:*}/${first##*:}") 2>/dev/null ||
  die "no broker at $brokers: start one (KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 bash scripts/kafka.sh start) or set KSTREAMS_CHECK_BROKERS"
classpath=$(bash scripts/bench/kstreams/build.sh)
mkdir -p "$work"
say "work dir $work, broker $brokers"

# run_case NAME EVENTS: the whole round trip for one trace; prints the comparison.
run_case() {
  local name=$1 events=$2 dir=$work/$1 suffix=.kscheck-$run_id-$1
  mkdir -p "$dir"
  cat >"$dir/topics.yaml" <<YAML
kafka:
  brokers: $brokers
topics:
  customer-events: customer-events$suffix
  journey-events: journey-events$suffix
  commands-email: commands.email$suffix
  commands-sms: commands.sms$suffix
  commands-contact-center: commands.contact-center$suffix
  dead-letters: customer-events.dlq$suffix
  late-events: customer-events.late$suffix
  state-changelog: waymark.state-changelog$suffix
journeys: $journeys
state-dir: $dir/unused-state
YAML
  "$waymark" --config "$dir/topics.yaml" topics create --brokers "$brokers" --partitions 4 \
    2>"$dir/topics.log" || { cat "$dir/topics.log" >&2; die "$name: cannot create the topics"; }
  "$waymark" produce --brokers "$brokers" --topic "customer-events$suffix" "$events" \
    2>"$dir/produce.log" || { cat "$dir/produce.log" >&2; die "$name: cannot produce $events"; }
  local n
  n=$(grep -c . "$events")
  say "$name: $n events on customer-events$suffix; running the Streams application until idle ..."
  local started=$SECONDS
  if ! timeout 900 java -Xmx1g -cp "$classpath" io.waymark.bench.kstreams.OnboardingApp \
    --bootstrap-servers "$brokers" --application-id "kscheck-$run_id-$name" \
    --topic-suffix "$suffix" --schemas "$root/schemas" --state-dir "$dir/state" \
    --threads "$threads" --exit-when-idle 3 2>"$dir/kstreams.log"; then
    tail -n 30 "$dir/kstreams.log" >&2
    die "$name: the Streams application failed or timed out (log $dir/kstreams.log)"
  fi
  local status
  status=$(grep ' status ' "$dir/kstreams.log" | tail -n 1 || true)
  say "$name: done in $((SECONDS - started))s: ${status#kstreams: status }"
  grep -q " records=$n " <<<"$status" || die "$name: the application did not process all $n events (log $dir/kstreams.log)"
  # The application's watermark ended at wall clock - 5 min (allowed lateness); simulate's
  # ends at --until. The traces lie in the past, so everything is due either way.
  local until
  until=$(date -u -d '-5 min' +%Y-%m-%dT%H:%M:%SZ)
  "$waymark" simulate --journeys "$journeys" --events "$events" --until "$until" \
    >"$dir/simulate.jsonl" 2>"$dir/simulate.log" || { cat "$dir/simulate.log" >&2; die "$name: simulate failed"; }
  # --config: tail decodes a topic by its role in the config's topic names.
  "$waymark" --config "$dir/topics.yaml" tail --brokers "$brokers" --from-beginning --idle-exit 5s \
    "commands.email$suffix" "commands.contact-center$suffix" "journey-events$suffix" \
    >"$dir/kstreams.jsonl" 2>"$dir/tail.log" || { cat "$dir/tail.log" >&2; die "$name: waymark tail failed"; }
  python3 scripts/bench/kstreams/compare.py --expected "$dir/simulate.jsonl" --actual "$dir/kstreams.jsonl" \
    --label "$name/kstreams"
}

failed=0
run_case golden "$golden/events.jsonl" || failed=1
say "golden: ../shared/golden/check.py on the Streams output"
python3 "$golden/check.py" --output "$work/golden/kstreams.jsonl" || failed=1

# More disorder than loadgen's defaults: out-of-order delivery, duplicates, steps completed out
# of order and repeated logins, all within the allowed lateness.
"$waymark" loadgen --customers "$customers" --seed 7 --out-of-order 0.2 --duplicates 0.05 \
  --steps-out-of-order 0.2 --repeat-login 0.05 --output "$work/loadgen.jsonl" 2>/dev/null ||
  die "waymark loadgen failed"
run_case loadgen "$work/loadgen.jsonl" || failed=1

if ((failed)); then
  die "FAIL: the Streams baseline's output differs from waymark simulate's (details above; files in $work)"
fi
say "PASS: the Streams baseline's output equals waymark simulate's on both traces (files in $work)"
