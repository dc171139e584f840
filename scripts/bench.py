#!/usr/bin/env python3
"""`make bench`: Waymark's throughput, recovery and restore figures on this machine.

Runs against a real broker (started by scripts/kafka.sh on BENCH_KAFKA_PORT, default 29092)
with one loadgen trace (BENCH_CUSTOMERS customers, default 50000), and prints a table:

  * `waymark simulate` throughput (the offline baseline every other figure is compared with);
  * `waymark run` throughput with processing-guarantee exactly-once, then at-least-once, on
    the same trace (fresh topics each);
  * the peer baseline: the same journey as a Kafka Streams application
    (scripts/bench/kstreams/, exactly-once v2, BENCH_KSTREAMS_THREADS stream threads, default
    2 = this machine's cores), on the same broker, trace and partition count, with Waymark's
    exactly-once throughput divided by its; BENCH_KSTREAMS=0 skips it. After one uncounted
    warm-up run of each, Waymark and the baseline run alternately BENCH_ROUNDS times (default
    3) and the table shows the medians, with every run;
  * recovery after `kill -9` mid-run: time from the restart to ready, and to the first
    committed transaction that carries output;
  * restore: the state directory deleted, time and records/s to rebuild it from the changelog;
  * state at scale (BENCH_STATE_CUSTOMERS customers, default 1,000,000; 0 skips it): Waymark
    and the Streams baseline each process that trace once (exactly-once), then restore their
    state from the changelog with the state directory deleted; the table shows each one's
    throughput, peak RSS and restore time, and Waymark's ratio to the baseline; Streams
    also runs the trace with commit.interval.ms 1000, Waymark's backlog-commit-interval-ms,
    for a comparison at equal commit intervals.

BENCH_PHASES (default `throughput,recovery,state,simulate`) picks the parts to run.

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
WAYMARK = TARGET / "release/waymark"
PORT = int(os.environ.get("BENCH_KAFKA_PORT", "29092"))
BROKERS = f"127.0.0.1:{PORT}"
CUSTOMERS = os.environ.get("BENCH_CUSTOMERS", "50000")
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))
KSTREAMS = os.environ.get("BENCH_KSTREAMS", "1") != "0"
KSTREAMS_THREADS = int(os.environ.get("BENCH_KSTREAMS_THREADS", "2"))
# Waymark (exactly-once) and the Streams baseline run alternately this many times each, after
# one warm-up run of each that is not counted (a fresh broker and a cold JVM are slower);
# the table shows the medians.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# `simulate` at scale: this many customers (2.65M ≈ 10M events); 0 skips it.
SIM_CUSTOMERS = int(os.environ.get("BENCH_SIM_CUSTOMERS", "2650000"))
# State at scale: this many customers for the RSS and restore comparison; 0 skips it.
STATE_CUSTOMERS = int(os.environ.get("BENCH_STATE_CUSTOMERS", "1000000"))
PHASES = set(os.environ.get("BENCH_PHASES", "throughput,recovery,state,simulate").split(","))
HTTP = "127.0.0.1:19464"
RUN_ID = time.strftime("%Y%m%d%H%M%S")
WORK = ROOT / ".waymark" / f"bench-{RUN_ID}"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def kafka(cmd):
    env = dict(os.environ, KAFKA_PORT=str(PORT), KAFKA_CONTROLLER_PORT=str(PORT + 1))
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


def ready():
    try:
        with urllib.request.urlopen(f"http://{HTTP}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def config(name, guarantee, trace=None):
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
        f"  group-instance-id: {suffix}", "topics:",
        *[f"  {k}: {v}" for k, v in topics.items()],
        f"journeys: {ROOT / 'deploy/journeys/b2b-onboarding.yaml'}",
        f"state-dir: {WORK / name / 'state'}", f"http-addr: {HTTP}",
        f"processing-guarantee: {guarantee}",
    ]
    path.write_text("\n".join(lines) + "\n")
    subprocess.run([str(WAYMARK), "--config", str(path), "topics", "create", "--brokers",
                    BROKERS, "--partitions", str(PARTITIONS)], check=True,
                   stderr=subprocess.DEVNULL)
    subprocess.run([str(WAYMARK), "produce", "--brokers", BROKERS, "--topic",
                    topics["customer-events"], str(trace or WORK / "events.jsonl")], check=True,
                   stderr=subprocess.DEVNULL)
    return path


def start(cfg, logname):
    logf = open(WORK / logname, "w")
    return subprocess.Popen([str(WAYMARK), "--config", str(cfg), "run"], stdout=subprocess.DEVNULL,
                            stderr=logf)


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def processed():
    return metric(metrics(), "waymark_pipeline_events_total")


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
    proc, status = kstreams_start(name)
    try:
        t0 = wait(lambda: status().get("state") == "RUNNING", 180, "Kafka Streams RUNNING")
        t1 = wait(lambda: int(status().get("records", "0")) >= n, 1800,
                  f"{n} events processed by Kafka Streams")
    finally:
        stop(proc)
    return n / (t1 - t0)


def kstreams_start(name, logname=None, extra=()):
    """Starts the Kafka Streams baseline on the topics of `config(name, ...)` (with `extra`
    arguments): the process and a function returning its last status line (failing if it
    exited)."""
    classpath = subprocess.run(["bash", str(ROOT / "scripts/bench/kstreams/build.sh")],
                               check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    suffix = f"bench-{RUN_ID}-{name}"
    logpath = WORK / (logname or f"{name}.log")
    logf = open(logpath, "w")
    proc = subprocess.Popen(
        ["java", "-Xmx1g", "-cp", classpath, "io.waymark.bench.kstreams.OnboardingApp",
         "--bootstrap-servers", BROKERS, "--application-id", suffix, "--topic-suffix", f".{suffix}",
         "--schemas", str(ROOT / "schemas"), "--state-dir", str(WORK / name / "state"),
         "--threads", str(KSTREAMS_THREADS), "--processing-guarantee", "exactly_once_v2",
         # Static membership, as Waymark's: a restart takes its partitions back at once.
         "--group-instance-id", suffix,
         "--status-interval-ms", "100", *extra],
        stdout=subprocess.DEVNULL, stderr=logf)

    def status():
        if proc.poll() is not None:
            raise SystemExit(f"bench: the Kafka Streams baseline exited (log {logpath})")
        return kstreams_status(logpath)
    return proc, status


def state_at_scale():
    """Waymark and the Streams baseline over a trace of STATE_CUSTOMERS customers: each
    processes it once (exactly-once), then restores its state from the changelog with the
    state directory deleted. Rows: throughput, peak RSS and restore time of each, and ratios."""
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
        f"restore {w_restore:.1f} s; Kafka Streams")
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
    what = f"{STATE_CUSTOMERS:,} customers / {n:,} events"
    return [
        (f"state at scale, {what}: Waymark run, exactly-once",
         f"{w_rate:,.0f} events/s, peak RSS {w_rss:,.0f} MiB, {keys:,.0f} state keys", ""),
        (f"state at scale: Kafka Streams baseline, exactly-once",
         f"{k_rate:,.0f} events/s, peak RSS {k_rss:,.0f} MiB (JVM, -Xmx1g)", ""),
        ("state at scale: Waymark ÷ Kafka Streams throughput; peak RSS", "",
         f"{w_rate / k_rate:.2f}; {w_rss / k_rss:.2f}"),
        ("state at scale: Kafka Streams baseline, exactly-once, commit.interval.ms 1000",
         f"{k_rate_1s:,.0f} events/s", ""),
        ("state at scale: Waymark ÷ Kafka Streams at commit.interval.ms 1000 (Waymark's "
         "backlog-commit-interval-ms)", "", f"{w_rate / k_rate_1s:.2f}"),
        ("state at scale: restore from the changelog, Waymark",
         f"{restored:,.0f} records in {w_restore:.1f} s, peak RSS {w_restore_rss:,.0f} MiB",
         f"{restored / w_restore:,.0f} records/s"),
        ("state at scale: restore, Kafka Streams (state directory deleted → RUNNING)",
         f"{k_restore:.1f} s", ""),
        ("state at scale: Waymark ÷ Kafka Streams restore time", "",
         f"{w_restore / k_restore:.2f}"),
    ]


def simulate_at_scale(until):
    """`simulate` over a large loadgen trace (goal: 10M events over 1M customers in ≤ 20 s):
    time, events/s and the process's peak RSS."""
    big = WORK / "big.jsonl"
    log(f"simulate at scale: generating {SIM_CUSTOMERS:,} customers")
    subprocess.run([str(WAYMARK), "loadgen", "--customers", str(SIM_CUSTOMERS), "--seed", "7",
                    "--output", str(big)], check=True, stderr=subprocess.DEVNULL)
    events = sum(1 for _ in open(big))
    t = time.monotonic()
    proc = subprocess.Popen([str(WAYMARK), "simulate", "--journeys",
                             str(ROOT / "deploy/journeys/b2b-onboarding.yaml"), "--events",
                             str(big), "--until", until], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.monotonic() - t
    if status != 0:
        raise SystemExit(f"bench: simulate over {big} failed")
    big.unlink()
    rss_mib = usage.ru_maxrss / 1024
    return (f"simulate, {SIM_CUSTOMERS:,} customers / {events:,} events (goal 10M in ≤ 20 s)",
            f"{secs:.1f} s, {events / secs:,.0f} events/s, peak RSS {rss_mib:,.0f} MiB", "")


def main():
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
    if "throughput" in PHASES:
        rows += throughput(events, n)
    if "simulate" in PHASES and SIM_CUSTOMERS:
        rows.append(simulate_at_scale(until))
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
    t = time.monotonic()
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    subprocess.run([str(WAYMARK), "simulate", "--journeys",
                    str(ROOT / "deploy/journeys/b2b-onboarding.yaml"), "--events", str(events),
                    "--until", until], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    sim = n / (time.monotonic() - t)
    rows.append(("simulate (offline baseline)", f"{sim:,.0f} events/s", "1.00"))

    def waymark_throughput(name, guarantee):
        cfg = config(name, guarantee)
        proc = start(cfg, f"{name}.log")
        t0 = wait(ready, 120, "ready")
        t1 = wait(lambda: processed() >= n, 900, f"{n} events processed")
        stop(proc)
        return n / (t1 - t0)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    log("warm-up runs (not counted)")
    waymark_throughput("warm-up", "exactly-once")
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
    rates = {"exactly-once": median(eos), "at-least-once": alo}
    spread = lambda xs: f" (runs: {', '.join(f'{x:,.0f}' for x in xs)})"
    rows.append((f"run, exactly-once, {PARTITIONS} partitions, median of {ROUNDS}",
                 f"{rates['exactly-once']:,.0f} events/s{spread(eos)}",
                 f"{rates['exactly-once'] / sim:.2f}"))
    rows.append((f"run, at-least-once, {PARTITIONS} partitions", f"{alo:,.0f} events/s",
                 f"{alo / sim:.2f}"))
    rows.append(("exactly-once ÷ at-least-once", "",
                 f"{rates['exactly-once'] / rates['at-least-once']:.2f}"))

    if KSTREAMS:
        k = median(ks)
        rows.append((f"Kafka Streams baseline, exactly-once, {PARTITIONS} partitions, "
                     f"{KSTREAMS_THREADS} threads, median of {ROUNDS}",
                     f"{k:,.0f} events/s{spread(ks)}", f"{k / sim:.2f}"))
        rows.append(("Waymark ÷ Kafka Streams (exactly-once; goal ≥ 3)", "",
                     f"{rates['exactly-once'] / k:.2f}"))
    return rows


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
        f"- {version([str(WAYMARK), '--version'])}",
        f"- {version(['rustc', '--version'])}",
        f"- Apache Kafka {kafka_version.group(1) if kafka_version else 'unknown'} (KRaft, one node); "
        f"Kafka Streams baseline: {version(['java', '-version'])}",
        "",
        "## How",
        "",
        f"- `waymark loadgen --customers {CUSTOMERS} --seed 42` → {n} events, produced to "
        f"{PARTITIONS} partitions before each run (a backlog);",
        "- throughput: events/s from the processor's ready (Streams: RUNNING) until every event",
        "  is processed; the Kafka Streams baseline is `scripts/bench/kstreams/` (exactly-once v2,",
        "  RocksDB stores), checked equal to `waymark simulate` by `make test`;",
        "- recovery: `kill -9` a third of the way through, restart, time to ready and to the first",
        "  committed output; restore: the state directory deleted, rebuilt from the changelog.",
        f"- state at scale: `waymark loadgen --customers {STATE_CUSTOMERS} --seed 11 --start <15 days",
        "  ago>` (every customer kept in state), processed once by each (peak RSS of",
        "  the process), then the state directory deleted and restored from the changelog",
        "  (Waymark: to ready; Streams: to RUNNING; both with static group membership);",
        "  Streams runs the trace once more with commit.interval.ms 1000, the interval at",
        "  which Waymark commits while it works off a backlog (backlog-commit-interval-ms).",
        "- `BENCH_PHASES=throughput,recovery,state,simulate` picks the parts of a run.",
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
