#!/usr/bin/env python3
"""`make bench`: Waymark's throughput, recovery and restore figures on this machine.

Runs against a real broker (started by scripts/kafka.sh on BENCH_KAFKA_PORT, default 29092)
with one loadgen trace (BENCH_CUSTOMERS customers, default 500,000: about 1.9M events, long
enough that neither engine's start-up — a cold JVM for the baseline — weighs on its rate;
the 50,000 of earlier runs finished in 3-8 s and put Waymark at 3× the baseline where longer
traces put it at 1.4-1.6×), and prints a table:

  * `waymark simulate` throughput (the offline baseline every other figure is compared with);
  * `waymark run` throughput with processing-guarantee exactly-once, then at-least-once, on
    the same trace (fresh topics each), and once more exactly-once with every customer kept
    decoded (what the state cache's misses cost);
  * the peer baseline: the same journey as a Kafka Streams application
    (scripts/bench/kstreams/, exactly-once v2, BENCH_KSTREAMS_THREADS stream threads, default
    2 = this machine's cores), on the same broker, trace and partition count, with Waymark's
    exactly-once throughput divided by its; BENCH_KSTREAMS=0 skips it. After one uncounted
    warm-up run of each, Waymark and the baseline run alternately BENCH_ROUNDS times (default
    3) and the table shows the medians, with every run;
  * latency (`latency`): event → command of an immediate action, p50/p99/max, for Waymark and
    the baseline at the same steady rate, half of Waymark's peak on the latency workload
    itself (measured first, on a backlog of it; BENCH_LATENCY_RATE sets the rate instead),
    and the baseline also at half of its own peak there when that is lower: the reference
    journey with the invite email at once and allowed lateness 0, fed by
    `waymark loadgen --live`, read back by `waymark tail --received-at`, measured for
    BENCH_LATENCY_SECS (60) after BENCH_LATENCY_WARMUP (60) seconds, and per 5-second window
    (how many windows meet the goal's p99 of 250 ms: a steady state that meets it is told
    apart from stalls that do not); BENCH_LATENCY_PIN=1 runs each engine on half of the CPUs
    and the broker, load generator and probe on the other half, peak and live runs alike;
  * timers (`timers`): firing lateness p50/p99/max with BENCH_TIMER_CUSTOMERS customers
    (default 5,100,000) each holding a pending timer, their invites coming due at that many
    per hour once the backlog of their logins is processed;
  * recovery after `kill -9` mid-run: time from the restart to ready, and to the first
    committed transaction that carries output;
  * restore: the state directory deleted, time and records/s to rebuild it from the changelog;
  * state at scale (BENCH_STATE_CUSTOMERS customers, default 1,000,000; 0 skips it): Waymark
    and the Streams baseline each process that trace once (exactly-once), then restore their
    state from the changelog with the state directory deleted; the table shows each one's
    throughput, peak RSS and restore time, and Waymark's ratio to the baseline; Streams
    also runs the trace with commit.interval.ms 1000, Waymark's backlog-commit-interval-ms,
    for a comparison at equal commit intervals;
  * simulate (`simulate`): `waymark simulate` over 10M events in the goal's shape,
    BENCH_SIM_ACTIVE_CUSTOMERS customers (default 1,000,000) placing BENCH_SIM_REPEAT_ORDERS
    further orders on average (`loadgen --repeat-orders`, default 21: about 10 events per
    customer), and over BENCH_SIM_CUSTOMERS customers of the default traffic (default
    2,650,000, about 10M events, a journey-heavy shape: 3.8 events and 6 wake-ups per
    customer); 0 skips either: time, CPU per event and peak RSS; and on one engine thread
    over traces of BENCH_SIM_SCALING customers (default 5000,50000,500000): microseconds per
    event against the size of the state the engine reads (the fastest of three runs each).

BENCH_PHASES (default `throughput,latency,timers,recovery,state,simulate`) picks the parts
to run. BENCH_WAYMARK_CONFIG adds YAML lines to every Waymark config the bench writes (say
`cache-capacity: 100000`, to compare a setting on the same machine and trace);
BENCH_KAFKA_PROPERTIES (`key=value,key=value`) adds librdkafka properties to their `kafka:`
section (say `linger.ms=20`); BENCH_CHANGELOG_CONFIG (`key=value,key=value`) gives Waymark's
state changelog topic configs (`waymark topics create --changelog-config`, say
`segment.bytes=134217728`). The binary measured is the `dist` profile's (`make dist`, fat
LTO: what a deployment should run); BENCH_PROFILE=release measures the tests' build instead.

The bench broker's storage is deleted at the end (BENCH_KEEP_KAFKA=1 keeps the broker and
its topics). Figures on a shared 2-core machine are noisy: compare the ratios within one run, not the
absolute numbers across runs. The table is also written to BENCHMARKS.md (BENCH_REPORT).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("WAYMARK_CACHE", Path.home() / ".cache/waymark"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
# The binary measured: the `dist` profile's (`make dist`: fat LTO, what a deployment should
# run); BENCH_PROFILE=release measures the tests' build instead.
PROFILE = os.environ.get("BENCH_PROFILE", "dist")
WAYMARK = TARGET / PROFILE / "waymark"
PORT = int(os.environ.get("BENCH_KAFKA_PORT", "29092"))
# The bench broker's log segments: Kafka's default, 1 GiB, as a production broker's, rather than
# the 64 MiB scripts/kafka.sh gives a dev box. With 64 MiB, every partition of the latency
# run's outputs and changelog rolled at once 90-105 s into it, and the broker's roll and
# compaction stalled Waymark on the shared cores: at half of peak p99 1,163 ms, against 190
# and 211 ms with 1 GiB (BENCHMARKS.md, twenty-third session). The state phase's changelog is
# then not compacted before its restore, which reads every version written (35.2 s for 1M
# customers against 10.8 s with 64 MiB).
SEGMENT_BYTES = os.environ.get("BENCH_SEGMENT_BYTES", str(1 << 30))
# Topic configs of Waymark's state changelog, as `KEY=VALUE,KEY=VALUE` (`waymark topics create
# --changelog-config`); empty: the broker's defaults, the changelog compacted.
CHANGELOG_CONFIG = [kv.strip() for kv in os.environ.get("BENCH_CHANGELOG_CONFIG", "").split(",")
                    if kv.strip()]
BROKERS = f"127.0.0.1:{PORT}"
CUSTOMERS = os.environ.get("BENCH_CUSTOMERS", "500000")
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))
KSTREAMS = os.environ.get("BENCH_KSTREAMS", "1") != "0"
KSTREAMS_THREADS = int(os.environ.get("BENCH_KSTREAMS_THREADS", "2"))
# Waymark (exactly-once) and the Streams baseline run alternately this many times each, after
# one warm-up run of each that is not counted (a fresh broker and a cold JVM are slower);
# the table shows the medians.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# `simulate` at scale, the goal's shape: this many customers (1M) with this many further orders
# each on average (21: ≈ 10M events); 0 customers skips it.
SIM_ACTIVE_CUSTOMERS = int(os.environ.get("BENCH_SIM_ACTIVE_CUSTOMERS", "1000000"))
SIM_REPEAT_ORDERS = int(os.environ.get("BENCH_SIM_REPEAT_ORDERS", "21"))
# `simulate` at scale, the default traffic: this many customers (2.65M ≈ 10M events); 0 skips it.
SIM_CUSTOMERS = int(os.environ.get("BENCH_SIM_CUSTOMERS", "2650000"))
# `simulate` on one engine thread over traces of these many customers: CPU per event against
# the size of the state it reads (the engine's own work, and what the memory adds to it).
SIM_SCALING = [int(n) for n in os.environ.get("BENCH_SIM_SCALING", "5000,50000,500000").split(",")
               if n.strip() and int(n) > 0]
# State at scale: this many customers for the RSS and restore comparison; 0 skips it.
STATE_CUSTOMERS = int(os.environ.get("BENCH_STATE_CUSTOMERS", "1000000"))
WAYMARK_CONFIG = os.environ.get("BENCH_WAYMARK_CONFIG", "").splitlines()
KAFKA_PROPERTIES = dict(kv.split("=", 1) for kv in
                        os.environ.get("BENCH_KAFKA_PROPERTIES", "").split(",") if kv.strip())
PHASES = set(os.environ.get("BENCH_PHASES",
                            "throughput,latency,timers,recovery,state,simulate").split(","))
# Latency: a live stream at this many events/s (default: half of Waymark's exactly-once
# throughput from this run's throughput phase, else 10,000), measured for LATENCY_SECS after
# LATENCY_WARMUP seconds. The warm-up covers the start: the first transactions, and a
# trace that begins with new customers only; at 25,000-30,000 events/s on two shared cores
# Waymark took 20-45 s to catch up from it (the `-latencies.tsv` files show it).
LATENCY_RATE = float(os.environ.get("BENCH_LATENCY_RATE", "0"))
LATENCY_SECS = int(os.environ.get("BENCH_LATENCY_SECS", "60"))
LATENCY_WARMUP = int(os.environ.get("BENCH_LATENCY_WARMUP", "60"))
# BENCH_LATENCY_PIN=1: the latency phase runs each engine on CPUs of its own (the last half
# of the machine's; on two, CPU 1) and the broker, the load generator, the probe and this
# script on the others, peak and live runs alike. On a shared machine the live run's load
# generator and broker otherwise take CPU from the engine that a deployment would not
# (0.86 of two cores at 26,219 events/s); pinned, each side has its own cores and the
# engine's peak and latency are those of an engine on that many cores.
LATENCY_PIN = os.environ.get("BENCH_LATENCY_PIN", "0") == "1"
# Timers: this many customers with a pending timer; their timers start coming due when the
# backlog of their logins would be processed at BENCH_TIMER_LOAD_RATE events/s (both
# engines load about 30,000/s; a lower rate only makes the phase wait); firing is measured
# for BENCH_TIMER_SECS from a minute after the backlog was processed. The Streams baseline's
# in-memory timer index needs a larger heap at this size.
TIMER_CUSTOMERS = int(os.environ.get("BENCH_TIMER_CUSTOMERS", "5100000"))
TIMER_LOAD_RATE = float(os.environ.get("BENCH_TIMER_LOAD_RATE", "25000"))
TIMER_SECS = int(os.environ.get("BENCH_TIMER_SECS", "60"))
TIMER_KSTREAMS_HEAP = os.environ.get("BENCH_TIMER_KSTREAMS_HEAP", "3g")
HTTP = "127.0.0.1:19464"
RUN_ID = time.strftime("%Y%m%d%H%M%S")
WORK = ROOT / ".waymark" / f"bench-{RUN_ID}"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def kafka(cmd):
    env = dict(os.environ, KAFKA_PORT=str(PORT), KAFKA_CONTROLLER_PORT=str(PORT + 1),
               KAFKA_SEGMENT_BYTES=SEGMENT_BYTES)
    subprocess.run(["bash", str(ROOT / "scripts/kafka.sh"), cmd], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def metrics():
    try:
        with urllib.request.urlopen(f"http://{HTTP}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric(text, name, label=""):
    """Sum of the samples of `name` whose labels contain `label`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


