package io.waymark.bench.kstreams;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.state.Stores;

/**
 * The reference onboarding journey on Kafka Streams: Waymark's peer baseline for
 * {@code make bench}, and the subject of {@code make kstreams-check}, which compares its
 * output with {@code waymark simulate}'s.
 *
 * <p>Reads Avro {@code CustomerEvent}s (raw datums) keyed by customer id, runs the journey with
 * the Processor API over persistent, changelogged, cached RocksDB stores, and writes Avro
 * {@code InterventionCommand}s and {@code JourneyEvent}s (raw datums) keyed by customer id to
 * topics named as Waymark's, so {@code waymark tail} decodes them. Exactly-once v2 by default.
 *
 * <p>Prints a status line to stderr every {@code --status-interval-ms}:
 * {@code kstreams: status state=RUNNING records=N ... tasks=T caught-up=C}.
 */
public final class OnboardingApp {
    private OnboardingApp() {}

    private static final String USAGE = """
            Usage: java -cp JAR:LIB/* io.waymark.bench.kstreams.OnboardingApp [OPTIONS]

            The reference onboarding journey (deploy/journeys/b2b-onboarding.yaml) on Kafka Streams.

            Options (defaults in brackets)
              --bootstrap-servers HOST:PORT   Kafka bootstrap servers [127.0.0.1:9092]
              --application-id ID             Streams application id: consumer group, transactional ids,
                                              changelog topic prefix [waymark-kstreams-onboarding]
              --topic-prefix P                prepended to every topic name below []
              --topic-suffix S                appended to every topic name below, e.g. .bench-1 []
              --input-topic T                 [customer-events]
              --email-topic T                 [commands.email]
              --contact-center-topic T        [commands.contact-center]
              --journey-events-topic T        [journey-events]
              --schemas DIR                   the repository's schemas/ directory [schemas]
              --state-dir DIR                 RocksDB state directory [/tmp/kafka-streams]
              --threads N                     stream threads [1]
              --group-instance-id ID          static group membership: a restart takes its
                                              partitions back without waiting for the session
                                              timeout [none]
              --processing-guarantee G        exactly_once_v2 or at_least_once [exactly_once_v2]
              --allowed-lateness-ms MS        watermark = newest event time - this [300000, Waymark's default]
              --invite-delay-ms MS            the invite email's delay after the login [3600000, the
                                              reference journey's 1h; 0 makes it an immediate action]
              --caught-up-check-ms MS         wall-clock punctuation interval of the caught-up check [1000]
              --status-interval-ms MS         status line interval [1000]
              --commit-interval-ms MS         commit.interval.ms [Kafka Streams' default: 100 under exactly-once]
              --exit-when-idle SECONDS        exit (committing) once every task is caught up and nothing
                                              was processed or emitted for this long [never]
            """;

