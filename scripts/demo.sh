#!/usr/bin/env bash
# `make demo`: installs what is missing, builds, starts a real single-node Kafka on
# 127.0.0.1:9092, and runs the reference onboarding journey live on it:
#   loadgen (a few thousand customers) -> customer-events -> waymark run -> commands.* and
#   journey-events, read back with `waymark tail` and summarised.
# Each demo run uses topics of its own (suffix = run id), so runs never mix.
set -euo pipefail
cd "$(dirname "$0")/.."
export WAYMARK_CACHE=${WAYMARK_CACHE:-$HOME/.cache/waymark}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WAYMARK_CACHE/target}
export KAFKA_PORT=${KAFKA_PORT:-9092}
brokers=127.0.0.1:$KAFKA_PORT
customers=${DEMO_CUSTOMERS:-3000}
run_id=$(date +%Y%m%d%H%M%S)
dir=.waymark/demo-$run_id
mkdir -p "$dir"
waymark=$CARGO_TARGET_DIR/release/waymark
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "setup and build"
bash scripts/setup.sh
cargo build --release -p waymark

step "Kafka on $brokers"
bash scripts/kafka.sh start

step "topics for run $run_id"
cat > "$dir/waymark.yaml" <<YAML
kafka:
  brokers: $brokers
  group-id: waymark-demo-$run_id
  transactional-id: waymark-demo-$run_id
topics:
  customer-events: customer-events.demo-$run_id
  journey-events: journey-events.demo-$run_id
  commands-email: commands.email.demo-$run_id
  commands-sms: commands.sms.demo-$run_id
  commands-contact-center: commands.contact-center.demo-$run_id
  dead-letters: customer-events.dlq.demo-$run_id
  late-events: customer-events.late.demo-$run_id
  state-changelog: waymark.state-changelog.demo-$run_id
  intervention-outcomes: intervention-outcomes.demo-$run_id
journeys: deploy/journeys/b2b-onboarding.yaml
state-dir: $dir/state
http-addr: 127.0.0.1:${DEMO_HTTP_PORT:-9464}
sinks:
  group-prefix: waymark-sink-demo-$run_id
  state-dir: $dir/sinks
  http-addr: 127.0.0.1:${DEMO_SINK_HTTP_PORT:-9465}
  rate-per-sec: 1000
  email:
    smtp-port: ${DEMO_SMTP_PORT:-2525}
    from: "Onboarding <onboarding@example.com>"
analytics:
  group-id: waymark-analytics-demo-$run_id
  state-dir: $dir/analytics
  http-addr: 127.0.0.1:${DEMO_ANALYTICS_PORT:-9466}
YAML
"$waymark" --config "$dir/waymark.yaml" topics create --partitions 4

step "loadgen: $customers customers of onboarding traffic (event times over the last 40 days)"
# Produced before the processor starts: a backlog, as after an outage. Event times lie in the
# past, so once caught up the wall clock fires every timer that is due.
start=$(date -u -d '40 days ago' +%Y-%m-%dT%H:%M:%SZ)
"$waymark" loadgen --customers "$customers" --start "$start" --output "$dir/events.jsonl"
"$waymark" produce --brokers "$brokers" --topic "customer-events.demo-$run_id" "$dir/events.jsonl"

step "waymark run (logs: $dir/run.log)"
"$waymark" --config "$dir/waymark.yaml" run > "$dir/run.log" 2>&1 &
run_pid=$!
trap 'kill -TERM $run_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  curl -fs "http://127.0.0.1:${DEMO_HTTP_PORT:-9464}/readyz" >/dev/null 2>&1 && break
  kill -0 $run_pid 2>/dev/null || { cat "$dir/run.log"; exit 1; }
  sleep 1
done
echo "ready: http://127.0.0.1:${DEMO_HTTP_PORT:-9464}/metrics"

step "reading the outputs back from Kafka (read_committed)"
expected=$("$waymark" simulate --journeys deploy/journeys/b2b-onboarding.yaml --events "$dir/events.jsonl" \
  --until "$(date -u +%Y-%m-%dT%H:%M:%SZ)" 2>/dev/null | tee "$dir/simulate.jsonl" | wc -l)
