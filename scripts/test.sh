#!/usr/bin/env bash
# `make test`: installs what is missing, builds, starts a dedicated test broker, and runs
# every check. The broker is stopped again at the end, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."
export WAYMARK_CACHE=${WAYMARK_CACHE:-$HOME/.cache/waymark}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WAYMARK_CACHE/target}
# A broker of its own, so a running demo broker (9092) is left alone.
export KAFKA_PORT=${WAYMARK_TEST_KAFKA_PORT:-19092}
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
export WAYMARK_TEST_BROKERS=127.0.0.1:$KAFKA_PORT

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "setup"
bash scripts/setup.sh

step "build (release; the first build compiles RocksDB and librdkafka, ~25 min on 2 cores)"
# Every checkout path and toolchain leaves test binaries of its own in the shared target
# directory (tens of GiB over time). When the disk runs low, drop Waymark's own artifacts
# only: the dependencies (RocksDB, librdkafka) stay built.
mkdir -p "$CARGO_TARGET_DIR"
free_kib=$(df -Pk "$CARGO_TARGET_DIR" | awk 'NR == 2 { print $4 }')
if ((free_kib < 20 * 1024 * 1024)); then
  echo "only $((free_kib / 1024 / 1024)) GiB free under $CARGO_TARGET_DIR; removing Waymark's own build artifacts"
  cargo clean --release -p waymark -p waymark-e2e
fi
cargo build --release --workspace --all-targets

step "lint: rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings

step "unit and property tests (engine, journeys, state, codec, config)"
cargo test --release -p waymark

step "golden trace through waymark simulate"
bash scripts/golden.sh

step "deployment: kustomize build, Kubernetes schemas, promtool check and test of the alerts"
bash scripts/check-deploy.sh

step "start the test broker on $WAYMARK_TEST_BROKERS (fresh storage)"
# Every scenario creates its own topics; a fresh broker keeps restarts (the chaos tests) fast.
bash scripts/kafka.sh reset
bash scripts/kafka.sh start
trap 'bash scripts/kafka.sh stop >/dev/null 2>&1 || true; bash scripts/registry.sh stop >/dev/null 2>&1 || true' EXIT

step "start the test schema registry (Apicurio, Confluent-compatible API, in-memory)"
export REGISTRY_PORT=${WAYMARK_TEST_REGISTRY_PORT:-18081}
bash scripts/registry.sh start
WAYMARK_TEST_REGISTRY=$(bash scripts/registry.sh url)
export WAYMARK_TEST_REGISTRY

step "end-to-end scenarios against the real broker"
e2e=0
cargo test --release -p waymark-e2e --no-fail-fast -- --test-threads=1 || e2e=$?

step "the Kafka Streams baseline of make bench computes what waymark simulate does"
KSTREAMS_CHECK_BROKERS=$WAYMARK_TEST_BROKERS bash scripts/bench/kstreams/check.sh
[[ $e2e == 0 ]] || { echo "make test: end-to-end scenarios failed (above)" >&2; exit "$e2e"; }

echo
echo "make test: all checks passed in $(( $(date +%s) - started ))s"