    public static void main(String[] argv) throws Exception {
        Map<String, String> opts = parseArgs(argv);
        String prefix = opts.getOrDefault("topic-prefix", "");
        String suffix = opts.getOrDefault("topic-suffix", "");
        String input = prefix + opts.getOrDefault("input-topic", "customer-events") + suffix;
        String email = prefix + opts.getOrDefault("email-topic", "commands.email") + suffix;
        String contactCenter = prefix + opts.getOrDefault("contact-center-topic", "commands.contact-center") + suffix;
        String journeyEvents = prefix + opts.getOrDefault("journey-events-topic", "journey-events") + suffix;
        Path schemas = Path.of(opts.getOrDefault("schemas", "schemas"));
        if (!Files.isDirectory(schemas)) {
            die("--schemas " + schemas + " is not a directory; pass the repository's schemas/ directory");
        }
        long lateness = longOpt(opts, "allowed-lateness-ms", 300_000);
        long caughtUpCheck = longOpt(opts, "caught-up-check-ms", 1000);
        long inviteDelay = longOpt(opts, "invite-delay-ms", OnboardingJourney.INVITE_DELAY);
        if (inviteDelay < 0) {
            die("--invite-delay-ms must be 0 or more, not " + inviteDelay);
        }
        long statusInterval = longOpt(opts, "status-interval-ms", 1000);
        long exitWhenIdle = longOpt(opts, "exit-when-idle", -1);
        String guarantee = opts.getOrDefault("processing-guarantee", StreamsConfig.EXACTLY_ONCE_V2);
        if (!guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) && !guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            die("--processing-guarantee must be exactly_once_v2 or at_least_once, not " + guarantee);
        }

        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, opts.getOrDefault("bootstrap-servers", "127.0.0.1:9092"));
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, opts.getOrDefault("application-id", "waymark-kstreams-onboarding"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, opts.getOrDefault("state-dir", "/tmp/kafka-streams"));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, (int) longOpt(opts, "threads", 1));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        // Everything else is Kafka Streams' defaults, as a Streams user would run it: commit
        // every 100 ms under exactly-once (unless --commit-interval-ms), 10 MB of record cache in front of the stores, the
        // producer's batching (linger.ms 100 under Streams), RocksDB's default options.
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        if (opts.containsKey("commit-interval-ms")) {
            props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, longOpt(opts, "commit-interval-ms", 100));
        }
        if (opts.containsKey("group-instance-id")) {
            props.put(StreamsConfig.consumerPrefix("group.instance.id"), opts.get("group-instance-id"));
        }

        AvroSerdes avro = new AvroSerdes(schemas);
        AppStats stats = new AppStats();
        AtomicReference<KafkaStreams> running = new AtomicReference<>();
        AppStats.LagProbe lag = (topic, partition) -> recordsLag(running.get(), topic, partition);
        Duration check = Duration.ofMillis(caughtUpCheck);

        Topology topology = new Topology();
        topology.addSource("customer-events", Serdes.String().deserializer(), avro.customerEventDeserializer(), input);
        topology.addProcessor("journey",
                () -> new JourneyProcessor(stats, lag, input, lateness, 86_400_000L, check, inviteDelay), "customer-events");
        topology.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(JourneyProcessor.CUSTOMERS), Serdes.String(), CustomerState.SERDE)
                .withCachingEnabled(), "journey");
        topology.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(JourneyProcessor.WATERMARKS), Serdes.Integer(), Serdes.Long())
                .withCachingEnabled(), "journey");
        topology.addSink(JourneyProcessor.EMAIL_SINK, email, Serdes.String().serializer(), avro.commandSerializer(), "journey");
        topology.addSink(JourneyProcessor.CONTACT_CENTER_SINK, contactCenter, Serdes.String().serializer(), avro.commandSerializer(), "journey");
        topology.addSink(JourneyProcessor.JOURNEY_EVENTS_SINK, journeyEvents, Serdes.String().serializer(), avro.journeyEventSerializer(), "journey");

        KafkaStreams streams = new KafkaStreams(topology, props);
        running.set(streams);
        CountDownLatch done = new CountDownLatch(1);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        streams.setUncaughtExceptionHandler(e -> {
            failure.set(e);
            done.countDown();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            log("state " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        Thread hook = new Thread(() -> {
            streams.close(Duration.ofSeconds(60));
        }, "shutdown");
        Runtime.getRuntime().addShutdownHook(hook);
        log("topology: " + input + " -> " + email + ", " + contactCenter + ", " + journeyEvents + " (" + guarantee + ")");
        streams.start();

        long lastChange = System.nanoTime();
        long lastSum = -1;
        while (!done.await(statusInterval, TimeUnit.MILLISECONDS)) {
            long records = stats.records.sum();
            long commands = stats.commands.sum();
            long jevents = stats.journeyEvents.sum();
            int tasks = stats.openTasks();
            int caughtUp = stats.caughtUpTasks();
            log(String.format("status state=%s records=%d rejected=%d duplicates=%d late=%d timers-fired=%d commands=%d journey-events=%d tasks=%d caught-up=%d",
                    streams.state(), records, stats.rejected.sum(), stats.duplicates.sum(), stats.late.sum(),
                    stats.timersFired.sum(), commands, jevents, tasks, caughtUp));
            long sum = records + commands + jevents;
            if (sum != lastSum) {
                lastSum = sum;
                lastChange = System.nanoTime();
            }
            boolean idle = streams.state() == KafkaStreams.State.RUNNING && tasks > 0 && caughtUp == tasks
                    && System.nanoTime() - lastChange >= TimeUnit.SECONDS.toNanos(exitWhenIdle);
            if (exitWhenIdle >= 0 && idle) {
                log("idle: every task caught up, nothing processed or emitted for " + exitWhenIdle + "s; closing");
                break;
            }
        }
        Runtime.getRuntime().removeShutdownHook(hook);
        streams.close(Duration.ofSeconds(60));
        if (failure.get() != null) {
            log("failed: " + failure.get());
            failure.get().printStackTrace();
            System.exit(1);
        }
        if (streams.state() == KafkaStreams.State.ERROR) {
            System.exit(1);
        }
    }

    /**
     * The {@code records-lag} the consumer measured for {@code topic}/{@code partition} at its
     * last fetch. Consumer metrics spell dots in topic names as underscores in their tags.
     */
    static Long recordsLag(KafkaStreams streams, String topic, int partition) {
        if (streams == null) {
            return null;
        }
        String p = Integer.toString(partition);
        String alt = topic.replace('.', '_');
        for (Map.Entry<MetricName, ? extends Metric> e : streams.metrics().entrySet()) {
            MetricName n = e.getKey();
            if (!n.name().equals("records-lag") || !n.group().equals("consumer-fetch-manager-metrics")) {
                continue;
            }
            String t = n.tags().get("topic");
            if (p.equals(n.tags().get("partition")) && (topic.equals(t) || alt.equals(t))) {
                Object v = e.getValue().metricValue();
                if (v instanceof Number num && !Double.isNaN(num.doubleValue())) {
                    return (long) num.doubleValue();
                }
            }
        }
        return null;
    }

    private static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> opts = new LinkedHashMap<>();
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (a.equals("-h") || a.equals("--help")) {
                System.out.print(USAGE);
                System.exit(0);
            }
            if (!a.startsWith("--") || i + 1 >= argv.length) {
                die("unexpected argument `" + a + "` (options take a value: --name VALUE)\n\n" + USAGE);
            }
            String name = a.substring(2);
            if (!USAGE.contains("--" + name + " ")) {
                die("unknown option --" + name + "\n\n" + USAGE);
            }
            opts.put(name, argv[++i]);
        }
        return opts;
    }

    private static long longOpt(Map<String, String> opts, String name, long dflt) {
        String v = opts.get(name);
        if (v == null) {
            return dflt;
        }
        try {
            return Long.parseLong(v);
        } catch (NumberFormatException e) {
            die("--" + name + " must be a whole number, not `" + v + "`");
            return dflt;
        }
    }

    static void log(String msg) {
        System.err.println("kstreams: " + msg);
    }

    private static void die(String msg) {
        System.err.println("kstreams: " + msg);
        System.exit(2);
    }
}