for _ in $(seq 1 120); do
  "$waymark" --config "$dir/waymark.yaml" tail --brokers "$brokers" --from-beginning --idle-exit 2s > "$dir/output.jsonl" 2>/dev/null
  got=$(wc -l < "$dir/output.jsonl")
  echo "  $got of $expected records"
  [[ $got -ge $expected ]] && break
  sleep 2
done

step "a few commands, as the sinks receive them"
awk '/"kind":"command"/ && n++ < 3' "$dir/output.jsonl"
step "summary"
python3 scripts/summarize.py "$dir/output.jsonl" "$dir/simulate.jsonl"

step "the email sink delivers the emails to a real SMTP server (aiosmtpd on 127.0.0.1:${DEMO_SMTP_PORT:-2525})"
emails=$(grep '"kind":"command"' "$dir/output.jsonl" | grep -c '"channel":"email"' || true)
mkdir -p "$dir/mail"
/usr/bin/python3 scripts/smtp-server.py --port "${DEMO_SMTP_PORT:-2525}" --maildir "$dir/mail" > "$dir/smtp.log" 2>&1 &
smtp_pid=$!
"$waymark" --config "$dir/waymark.yaml" sink email > "$dir/sink.log" 2>&1 &
sink_pid=$!
trap 'kill -TERM $run_pid $sink_pid $smtp_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  got=$(find "$dir/mail" -name '*.eml' 2>/dev/null | wc -l)
  echo "  $got of $emails emails received"
  [[ $got -ge $emails ]] && break
  kill -0 $sink_pid 2>/dev/null || { cat "$dir/sink.log"; exit 1; }
  sleep 2
done
first=$(find "$dir/mail" -name '*.eml' | sort | head -1 || true)
if [[ -n $first ]]; then
  echo "--- $first (as received) ---"
  grep -E '^(From|To|Subject|Message-ID):|billing.example.com' "$first" | head -8 || true
fi
kill -TERM $sink_pid && wait $sink_pid && echo "waymark sink email exited 0"
kill -TERM $smtp_pid 2>/dev/null || true

analytics=127.0.0.1:${DEMO_ANALYTICS_PORT:-9466}
step "the live funnel: waymark analytics serve reads journey-events (dashboard: http://$analytics/)"
"$waymark" --config "$dir/waymark.yaml" analytics serve > "$dir/analytics.log" 2>&1 &
analytics_pid=$!
trap 'kill -TERM $run_pid $analytics_pid 2>/dev/null || true' EXIT
journey_events=$(grep -c '"kind":"journey_event"' "$dir/output.jsonl" || true)
for _ in $(seq 1 120); do
  read_so_far=$(curl -fs "http://$analytics/api/instance" 2>/dev/null |
    python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["journey_events_total"] if i["caught_up"] else -1)' 2>/dev/null || echo -1)
  [[ $read_so_far -ge $journey_events ]] && break
  kill -0 $analytics_pid 2>/dev/null || { cat "$dir/analytics.log"; exit 1; }
  sleep 1
done
echo "  the view read $read_so_far of $journey_events journey events"
"$waymark" analytics funnel b2b-onboarding --url "http://$analytics"
if python3 scripts/browser.py "http://$analytics/" --screenshot "$dir/dashboard.png" \
  --wait-for "document.body.dataset.loaded === 'true' && Number(document.body.dataset.ticks || 0) >= 1" > /dev/null; then
  echo "  the dashboard as headless Chromium renders it: $dir/dashboard.png"
fi
kill -TERM $analytics_pid && wait $analytics_pid && echo "waymark analytics serve exited 0"
trap 'kill -TERM $run_pid 2>/dev/null || true' EXIT

step "metrics excerpt"
curl -fs "http://127.0.0.1:${DEMO_HTTP_PORT:-9464}/metrics" | awk '/^waymark_(pipeline_events_total|engine_commands_total|pipeline_transactions_total|pipeline_outcomes_total|pipeline_consumer_lag_records)/ && n++ < 16'

step "graceful stop (SIGTERM: drain, commit, exit 0)"
kill -TERM $run_pid
wait $run_pid && echo "waymark run exited 0"
trap - EXIT
echo
echo "Outputs: $dir/output.jsonl   Kafka keeps running: 'make kafka-stop' stops it."
echo "Browse the funnel: $waymark --config $dir/waymark.yaml analytics serve, then open http://$analytics/"