COMMIT_PHASES = ["prepare", "offsets", "flush", "end", "state_write"]


def commit_phases(text):
    """Mean ms of each part of Waymark's commits so far, from its metrics text, as
    `prepare 3, offsets 9, ...` (empty before the first commit)."""
    parts = []
    for phase in COMMIT_PHASES:
        label = f'phase="{phase}"'
        count = metric(text, "waymark_pipeline_commit_phase_duration_seconds_count", label)
        if count:
            mean = metric(text, "waymark_pipeline_commit_phase_duration_seconds_sum", label) / count
            parts.append(f"{phase.replace('_', ' ')} {mean * 1000:.1f}")
    return ", ".join(parts)


def ready():
    try:
        with urllib.request.urlopen(f"http://{HTTP}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def config(name, guarantee, trace=None, journeys=None, extra=(), produce=True):
    """Fresh topics for a run called `name` and Waymark's config for them (also used to decode
    what the Streams baseline writes to the same topics); `trace` (default: the bench trace)
    is produced to the input topic unless `produce` is false. `journeys` replaces the
    reference journey; `extra` lines are added to the config."""
    suffix = f"bench-{RUN_ID}-{name}"
    path = WORK / f"{name}.yaml"
    topics = {
        "customer-events": f"customer-events.{suffix}",
        "journey-events": f"journey-events.{suffix}",
        "commands-email": f"commands.email.{suffix}",
        "commands-sms": f"commands.sms.{suffix}",
        "commands-contact-center": f"commands.contact-center.{suffix}",
        "dead-letters": f"customer-events.dlq.{suffix}",
        "late-events": f"customer-events.late.{suffix}",
        "state-changelog": f"waymark.state-changelog.{suffix}",
    }
    lines = [
        "kafka:", f"  brokers: {BROKERS}", f"  group-id: {suffix}",
        f"  transactional-id: {suffix}",
        # Static membership, as recommended: a restart takes its partitions back at once.
        f"  group-instance-id: {suffix}",
        *([f"  properties: {json.dumps(KAFKA_PROPERTIES)}"] if KAFKA_PROPERTIES else []),
        "topics:",
        *[f"  {k}: {v}" for k, v in topics.items()],
        f"journeys: {journeys or ROOT / 'deploy/journeys/b2b-onboarding.yaml'}",
        f"state-dir: {WORK / name / 'state'}", f"http-addr: {HTTP}",
        f"processing-guarantee: {guarantee}", *extra, *WAYMARK_CONFIG,
    ]
    path.write_text("\n".join(lines) + "\n")
    subprocess.run([str(WAYMARK), "--config", str(path), "topics", "create", "--brokers",
                    BROKERS, "--partitions", str(PARTITIONS),
                    *[a for kv in CHANGELOG_CONFIG for a in ("--changelog-config", kv)]],
                   check=True, stderr=subprocess.DEVNULL)
    if produce:
        subprocess.run([str(WAYMARK), "produce", "--brokers", BROKERS, "--topic",
                        topics["customer-events"], str(trace or WORK / "events.jsonl")],
                       check=True, stderr=subprocess.DEVNULL)
    return path


def input_topic(name):
    return f"customer-events.bench-{RUN_ID}-{name}"


def on_cpus(cpus):
    """For `Popen(preexec_fn=...)`: the child runs on `cpus` (None: wherever this script may)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def start(cfg, logname, cpus=None):
    logf = open(WORK / logname, "w")
    return subprocess.Popen([str(WAYMARK), "--config", str(cfg), "run"], stdout=subprocess.DEVNULL,
                            stderr=logf, preexec_fn=on_cpus(cpus))


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def processed():
    return metric(metrics(), "waymark_pipeline_events_total")


def stat_seconds(stat):
    """User + system CPU seconds in the text of a /proc/<pid>/stat (or task's stat) file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds process `pid` has used so far (0 when it is gone)."""
    try:
        return stat_seconds(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0


def idle_seconds():
    """Idle (and I/O wait) CPU seconds of the whole machine so far, summed over its CPUs."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


def latency_cpus():
    """With LATENCY_PIN: (the engine's CPUs, the other CPUs: broker, load generator, probe and
    this script); else None."""
    if not LATENCY_PIN:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench: BENCH_LATENCY_PIN=1 needs at least two CPUs")
    half = len(cpus) // 2
    return set(cpus[half:]), set(cpus[:half])


def pin_threads(pid, cpus):
    """Moves every thread of `pid` to `cpus` (threads it starts later inherit the set)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, PermissionError):
            continue


def broker_pid():
    data = Path(os.environ.get("KAFKA_DATA", CACHE / f"kafka-data-{PORT}"))
    return int((data / "kafka.pid").read_text().strip())


# Waymark's threads by what they do, from the first characters of their names (Linux keeps
# 15); threads that ended between two readings (each commit's thread) are counted apart.
THREAD_ROLES = [("waymark-pipelin", "pipeline"), ("waymark-read-ah", "read-ahead"),
                ("rdk:", "librdkafka"), ("producer pollin", "librdkafka"),
                ("rocksdb:", "RocksDB")]


def thread_times(pid):
    """Per live thread of `pid`: (name, CPU seconds, seconds waiting for a CPU while runnable),
    by thread id; empty once the process is gone. The wait is the scheduler's run-queue time
    (/proc/<pid>/task/<tid>/schedstat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            ran = stat_seconds((task / "stat").read_text())
            waited = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
        out[task.name] = (name, ran, waited)
    return out


def role(name):
    return next((r for prefix, r in THREAD_ROLES if name.startswith(prefix)), "other")


class CpuSplit:
    """Where the CPU went between `start` and `stop`: cores used by the processor (by its
    threads' roles too) and by the broker, and cores idle, out of the machine's; and the share
    of the wall time the pipeline thread ran, waited for a CPU while runnable, or waited for
    work (records, reads ahead, a commit). Read from /proc, so it costs nothing."""

    def __init__(self, pid):
        self.pid, self.broker = pid, broker_pid()
        self.t, self.own, self.kafka, self.idle = (time.monotonic(), cpu_seconds(pid),
                                                   cpu_seconds(self.broker), idle_seconds())
        self.threads = thread_times(pid)

    def stop(self):
        threads = thread_times(self.pid)
        secs = time.monotonic() - self.t
        process = (cpu_seconds(self.pid) - self.own) / secs
        roles, pipeline = {}, (0.0, 0.0)
        for tid, (name, cpu, waited) in threads.items():
            _, cpu0, waited0 = self.threads.get(tid, (name, 0.0, 0.0))
            ran, queued = (cpu - cpu0) / secs, (waited - waited0) / secs
            what = role(name)
            roles[what] = roles.get(what, 0.0) + ran
            # Threads the pipeline thread starts without a name carry its name: the busiest
            # of them is the one handling records.
            if what == "pipeline" and ran > pipeline[0]:
                pipeline = (ran, queued)
        roles["ended threads"] = max(process - sum(roles.values()), 0.0)
        return {"process": process, "broker": (cpu_seconds(self.broker) - self.kafka) / secs,
                "idle": (idle_seconds() - self.idle) / secs, "secs": secs, "roles": roles,
                "pipeline": pipeline}


def thread_split(split):
    """`split`'s threads as text: the pipeline thread's wall time, then the cores by role."""
    ran, queued = split["pipeline"]
    order = ["pipeline", "read-ahead", "librdkafka", "RocksDB", "ended threads", "other"]
    cores = ", ".join(f"{r} {split['roles'][r]:.2f}" for r in order
                      if split["roles"].get(r, 0) >= 0.005)
    return (f"pipeline thread on a CPU {ran:.0%} of the time, runnable and waiting for one "
            f"{queued:.0%}, waiting for work {max(1 - ran - queued, 0):.0%}; cores by thread: "
            f"{cores}")


def wait_idle(quiet=3.0, timeout=900):
    """Waits until the processed-events counter has not moved for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        now = processed()
        if now != last:
            last, since = now, time.monotonic()
        elif now > 0 and time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)
    raise SystemExit("bench: the processor never went idle")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def stop_rss(proc):
    """Stops `proc` and returns its peak resident set size in MiB."""
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_maxrss / 1024


def kstreams_status(path):
    """The last status line of the Kafka Streams baseline's log, as a dict."""
    last = ""
    with open(path) as f:
        for line in f:
            if line.startswith("kstreams: status "):
                last = line
    return dict(kv.split("=", 1) for kv in last.split()[2:] if "=" in kv)


def kstreams_throughput(n, name="kstreams"):
    """Events/s of the Kafka Streams baseline over the bench trace, measured as Waymark's is:
    from RUNNING (Waymark: ready) until every event of the trace has been processed."""
    config(name, "exactly-once")  # fresh topics with the trace on them, named as Waymark's
    return kstreams_rate(name, n)


def kstreams_rate(name, n, extra=(), cpus=None):
    """Events/s of the Kafka Streams baseline (with `extra` arguments, on `cpus`) over the `n`
    events on the input topic of `config(name, ...)`: from RUNNING until it has processed them
    all."""
    proc, status = kstreams_start(name, extra=extra, cpus=cpus)
    try:
        t0 = wait(lambda: status().get("state") == "RUNNING", 300, "Kafka Streams RUNNING")
        t1 = wait(lambda: int(status().get("records", "0")) >= n, 3600,
                  f"{n} events processed by Kafka Streams")
    finally:
        stop(proc)
    return n / (t1 - t0)


def kstreams_start(name, logname=None, extra=(), heap="1g", cpus=None):
    """Starts the Kafka Streams baseline on the topics of `config(name, ...)` (with `extra`
    arguments and a JVM heap of `heap`, on `cpus`: the JVM sizes its thread pools to them):
    the process and a function returning its last status line (failing if it exited)."""
    classpath = subprocess.run(["bash", str(ROOT / "scripts/bench/kstreams/build.sh")],
                               check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    suffix = f"bench-{RUN_ID}-{name}"
    logpath = WORK / (logname or f"{name}.log")
    logf = open(logpath, "w")
    proc = subprocess.Popen(
        ["java", f"-Xmx{heap}", "-cp", classpath, "io.waymark.bench.kstreams.OnboardingApp",
         "--bootstrap-servers", BROKERS, "--application-id", suffix, "--topic-suffix", f".{suffix}",
         "--schemas", str(ROOT / "schemas"), "--state-dir", str(WORK / name / "state"),
         "--threads", str(KSTREAMS_THREADS), "--processing-guarantee", "exactly_once_v2",
         # Static membership, as Waymark's: a restart takes its partitions back at once.
         "--group-instance-id", suffix,
         "--status-interval-ms", "100", *extra],
        stdout=subprocess.DEVNULL, stderr=logf, preexec_fn=on_cpus(cpus))

    def status():
        if proc.poll() is not None:
            raise SystemExit(f"bench: the Kafka Streams baseline exited (log {logpath})")
        return kstreams_status(logpath)
    return proc, status


def state_at_scale():
    """Waymark and the Streams baseline (unless BENCH_KSTREAMS=0) over a trace of
    STATE_CUSTOMERS customers: each processes it once (exactly-once), then restores its state
    from the changelog with the state directory deleted. Rows: throughput, peak RSS and
    restore time of each, and ratios."""
    trace = WORK / "state.jsonl"
    log(f"state at scale: generating {STATE_CUSTOMERS:,} customers")
    # Arrivals over a day two weeks ago: the journeys (steps about 18 h apart) have played out
    # by now, nearly every event is in the past (not refused as future-dated), and the
    # customers are still in state (retention keeps them 30 days after their journey ended).
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 15 * 86400))
    subprocess.run([str(WAYMARK), "loadgen", "--customers", str(STATE_CUSTOMERS), "--seed", "11",
                    "--start", since, "--output", str(trace)], check=True,
                   stderr=subprocess.DEVNULL)
    n = sum(1 for _ in open(trace))
    log(f"state at scale: {n:,} events; Waymark")
    cfg = config("state", "exactly-once", trace)
    proc = start(cfg, "state-run.log")
    t0 = wait(ready, 300, "ready")
    t1 = wait(lambda: processed() >= n, 3600, f"{n} events processed")
    wait(lambda: metric(metrics(), "waymark_state_keys") > 0, 120, "the state size sampled")
    keys = metric(metrics(), "waymark_state_keys")
    w_rss = stop_rss(proc)
    w_rate = n / (t1 - t0)
    shutil.rmtree(WORK / "state" / "state")
    t0 = time.monotonic()
    proc = start(cfg, "state-restore.log")
    t1 = wait(ready, 3600, "ready after restore")
    restored = metric(metrics(), "waymark_state_restore_records_total")
    w_restore_rss = stop_rss(proc)
    w_restore = t1 - t0
    log(f"state at scale: Waymark {w_rate:,.0f} events/s, peak RSS {w_rss:,.0f} MiB, "
        f"restore {w_restore:.1f} s")
    what = f"{STATE_CUSTOMERS:,} customers / {n:,} events"
    run_row = (f"state at scale, {what}: Waymark run, exactly-once",
               f"{w_rate:,.0f} events/s, peak RSS {w_rss:,.0f} MiB, {keys:,.0f} state keys", "")
    restore_row = ("state at scale: restore from the changelog, Waymark",
                   f"{restored:,.0f} records in {w_restore:.1f} s, peak RSS "
                   f"{w_restore_rss:,.0f} MiB", f"{restored / w_restore:,.0f} records/s")
    if not KSTREAMS:
        trace.unlink()
        return [run_row, restore_row]
    log("state at scale: Kafka Streams")
    name = "state-kstreams"
    config(name, "exactly-once", trace)
    proc, status = kstreams_start(name)
    t0 = wait(lambda: status().get("state") == "RUNNING", 300, "Kafka Streams RUNNING")
    t1 = wait(lambda: int(status().get("records", "0")) >= n, 3600,
              f"{n} events processed by Kafka Streams")
    k_rss = stop_rss(proc)
    k_rate = n / (t1 - t0)
    shutil.rmtree(WORK / name / "state")
    t0 = time.monotonic()
    proc, status = kstreams_start(name, f"{name}-restore.log")
    t1 = wait(lambda: status().get("state") == "RUNNING", 3600,
              "Kafka Streams RUNNING after restore")
    stop(proc)
    k_restore = t1 - t0
    # Waymark commits a backlog every backlog-commit-interval-ms (1 s): Streams once more with
    # commit.interval.ms at that value, so the two can be compared at equal commit intervals.
    name = "state-kstreams-1s"
    config(name, "exactly-once", trace)
    proc, status = kstreams_start(name, extra=("--commit-interval-ms", "1000"))
    t0 = wait(lambda: status().get("state") == "RUNNING", 300, "Kafka Streams RUNNING")
    t1 = wait(lambda: int(status().get("records", "0")) >= n, 3600,
              f"{n} events processed by Kafka Streams (commit.interval.ms 1000)")
    stop(proc)
    k_rate_1s = n / (t1 - t0)
    trace.unlink()
    return [
        run_row,
        ("state at scale: Kafka Streams baseline, exactly-once",
         f"{k_rate:,.0f} events/s, peak RSS {k_rss:,.0f} MiB (JVM, -Xmx1g)", ""),
        ("state at scale: Waymark ÷ Kafka Streams throughput; peak RSS", "",
         f"{w_rate / k_rate:.2f}; {w_rss / k_rss:.2f}"),
        ("state at scale: Kafka Streams baseline, exactly-once, commit.interval.ms 1000",
         f"{k_rate_1s:,.0f} events/s", ""),
        ("state at scale: Waymark ÷ Kafka Streams at commit.interval.ms 1000 (Waymark's "
         "backlog-commit-interval-ms)", "", f"{w_rate / k_rate_1s:.2f}"),
        restore_row,
        ("state at scale: restore, Kafka Streams (state directory deleted → RUNNING)",
         f"{k_restore:.1f} s", ""),
        ("state at scale: Waymark ÷ Kafka Streams restore time", "",
         f"{w_restore / k_restore:.2f}"),
    ]


class Probe:
    """`waymark tail --received-at` on a run's command topics, started before the load: every
    command's `due_at` and the wall-clock time it became readable (read_committed), in ms
    (`commands`); and, by the same index, when the engine produced it, its Kafka timestamp
    (`produced`)."""

    def __init__(self, cfg, topics, logname):
        import threading
        self.commands = []
        self.produced = []
        self.proc = subprocess.Popen(
            [str(WAYMARK), "--config", str(cfg), "tail", "--brokers", BROKERS, "--received-at",
             *topics], stdout=subprocess.PIPE, stderr=open(WORK / logname, "w"), text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            rec = json.loads(line)
            if rec.get("kind") == "command":
                self.commands.append((millis(rec["due_at"]), millis(rec["received_at"])))
                self.produced.append(millis(rec["produced_at"]))

    def stop(self):
        time.sleep(2)  # what the engines committed last has time to arrive
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        return self.commands


def millis(rfc3339):
    from datetime import datetime
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


def percentiles(xs):
    """p50, p99 and max of `xs` (ms)."""
    xs = sorted(xs)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return pick(0.50), pick(0.99), xs[-1]


# Latency windows: the measured minute cut into windows of this many seconds, each with its
# own p50/p99, to tell a steady state that meets the goal from stalls that do not.
LATENCY_WINDOW_SECS = 5
# The latency goal's p99 (ms), per window.
LATENCY_GOAL_MS = 250


def latency_windows(commands, since):
    """The commands due from `since` (ms), cut into LATENCY_WINDOW_SECS windows by due time:
    `(seconds from since, commands, p50, p99)` per window that has any."""
    width = LATENCY_WINDOW_SECS * 1000
    by_window = {}
    for due, got in commands:
        if due >= since:
            by_window.setdefault(int((due - since) // width), []).append(got - due)
    return [(w * LATENCY_WINDOW_SECS, len(lat), *percentiles(lat)[:2])
            for w, lat in sorted(by_window.items())]


def engine_start(engine, cfg, name, extra_streams=(), heap="1g", cpus=None):
    """Starts Waymark (`run` on `cfg`) or the Streams baseline on the topics of `name` (on
    `cpus`); waits until it is ready (RUNNING). Returns a function that stops it and returns
    its peak RSS (MiB), a function returning how many input records it has processed, and its
    pid."""
    if engine == "waymark":
        proc = start(cfg, f"{name}.log", cpus)
        wait(ready, 300, "ready")
        return (lambda: stop_rss(proc)), processed, proc.pid
    proc, status = kstreams_start(name, extra=extra_streams, heap=heap, cpus=cpus)
    wait(lambda: status().get("state") == "RUNNING", 300, "Kafka Streams RUNNING")
    return (lambda: stop_rss(proc)), (lambda: int(status().get("records", "0"))), proc.pid


ENGINES = [("waymark", "Waymark")] + ([("kstreams", "Kafka Streams")] if KSTREAMS else [])


def latency_trace(name, customers, rate, engine=None):
    """The latency workload on the input topic of `config(name, ...)`: `customers` customers
    (about 3.7 events each) arriving over 60 days, each customer's steps about 18 h apart, so
    that after the first days of the trace logins and later steps mix as in steady traffic;
    every event stamped with the time it is sent (`waymark loadgen --live`), at `rate` events/s
    (0: as fast as the broker takes them). Returns the number of events sent, and, if
    `engine` (a pid) is given, where the CPU went in the measured time (LATENCY_SECS after
    LATENCY_WARMUP): the `CpuSplit` of `engine`, with the load generator's cores as "loadgen"."""
    log_path = WORK / f"{name}-loadgen.log"
    with open(log_path, "w") as log_file:
        gen = subprocess.Popen([str(WAYMARK), "loadgen", "--customers", str(customers), "--seed",
                                "5", "--arrival-window", "60d", "--brokers", BROKERS, "--topic",
                                input_topic(name), "--rate", str(rate), "--live"],
                               stderr=log_file)
        split = None
        if engine:
            # The load generator and the broker it feeds share the machine with the engine:
            # their CPU is part of what bounds the latency here (not in a deployment).
            started = time.monotonic()
            running = lambda: gen.poll() is None
            wait(lambda: not running() or time.monotonic() - started >= LATENCY_WARMUP,
                 LATENCY_WARMUP + 600, "the latency warm-up")
            if running():
                cpu, own = CpuSplit(engine), cpu_seconds(gen.pid)
                wait(lambda: not running() or time.monotonic() - cpu.t >= LATENCY_SECS,
                     LATENCY_SECS + 600, "the measured latency minute")
                split = cpu.stop()
                split["loadgen"] = (cpu_seconds(gen.pid) - own) / split["secs"]
        if gen.wait() != 0:
            raise SystemExit(f"bench: waymark loadgen failed; see {log_path}")
    return int(re.search(r"produced (\d+) events", log_path.read_text()).group(1)), split


def latency_customers(rate):
    """Customers of a latency run at `rate`: about 3.7 events each, enough for the warm-up
    and the measured time."""
    return int(rate * (LATENCY_WARMUP + LATENCY_SECS) / 3.7)


def workload_peak(engine, label, journeys, customers, cpus=None):
    """Events/s of `engine` (exactly-once, on `cpus`) over a backlog of the latency workload:
    the live stream of `customers` customers produced ahead at full speed, then processed as
    in the throughput phase (from ready, Streams: RUNNING, until every event is processed)."""
    name = f"latency-peak-{engine}"
    cfg = config(name, "exactly-once", journeys=journeys, produce=False,
                 extra=["allowed-lateness-secs: 0"])
    log(f"latency: {label}'s peak on the latency workload: producing {customers:,} customers")
    n, _ = latency_trace(name, customers, 0)
    if engine == "waymark":
        proc = start(cfg, f"{name}.log", cpus)
        try:
            t0 = wait(ready, 300, "ready")
            t1 = wait(lambda: processed() >= n, 3600, f"{n} events processed")
        finally:
            stop(proc)
        peak = n / (t1 - t0)
    else:
        peak = kstreams_rate(name, n, ("--invite-delay-ms", "0", "--allowed-lateness-ms", "0"),
                             cpus)
    log(f"latency: {label}'s peak on the latency workload: {peak:,.0f} events/s ({n:,} events)")
    return peak, n


def latency(peaks):
    """The latency rows (see `latency_runs`), with each engine on CPUs of its own if
    LATENCY_PIN: the broker's threads and this script (so the load generator and the probe it
    starts) move to the other CPUs for the phase and back after it."""
    pinned = latency_cpus()
    if not pinned:
        return latency_runs(peaks)
    engine_cpus, harness = pinned
    everything = os.sched_getaffinity(0)
    log(f"latency: engines on CPUs {sorted(engine_cpus)}; broker, load generator and probe on "
        f"CPUs {sorted(harness)}")
    pin_threads(broker_pid(), harness)
    os.sched_setaffinity(0, harness)
    try:
        return latency_runs(peaks, engine_cpus)
    finally:
        pin_threads(broker_pid(), everything)
        os.sched_setaffinity(0, everything)


def latency_runs(peaks, cpus=None):
    """Event → command latency of an immediate action: the reference journey with its invite
    email at once (delay 0s) and allowed lateness 0, fed by `waymark loadgen --live` (each
    event stamped with the time it is sent) at a steady rate; the latency of each invite is
    when it became readable (read_committed) minus its due time, the stamp of its login.

    The rate is half of Waymark's peak *on this workload* (BENCH_LATENCY_RATE sets it): a
    live run of R events/s over the warm-up and the measured time holds about R × 32 customers
    in state, and its events, stamped as sent, bring no timer due, so neither its state nor its
    mix is the throughput trace's, nor is its peak. The peak is measured on a backlog of the
    workload sized for 40,000 events/s (half of Waymark's peak on it here was 38,536), or for
    half of the throughput phase's peak (`peaks`) if that is more, so that the run at half of
    the workload's peak holds no more customers than the backlog measured. Waymark and
    the baseline run at that rate and, when the baseline's own peak on the workload is lower,
    the baseline also at half of its own. With `cpus`, every engine run is on those CPUs
    (and the rows say so). Rows: each peak, and p50/p99/max of each run."""
    pinned = f", engine on CPUs {','.join(map(str, sorted(cpus)))} of its own" if cpus else ""
    journeys = WORK / "b2b-onboarding-immediate.yaml"
    text = (ROOT / "deploy/journeys/b2b-onboarding.yaml").read_text()
    immediate = text.replace("id: invite-email\n        delay: 1h", "id: invite-email\n        delay: 0s")
    if immediate == text:
        raise SystemExit("bench: could not find the invite email's `delay: 1h` to make it 0s")
    journeys.write_text(immediate)
    rows = []
    if LATENCY_RATE:
        rate, which, own = LATENCY_RATE, "BENCH_LATENCY_RATE", 0
    else:
        sized_rate = max(peaks.get("waymark", 0) / 2, 40_000)
        sized = latency_customers(sized_rate)
        workload = {}
        for engine, label in ENGINES:
            peak, n = workload_peak(engine, label, journeys, sized, cpus)
            workload[engine] = peak
            rows.append((f"latency workload: peak of {label}, exactly-once{pinned}, backlog of "
                         f"{sized:,} customers / {n:,} events stamped as sent",
                         f"{peak:,.0f} events/s", ""))
        if "kstreams" in workload:
            rows.append(("latency workload: Waymark ÷ Kafka Streams peak (exactly-once)", "",
                         f"{workload['waymark'] / workload['kstreams']:.2f}"))
        rate, which = workload["waymark"] / 2, "half of Waymark's peak on this workload"
        if rate > sized_rate:
            log(f"latency: warning: the run at {rate:,.0f} events/s holds more customers than "
                f"the backlog its peak was measured on (sized for {sized_rate:,.0f} events/s)")
        own = workload.get("kstreams", 0) / 2
    runs = [(engine, label, rate, which) for engine, label in ENGINES]
    if KSTREAMS and 0 < own < rate:
        runs.append(("kstreams", "Kafka Streams", own, "half of its own peak on this workload"))
    p99s = {}
    for engine, label, rate, which in runs:
        name = f"latency-{engine}-{rate:.0f}"
        cfg = config(name, "exactly-once", journeys=journeys, produce=False,
                     extra=["allowed-lateness-secs: 0"])
        stop_engine, done, pid = engine_start(
            engine, cfg, name, ("--invite-delay-ms", "0", "--allowed-lateness-ms", "0"),
            cpus=cpus)
        probe = Probe(cfg, [f"commands.email.bench-{RUN_ID}-{name}"], f"{name}-tail.log")
        time.sleep(2)  # the probe has its partitions
        customers = latency_customers(rate)
        log(f"latency: {label}, {customers:,} customers at {rate:,.0f} events/s")
        t0 = time.time() * 1000
        sent, cpu = latency_trace(name, customers, rate, engine=pid)
        wait(lambda: done() >= sent, 600, f"{label} to process the live stream")
        commands = probe.stop()
        commits = ""
        if engine == "waymark":
            text = metrics()
            n_commits = metric(text, "waymark_pipeline_commit_duration_seconds_count")
            if n_commits:
                mean = metric(text, "waymark_pipeline_commit_duration_seconds_sum") / n_commits
                extended = metric(text, "waymark_pipeline_batches_extended_total")
                phases = commit_phases(text)
                commits = (f"; {n_commits:,.0f} commits of {mean * 1000:.0f} ms on average"
                           f"{' (' + phases + ' ms)' if phases else ''}, {extended:,.0f} kept "
                           "open for a backlog")
        stop_engine()
        timed = [(due, got, made) for (due, got), made in zip(commands, probe.produced)]
        # Every command's due time, when it became readable and when it was produced.
        (WORK / f"{name}-latencies.tsv").write_text(
            "".join(f"{due}\t{got}\t{made}\n" for due, got, made in timed))
        since = t0 + LATENCY_WARMUP * 1000
        lat = [got - due for due, got in commands if due >= since]
        if not lat:
            raise SystemExit(f"bench: no immediate command from {label} was read")
        p50, p99, top = percentiles(lat)
        windows = latency_windows(commands, since)
        # Waymark stamps a command with when it produced it, so its latency splits in two:
        # handling the event (event → produced) and committing it (produced → readable).
        # Kafka Streams gives an output its input's timestamp: no split.
        split, halves = "", [("",) * 2] * len(windows)
        if engine == "waymark":
            handled = [(due, made) for due, _, made in timed]
            committing = [(due, due + got - made) for due, got, made in timed]
            h50, h99, _ = percentiles([made - due for due, made in handled if due >= since])
            c50, c99, _ = percentiles([got - due for due, got in committing if due >= since])
            split = (f"; event → produced p50 {h50:,} ms, p99 {h99:,} ms, produced → readable "
                     f"p50 {c50:,} ms, p99 {c99:,} ms")
            halves = [(h[2], c[2]) for h, c in zip(latency_windows(handled, since),
                                                    latency_windows(committing, since))]
        (WORK / f"{name}-windows.tsv").write_text(
            "seconds\tcommands\tp50_ms\tp99_ms\tproduced_p50_ms\treadable_p50_ms\n"
            + "".join(f"{s}\t{n}\t{w50}\t{w99}\t{h}\t{c}\n"
                      for (s, n, w50, w99), (h, c) in zip(windows, halves)))
        meeting = sum(1 for *_, w99 in windows if w99 <= LATENCY_GOAL_MS)
        steady = (f"; p99 ≤ {LATENCY_GOAL_MS} ms in {meeting} of {len(windows)} "
                  f"{LATENCY_WINDOW_SECS}-second windows, their median p99 "
                  f"{percentiles([w99 for *_, w99 in windows])[0]:,} ms")
        ratio = ""
        if engine == "waymark":
            p99s[rate] = p99
        elif rate in p99s:
            ratio = f"{p99s[rate] / p99:.2f} (p99, Waymark ÷ Streams)"
        rows.append((f"latency, event → command of an immediate action at {rate:,.0f} events/s"
                     f" ({which}), {label}{pinned}",
                     f"p50 {p50:,} ms, p99 {p99:,} ms, max {top:,} ms ({len(lat):,} commands"
                     f"{commits}{split}{steady})",
                     ratio))
        log(f"latency: {label} at {rate:,.0f} events/s: p50 {p50} ms, p99 {p99} ms, max {top} ms"
            f"{split}{steady}")
        if cpu:
            threads = f"; {thread_split(cpu)}" if engine == "waymark" else ""
            rows.append((f"latency run at {rate:,.0f} events/s, {label}{pinned}: CPU (cores) "
                         "in the measured time",
                         f"{label} {cpu['process']:.2f}, broker {cpu['broker']:.2f}, load "
                         f"generator {cpu['loadgen']:.2f}, idle {cpu['idle']:.2f} of "
                         f"{os.cpu_count()}{threads}", ""))
    return rows


def timers():
    """Timer firing lateness with TIMER_CUSTOMERS customers each holding a pending timer: a
    backlog of logins (nothing else) whose invite emails (login + 1h) come due over an hour
    from about when the backlog is processed (estimated from TIMER_LOAD_RATE), so they fire at
    TIMER_CUSTOMERS per hour; a customer whose invite went out waits for its 2-day task, so
    every customer keeps a pending timer. Measured over TIMER_SECS from a minute after the
    backlog was processed (timers that came due while it was still loading have fired by then).
    Lateness of a command: when it became readable minus when it could first fire (due time +
    allowed lateness, 300 s for both). Rows: p50/p99/max for Waymark and the baseline, and
    each one's peak RSS."""
    lateness_ms = 300_000
    rows, p99s = [], {}
    for engine, label in ENGINES:
        name = f"timers-{engine}"
        cfg = config(name, "exactly-once", produce=False)
        # Logins occurred over the hour that ends the allowed lateness before the first invite
        # may fire: no invite is due by event time while the backlog is processed.
        fire_at = time.time() + TIMER_CUSTOMERS / 150_000 + TIMER_CUSTOMERS / TIMER_LOAD_RATE
        first_login = fire_at - 3600 - lateness_ms / 1000
        log(f"timers: {label}, producing {TIMER_CUSTOMERS:,} logins; the first timers come due "
            f"in {fire_at - time.time():.0f} s")
        subprocess.run([str(WAYMARK), "loadgen", "--customers", str(TIMER_CUSTOMERS), "--seed",
                        "13", "--start", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first_login)),
                        "--arrival-window", "1h", "--drop-off", "1,1,1,1,1,1", "--no-login", "0",
                        "--repeat-login", "0", "--duplicates", "0", "--out-of-order", "0",
                        "--steps-out-of-order", "0", "--brokers", BROKERS, "--topic",
                        input_topic(name)], check=True, stderr=subprocess.DEVNULL)
        started = time.time()
        stop_engine, done, _ = engine_start(engine, cfg, name, heap=TIMER_KSTREAMS_HEAP)
        probe = Probe(cfg, [f"commands.email.bench-{RUN_ID}-{name}"], f"{name}-tail.log")
        wait(lambda: done() >= TIMER_CUSTOMERS, 3 * 3600,
             f"{label} to process {TIMER_CUSTOMERS:,} logins")
        loaded = time.time()
        begin = max(fire_at, loaded) + 60
        log(f"timers: {label} processed the backlog in {loaded - started:.0f} s "
            f"({TIMER_CUSTOMERS / (loaded - started):,.0f} events/s); measuring from "
            f"{begin - time.time():.0f} s from now")
        wait(lambda: time.time() >= begin, 3600, "the measured time")
        pending = (f"{metric(metrics(), 'waymark_runtime_timers_pending'):,.0f} customers with a "
                   "pending timer" if engine == "waymark" else "")
        wait(lambda: time.time() >= begin + TIMER_SECS, 3600, "the end of the measured time")
        commands = probe.stop()
        rss = stop_engine()
        lat = [got - (due + lateness_ms) for due, got in commands
               if begin * 1000 <= due + lateness_ms < (begin + TIMER_SECS) * 1000]
        if not lat:
            raise SystemExit(f"bench: no timer of {label} fired in the measured time")
        p50, p99, top = percentiles(lat)
        p99s[engine] = p99
        rows.append((f"timers: firing lateness, {TIMER_CUSTOMERS:,} customers each with a timer, "
                     f"{TIMER_CUSTOMERS / 3600:,.0f} firing/s, {label}",
                     f"p50 {p50:,} ms, p99 {p99:,} ms, max {top:,} ms ({len(lat):,} fired in "
                     f"{TIMER_SECS} s{'; ' + pending if pending else ''}); peak RSS {rss:,.0f} MiB;"
                     f" backlog of logins at {TIMER_CUSTOMERS / (loaded - started):,.0f} events/s",
                     "" if engine == "waymark" else f"{p99s['waymark'] / p99:.2f} (p99, Waymark ÷ Streams)"))
        log(f"timers: {label} p50 {p50} ms, p99 {p99} ms, max {top} ms")
    return rows


def simulate_cpu(trace, until, threads=None):
    """Runs `simulate` over `trace` (output discarded): (wall seconds, CPU seconds, peak RSS
    MiB)."""
    cmd = [str(WAYMARK), "simulate", "--journeys", str(ROOT / "deploy/journeys/b2b-onboarding.yaml"),
           "--events", str(trace), "--until", until]
    if threads:
        cmd += ["--threads", str(threads)]
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.monotonic() - t
    if status != 0:
        raise SystemExit(f"bench: simulate over {trace} failed")
    return secs, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def simulate_scaling(until):
    """`simulate` on one engine thread over traces of SIM_SCALING customers: microseconds per
    event, wall (the engine thread is the bound) and CPU (all threads: parsing and writing run
    beside it), of the fastest of three runs, against the smallest trace. What grows with the
    state is memory: every event and wake-up reads a customer that is rarely in the CPU's
    caches."""
    rows = []
    first = None
    for n in SIM_SCALING:
        trace = WORK / f"scaling-{n}.jsonl"
        subprocess.run([str(WAYMARK), "loadgen", "--customers", str(n), "--seed", "42",
                        "--output", str(trace)], check=True, stderr=subprocess.DEVNULL)
        events = sum(1 for _ in open(trace))
        # The same work three times: the fastest run is the one the machine's neighbours
        # disturbed least.
        secs, cpu, rss = min(simulate_cpu(trace, until, threads=1) for _ in range(3))
        trace.unlink()
        wall_us, cpu_us = secs * 1e6 / events, cpu * 1e6 / events
        first = first or wall_us
        log(f"simulate scaling: {n:,} customers, {wall_us:.1f} µs/event, {cpu_us:.1f} CPU-µs/event")
        rows.append((f"simulate, one engine thread, {n:,} customers / {events:,} events: µs per "
                     "event (ratio: to the smallest state)",
                     f"{wall_us:.1f} µs wall, {cpu_us:.1f} CPU-µs ({events / secs:,.0f} events/s, "
                     f"peak RSS {rss:,.0f} MiB)", f"{wall_us / first:.2f}"))
    return rows


def simulate_at_scale(until, customers, repeat_orders=0):
    """`simulate` over a large loadgen trace of `customers` with `repeat_orders` (goal: 10M
    events over 1M customers in ≤ 20 s): time, events/s and the process's peak RSS."""
    big = WORK / "big.jsonl"
    log(f"simulate at scale: generating {customers:,} customers, --repeat-orders {repeat_orders}")
    subprocess.run([str(WAYMARK), "loadgen", "--customers", str(customers), "--seed", "7",
                    "--repeat-orders", str(repeat_orders), "--output", str(big)],
                   check=True, stderr=subprocess.DEVNULL)
    events = sum(1 for _ in open(big))
    secs, cpu, rss_mib = simulate_cpu(big, until)
    big.unlink()
    log(f"simulate at scale: {events:,} events in {secs:.1f} s")
    shape = (f"`--repeat-orders {repeat_orders}`, the goal's shape" if repeat_orders
             else "the default traffic")
    return (f"simulate, {customers:,} customers / {events:,} events, {shape} (goal 10M in ≤ 20 s)",
            f"{secs:.1f} s, {events / secs:,.0f} events/s, {cpu * 1e6 / events:.1f} CPU-µs per "
            f"event, peak RSS {rss_mib:,.0f} MiB", "")


def main():
    if not WAYMARK.is_file():
        raise SystemExit(f"bench: no Waymark binary at {WAYMARK}; build it with `make dist` (or "
                         f"`cargo build --profile {PROFILE} -p waymark`), or run `make bench`, "
                         "which builds it first")
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"broker on {BROKERS}")
    kafka("start")
    events = WORK / "events.jsonl"
    subprocess.run([str(WAYMARK), "loadgen", "--customers", CUSTOMERS, "--seed", "42",
                    "--output", str(events)], check=True, stderr=subprocess.DEVNULL)
    n = sum(1 for _ in open(events))
    log(f"trace: {CUSTOMERS} customers, {n} events")
    rows = []
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    peaks = {}
    if "throughput" in PHASES:
        more, peaks = throughput(events, n)
        rows += more
    if "latency" in PHASES:
        rows += latency(peaks)
    if "timers" in PHASES and TIMER_CUSTOMERS:
        rows += timers()
    if "simulate" in PHASES and SIM_SCALING:
        rows += simulate_scaling(until)
    if "simulate" in PHASES and SIM_ACTIVE_CUSTOMERS:
        rows.append(simulate_at_scale(until, SIM_ACTIVE_CUSTOMERS, SIM_REPEAT_ORDERS))
    if "simulate" in PHASES and SIM_CUSTOMERS:
        rows.append(simulate_at_scale(until, SIM_CUSTOMERS))
    if "recovery" in PHASES:
        rows += recovery(n)
    if "state" in PHASES and STATE_CUSTOMERS:
        rows += state_at_scale()

    title = (f"Waymark bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, broker on "
             f"this machine, trace of {CUSTOMERS} customers / {n} events")
    table = ["| what | result | ratio |", "|---|---|---|"]
    table += [f"| {what} | {result} | {ratio} |" for what, result, ratio in rows]
    print(f"\n{title}\n")
    print("\n".join(table))
    (WORK / "bench.json").write_text(json.dumps(rows, indent=1))
    write_report(title, table, n)
    log(f"logs and configs in {WORK}")


def throughput(events, n):
    """Rows: simulate (the baseline of the ratios), Waymark exactly-once and at-least-once,
    and the Streams baseline, on the bench trace."""
    rows = []
    secs, _, _ = simulate_cpu(events, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sim = n / secs
    rows.append(("simulate (offline baseline)", f"{sim:,.0f} events/s", "1.00"))

    # Per exactly-once round: the CPU split and the commits' share of the run.
    splits = []

    def waymark_throughput(name, guarantee, counted=True, extra=()):
        cfg = config(name, guarantee, extra=extra)
        proc = start(cfg, f"{name}.log")
        t0 = wait(ready, 120, "ready")
        cpu = CpuSplit(proc.pid)
        t1 = wait(lambda: processed() >= n, 900, f"{n} events processed")
        split = cpu.stop()
        text = metrics()
        split["commit_secs"] = metric(text, "waymark_pipeline_commit_duration_seconds_sum")
        split["commits"] = metric(text, "waymark_pipeline_commit_duration_seconds_count")
        split["phases"] = commit_phases(text)
        stop(proc)
        if counted and guarantee == "exactly-once":
            splits.append((n / (t1 - t0), split))
        return n / (t1 - t0)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    log("warm-up runs (not counted)")
    waymark_throughput("warm-up", "exactly-once", counted=False)
    if KSTREAMS:
        kstreams_throughput(n, "kstreams-warm-up")
    eos, ks = [], []
    for r in range(ROUNDS):
        eos.append(waymark_throughput(f"exactly-once-{r}", "exactly-once"))
        log(f"round {r + 1}/{ROUNDS}: waymark exactly-once {eos[-1]:,.0f} events/s")
        if KSTREAMS:
            ks.append(kstreams_throughput(n, f"kstreams-{r}"))
            log(f"round {r + 1}/{ROUNDS}: kafka streams {ks[-1]:,.0f} events/s")
    alo = waymark_throughput("at-least-once", "at-least-once")
    # The same with every customer of the trace kept decoded (no eviction, no read of a
    # customer back from RocksDB): how much of `run` the state cache's misses cost, and so the
    # bound of a faster read path at this size. Not a setting to copy: it holds the whole
    # state decoded in memory (about 2 KiB a customer).
    cached = waymark_throughput("all-cached", "exactly-once", counted=False,
                                extra=(f"cache-capacity: {CUSTOMERS}",))
    log(f"waymark exactly-once, every customer cached: {cached:,.0f} events/s")
    rates = {"exactly-once": median(eos), "at-least-once": alo}
    spread = lambda xs: f" (runs: {', '.join(f'{x:,.0f}' for x in xs)})"
    rows.append((f"run, exactly-once, {PARTITIONS} partitions, median of {ROUNDS}",
                 f"{rates['exactly-once']:,.0f} events/s{spread(eos)}",
                 f"{rates['exactly-once'] / sim:.2f}"))
    rows.append((f"run, at-least-once, {PARTITIONS} partitions", f"{alo:,.0f} events/s",
                 f"{alo / sim:.2f}"))
    rows.append(("exactly-once ÷ at-least-once", "",
                 f"{rates['exactly-once'] / rates['at-least-once']:.2f}"))
    rows.append(("run, exactly-once, every customer kept decoded (`cache-capacity` ≥ the "
                 "trace's customers; the bound without state reads), one run",
                 f"{cached:,.0f} events/s",
                 f"{cached / rates['exactly-once']:.2f} (÷ the median above)"))
    # The median round's split says what bounds `run`: one busy pipeline thread (about one
    # core) with CPU idle is Waymark's own limit; no idle CPU is the machine's.
    _, split = sorted(splits, key=lambda r: r[0])[len(splits) // 2]
    rows.append(("run, exactly-once, median round: CPU (cores) and commits",
                 f"Waymark {split['process']:.2f} ({split['process'] * split['secs'] / n * 1e6:.1f} "
                 f"CPU-µs per event), broker {split['broker']:.2f}, idle "
                 f"{split['idle']:.2f} of {os.cpu_count()}; commits {split['commit_secs']:.2f} s "
                 f"of {split['secs']:.2f} s ({split['commits']:.0f}, mean "
                 f"{split['commit_secs'] / max(split['commits'], 1) * 1000:.0f} ms"
                 f"{': ' + split['phases'] + ' ms' if split['phases'] else ''})",
                 f"{split['commit_secs'] / split['secs']:.2f} (commit share)"))
    # Whether the pipeline thread (the engine, one core at most) waits for work, which a
    # faster rest of Waymark would cut, or for a CPU, which only less work or more cores do.
    rows.append(("run, exactly-once, median round: Waymark's threads", thread_split(split),
                 f"{split['pipeline'][0]:.2f} (pipeline thread on a CPU)"))

    if KSTREAMS:
        k = median(ks)
        rows.append((f"Kafka Streams baseline, exactly-once, {PARTITIONS} partitions, "
                     f"{KSTREAMS_THREADS} threads, median of {ROUNDS}",
                     f"{k:,.0f} events/s{spread(ks)}", f"{k / sim:.2f}"))
        rows.append(("Waymark ÷ Kafka Streams (exactly-once; goal ≥ 3)", "",
                     f"{rates['exactly-once'] / k:.2f}"))
    peaks = {"waymark": rates["exactly-once"]}
    if KSTREAMS:
        peaks["kstreams"] = median(ks)
    return rows, peaks


def recovery(n):
    """Rows: recovery after kill -9 a third of the way through the bench trace, and restore
    from the changelog."""
    rows = []
    # Recovery after kill -9, a third of the way through a fresh backlog.
    cfg = config("recovery", "exactly-once")
    proc = start(cfg, "recovery-1.log")
    wait(ready, 120, "ready")
    wait(lambda: processed() >= n / 3, 900, "a third of the events")
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    proc = start(cfg, "recovery-2.log")
    t_ready = wait(ready, 300, "ready after kill -9")

    def first_output():
        m = metrics()
        return (metric(m, "waymark_pipeline_transactions_total", 'result="committed"') >= 1
                and metric(m, "waymark_engine_journey_events_total") > 0)
    t_out = wait(first_output, 300, "first committed output after kill -9")
    rows.append(("recovery after kill -9: ready", f"{(t_ready - t0) * 1000:,.0f} ms", ""))
    rows.append(("recovery after kill -9: first committed output",
                 f"{(t_out - t0) * 1000:,.0f} ms", ""))
    wait_idle()
    stop(proc)

    # Restore: the state directory is gone; everything comes back from the changelog.
    shutil.rmtree(WORK / "recovery" / "state")
    t0 = time.monotonic()
    proc = start(cfg, "restore.log")
    t_ready = wait(ready, 900, "ready after restore")
    restored = metric(metrics(), "waymark_state_restore_records_total")
    stop(proc)
    secs = t_ready - t0
    rows.append(("restore from the changelog", f"{restored:,.0f} records in {secs:.1f} s",
                 f"{restored / secs:,.0f} records/s"))
    return rows


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


NOTES_MARKER = "## Profile findings"


def write_report(title, table, n):
    """BENCHMARKS.md: the table with the machine, the versions and the commands behind it."""
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kafka_version = re.search(r"^KAFKA_VERSION=(\S+)", (ROOT / "scripts/kafka.sh").read_text(), re.M)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`scripts/bench.py`); numbers from a shared machine are noisy,",
        "so read the ratios between rows of one run, not absolute numbers across runs.",
        "",
        f"## {title}",
        "",
        *table,
        "",
        "## Machine and versions",
        "",
        f"- CPU: {cpu} × {os.cpu_count()}; broker on the same machine",
        f"- {version([str(WAYMARK), '--version'])}, cargo profile `{PROFILE}`",
        f"- {version(['rustc', '--version'])}",
        f"- Apache Kafka {kafka_version.group(1) if kafka_version else 'unknown'} (KRaft, one node, "
        f"log segments of {int(SEGMENT_BYTES) / (1 << 20):,.0f} MiB: BENCH_SEGMENT_BYTES"
        f"{'; Waymark changelog: ' + ', '.join(CHANGELOG_CONFIG) if CHANGELOG_CONFIG else ''}); "
        f"Kafka Streams baseline: {version(['java', '-version'])}",
        "",
        "## How",
        "",
        f"- `waymark loadgen --customers {CUSTOMERS} --seed 42` → {n} events, produced to "
        f"{PARTITIONS} partitions before each run (a backlog);",
        "- throughput: events/s from the processor's ready (Streams: RUNNING) until every event",
        "  is processed; the Kafka Streams baseline is `scripts/bench/kstreams/` (exactly-once v2,",
        "  RocksDB stores), checked equal to `waymark simulate` by `make test`; for the median",
        "  exactly-once round of Waymark, the CPU cores the processor, the broker and nobody",
        "  (idle) used, from /proc, and the share of the run spent in commits (its histogram);",
        "  the share of its wall time the pipeline thread ran, waited for a CPU while runnable",
        "  (its schedstat run-queue time) or waited for work, and the cores of Waymark's threads",
        "  by role (threads that ended meanwhile, the commits', counted together);",
        "  one more exactly-once run with `cache-capacity` at the trace's customer count keeps",
        "  every customer decoded: the bound of `run` without reads of state from RocksDB;",
        "- recovery: `kill -9` a third of the way through, restart, time to ready and to the first",
        "  committed output; restore: the state directory deleted, rebuilt from the changelog.",
        f"- state at scale: `waymark loadgen --customers {STATE_CUSTOMERS} --seed 11 --start <15 days",
        "  ago>` (every customer kept in state), processed once by each (peak RSS of",
        "  the process), then the state directory deleted and restored from the changelog",
        "  (Waymark: to ready; Streams: to RUNNING; both with static group membership);",
        "  Streams runs the trace once more with commit.interval.ms 1000, the interval at",
        "  which Waymark commits while it works off a backlog (backlog-commit-interval-ms).",
        "- latency: the reference journey with its invite email at once (`delay: 0s`) and",
        "  allowed lateness 0 (Streams: `--invite-delay-ms 0 --allowed-lateness-ms 0`), fed by",
        "  `waymark loadgen --live --rate R --arrival-window 60d` (each event stamped with the time",
        "  it is sent) at half of Waymark's peak on that workload: its exactly-once throughput",
        "  over a backlog of the same stream (produced ahead at full speed, sized for 40,000",
        "  events/s or half of the throughput peak; stamped as sent, no timer comes due in it, unlike the",
        "  throughput trace) (Streams also at half of its own peak there, when lower);",
        "  an invite's latency is when `waymark tail --received-at` read it (read_committed) minus",
        f"  its due time, its login's stamp; {LATENCY_SECS} s measured after a {LATENCY_WARMUP} s"
        " warm-up (every command's times are in the run's `-latencies.tsv`); the measured",
        f"  time is also cut into {LATENCY_WINDOW_SECS}-second windows by due time (p50/p99 of each in"
        f" `-windows.tsv`), counting those whose p99 meets {LATENCY_GOAL_MS} ms; Waymark's",
        "  latency is split at its command's Kafka timestamp (`produced_at`), into event →",
        "  produced (handling) and produced → readable (its transaction's commit); over the",
        "  measured time, the cores the engine, the broker and the load generator used.",
        "  With `BENCH_LATENCY_PIN=1` (rows marked \"engine on CPUs … of its own\"), each engine",
        "  runs on half of the CPUs and the broker, load generator and probe on the other half,",
        "  for its peak and its live run alike.",
        f"- timers: {TIMER_CUSTOMERS:,} customers who only logged in, their logins over an hour",
        "  ending 5 minutes (the allowed lateness) before the first invite may fire, about when",
        "  the backlog is processed (`BENCH_TIMER_LOAD_RATE`); invites then come due at that many",
        "  per hour, and a customer whose invite went out waits for its 2-day task, so every",
        f"  customer keeps a pending timer; measured over {TIMER_SECS} s from a minute after the",
        "  backlog was processed; lateness = read (read_committed) − (due time + allowed lateness).",
        "- simulate: `waymark simulate --until <now>` over `waymark loadgen --customers"
        f" {SIM_ACTIVE_CUSTOMERS}",
        f"  --repeat-orders {SIM_REPEAT_ORDERS} --seed 7` (the goal's 10M events over 1M customers)"
        f" and `--customers {SIM_CUSTOMERS}",
        "  --seed 7` (the default traffic; output discarded; CPU is user + system of the process);",
        "  the scaling rows run",
        f"  it with `--threads 1` over `--seed 42` traces of {', '.join(f'{c:,}' for c in SIM_SCALING)}"
        " customers (BENCH_SIM_SCALING), the fastest of three runs each.",
        "- `BENCH_PHASES=throughput,latency,timers,recovery,state,simulate` picks the parts of a run.",
        "- `BENCH_WAYMARK_CONFIG` adds YAML lines to every Waymark config of the run (say",
        "  `cache-capacity: 100000`), to compare a setting on the same machine and trace;",
        "  `BENCH_KAFKA_PROPERTIES` (`key=value,…`) adds librdkafka properties (say `linger.ms=20`);",
        "  `BENCH_CHANGELOG_CONFIG` (`key=value,…`) sets topic configs of Waymark's state changelog",
        "  (`waymark topics create --changelog-config`, say `segment.bytes=67108864`).",
        f"- the binary: cargo profile `{PROFILE}` (`dist`: fat LTO, one codegen unit; "
        "`BENCH_PROFILE=release` measures the tests' build).",
        "- micro-benchmarks of the engine, the state cache and the codec: `make bench-micro`.",
        "",
    ]
    path = Path(os.environ.get("BENCH_REPORT", ROOT / "BENCHMARKS.md"))
    # What people wrote below the generated part (profiles, findings) is kept.
    kept = ""
    if path.exists():
        old = path.read_text()
        at = old.find(NOTES_MARKER)
        if at >= 0:
            kept = old[at:]
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    log(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    finally:
        if os.environ.get("BENCH_KEEP_KAFKA") != "1":
            kafka("stop")
            # Every run creates fresh topics with the whole trace on them (gigabytes over a
            # few runs); the bench broker holds nothing else, so its storage goes too.
            kafka("reset")
