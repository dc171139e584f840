# Waymark — every target is annotated; `make` alone prints this help.
.DEFAULT_GOAL := help
SHELL := /bin/bash

export WAYMARK_CACHE ?= $(HOME)/.cache/waymark
# Build output lives outside the work tree so CI runs and fresh clones reuse it.
export CARGO_TARGET_DIR ?= $(WAYMARK_CACHE)/target
CARGO ?= cargo
WAYMARK := $(CARGO_TARGET_DIR)/release/waymark

##@ The two commands
demo: ## Set up, start Kafka, run the reference journey live on it, and show its output
	bash scripts/demo.sh

test: ## Set up, start a test broker, and run every check: fmt, clippy, unit, golden, end-to-end
	bash scripts/test.sh

##@ Building
setup: ## Install the system packages the build and tests need (idempotent)
	bash scripts/setup.sh

build: ## Build the waymark binary (release profile, shared by tests and demo)
	$(CARGO) build --release --workspace --all-targets

dist: ## Build the binary to deploy and benchmark: dist/waymark in CARGO_TARGET_DIR (fat LTO; ~20 min the first time)
	$(CARGO) build --profile dist -p waymark

lint: ## cargo fmt --check and cargo clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

unit: ## Engine, journey, state and codec tests only (no broker needed)
	$(CARGO) test --release -p waymark

chaos: build ## SIGKILL `waymark run` 5 times during a ~110k-event run on a test broker; compare with simulate
	KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 bash scripts/kafka.sh start
	WAYMARK_TEST_BROKERS=127.0.0.1:19092 WAYMARK_CHAOS_CUSTOMERS=30000 $(CARGO) test --release -p waymark-e2e --test chaos -- --nocapture

bench: dist ## Against Kafka Streams: throughput, immediate-action latency at half peak, timer lateness with 5.1M pending, RSS and restore at 1M customers; recovery after kill -9, simulate at 10M events and per event against its state size; a table (BENCH_PHASES picks parts)
	python3 scripts/bench.py

bench-micro: ## Criterion micro-benchmarks: engine step, state cache over RocksDB, Avro decode/encode
	$(CARGO) bench -p waymark --bench engine

check-deploy: ## Render deploy/k8s with kustomize, validate it, and check and unit-test the alerts with promtool
	bash scripts/check-deploy.sh

golden: build ## Check `waymark simulate` against ../shared/golden
	bash scripts/golden.sh

kstreams-check: build ## Check the Kafka Streams baseline (make bench's peer) against `waymark simulate`, on a broker on 29092
	KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 bash scripts/kafka.sh start
	KSTREAMS_CHECK_BROKERS=127.0.0.1:29092 bash scripts/bench/kstreams/check.sh

##@ Kafka (a real single-node KRaft broker from Maven Central)
kafka-start: ## Start the local broker on 127.0.0.1:$${KAFKA_PORT:-9092}
	bash scripts/kafka.sh start

kafka-topics: ## Create Waymark's topics on the local broker
	bash scripts/kafka.sh topics

kafka-stop: ## Stop the local broker
	bash scripts/kafka.sh stop

##@ Housekeeping
clean: ## Remove local state and demo output (keeps the build cache)
	rm -rf .waymark

help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: demo test setup build dist lint unit chaos bench bench-micro golden kstreams-check kafka-start kafka-topics kafka-stop clean help
