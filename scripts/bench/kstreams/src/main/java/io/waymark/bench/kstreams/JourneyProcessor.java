package io.waymark.bench.kstreams;

import java.time.Duration;
import java.util.Comparator;
import java.util.TreeSet;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * One task's journey processing (a task is one partition of the input topic, whose values the
 * source node has already decoded): keeps each customer's {@link CustomerState} in the
 * {@code customers} store and the partition's watermark in the {@code watermarks} store (both
 * RocksDB, changelogged, cached), and forwards commands and journey events to the sinks.
 *
 * <p>Timers: each customer's state holds the event time of its next output due
 * ({@link CustomerState#nextDue}); the task keeps an in-memory due-time index of them, rebuilt
 * from the store when the task starts (after a restore, the store is the truth). Whenever the
 * watermark moves, on a record or on the wall-clock punctuator, the due customers are fired at
 * once, as Waymark does. Two alternatives lose: a timer store range-scanned per record (Kafka
 * Streams 4 registers and unregisters an open-iterator metric in JMX for every iterator, which
 * made the scans the main cost), and firing from a stream-time punctuator (it fires up to an
 * interval after the watermark allows, so a late event arriving in between would cancel a
 * command Waymark has already sent: the outputs would differ from Waymark's).
 *
 * <p>The watermark is Waymark's: {@code max(occurredAt seen) − allowed lateness} per partition,
 * advanced further to {@code wall clock − allowed lateness} once the partition is caught up.
 * A timer due at T fires only once the watermark reaches T; records and timers are handled on
 * the stream thread, so a customer's events and timers never race.
 */
final class JourneyProcessor implements Processor<String, Model.CustomerEvent, String, Object> {
    static final String CUSTOMERS = "customers";
    static final String WATERMARKS = "watermarks";
    static final String EMAIL_SINK = "commands-email";
    static final String CONTACT_CENTER_SINK = "commands-contact-center";
    static final String JOURNEY_EVENTS_SINK = "journey-events";

    private final OnboardingJourney journey;
    private final AppStats stats;
    private final AppStats.LagProbe lagProbe;
    private final String inputTopic;
    private final long allowedLateness;
    private final long maxFutureSkew;
    private final Duration caughtUpCheck;

    private ProcessorContext<String, Object> context;
    private KeyValueStore<String, CustomerState> customers;
    private KeyValueStore<Integer, Long> watermarks;
    private int partition;
    private long watermark = Long.MIN_VALUE;
    private long persistedWatermark = Long.MIN_VALUE;
    /** A customer's next output due. */
    private record Timer(long due, String customerId) {}

    /** Every customer of this task with an output due later, by due time. */
    private final TreeSet<Timer> timers =
            new TreeSet<>(Comparator.comparingLong(Timer::due).thenComparing(Timer::customerId));
    private long recordsSinceCheck;
    private boolean caughtUp;
    private AppStats.Task taskStats;
    /** The outputs of the record or timer being handled; the record timestamp to give them. */
    private long outputTimestamp;
    private final OnboardingJourney.Sink sink = new OnboardingJourney.Sink() {
        @Override
        public void command(Model.Command c) {
            String child = c.channel() == Model.Channel.EMAIL ? EMAIL_SINK : CONTACT_CENTER_SINK;
            context.forward(new Record<>(c.customerId(), c, outputTimestamp), child);
            stats.commands.increment();
        }

        @Override
        public void journeyEvent(Model.JourneyEvent e) {
            context.forward(new Record<>(e.customerId(), e, outputTimestamp), JOURNEY_EVENTS_SINK);
            stats.journeyEvents.increment();
        }
    };

    JourneyProcessor(AppStats stats, AppStats.LagProbe lagProbe, String inputTopic, long allowedLateness,
            long maxFutureSkew, Duration caughtUpCheck, long inviteDelay) {
        this.journey = new OnboardingJourney(inviteDelay);
        this.stats = stats;
        this.lagProbe = lagProbe;
        this.inputTopic = inputTopic;
        this.allowedLateness = allowedLateness;
        this.maxFutureSkew = maxFutureSkew;
        this.caughtUpCheck = caughtUpCheck;
    }

    @Override
    public void init(ProcessorContext<String, Object> context) {
        this.context = context;
        customers = context.getStateStore(CUSTOMERS);
        watermarks = context.getStateStore(WATERMARKS);
        partition = context.taskId().partition();
        Long restored = watermarks.get(partition);
        watermark = restored == null ? Long.MIN_VALUE : restored;
        persistedWatermark = watermark;
        try (KeyValueIterator<String, CustomerState> it = customers.all()) {
            while (it.hasNext()) {
                KeyValue<String, CustomerState> kv = it.next();
                if (kv.value.nextDue != CustomerState.NONE) {
                    timers.add(new Timer(kv.value.nextDue, kv.key));
                }
            }
        }
        taskStats = stats.openTask();
        // "Caught up": Kafka Streams has no end-of-partition signal for a running task, so a
        // wall-clock punctuator asks two questions. Did this task get no record since the last
        // check (its buffered records are all processed)? Was the consumer's `records-lag` for
        // the partition 0 at its last fetch (nothing more on the broker, read_committed)? Both
        // yes: the partition is caught up and the wall clock moves its watermark, as Waymark does
        // on end-of-partition. The next record makes it not caught up again.
        context.schedule(caughtUpCheck, PunctuationType.WALL_CLOCK_TIME, this::onWallClock);
    }

    @Override
    public void process(Record<String, Model.CustomerEvent> record) {
        recordsSinceCheck++;
        caughtUp = false;
        taskStats.caughtUp = false;
        stats.records.increment();
        Model.CustomerEvent ev = record.value();
        if (!valid(record.key(), ev)) {
            stats.rejected.increment();
            return;
        }
        outputTimestamp = record.timestamp();
        byte type = OnboardingJourney.typeCode(ev.type());
        if (type >= 0) {
            CustomerState state = customers.get(ev.customerId());
            if (state == null) {
                state = new CustomerState();
            }
            long oldDue = state.nextDue;
            OnboardingJourney.Applied applied = journey.apply(state, ev, type, watermark, sink);
            if (applied != OnboardingJourney.Applied.IGNORED) {
                customers.put(ev.customerId(), state);
                moveTimer(ev.customerId(), oldDue, state.nextDue);
            }
            if (applied == OnboardingJourney.Applied.LATE) {
                stats.late.increment();
            } else if (applied == OnboardingJourney.Applied.DUPLICATE) {
                stats.duplicates.increment();
            }
        }
        advanceTo(ev.occurredAt() - allowedLateness);
    }

    /** What Waymark refuses (dead-letters): missing ids or type, a key that is not the customer, a future time. */
    private boolean valid(String key, Model.CustomerEvent ev) {
        return ev != null
                && !ev.customerId().isBlank()
                && !ev.eventId().isBlank()
                && !ev.type().isBlank()
                && (key == null || key.equals(ev.customerId()))
                && ev.occurredAt() <= context.currentSystemTimeMs() + maxFutureSkew;
    }

    private void onWallClock(long now) {
        persistWatermark();
        boolean idle = recordsSinceCheck == 0;
        recordsSinceCheck = 0;
        if (!idle) {
            return;
        }
        if (!caughtUp) {
            Long lag = lagProbe.recordsLag(inputTopic, partition);
            caughtUp = lag != null && lag == 0;
            taskStats.caughtUp = caughtUp;
        }
        if (caughtUp) {
            outputTimestamp = now;
            advanceTo(now - allowedLateness);
            persistWatermark();
        }
    }

    /**
     * Stores the watermark, once a second rather than per record: after a restart it only has
     * to be a lower bound (a lower watermark fires timers later, never wrongly).
     */
    private void persistWatermark() {
        if (watermark != persistedWatermark) {
            watermarks.put(partition, watermark);
            persistedWatermark = watermark;
        }
    }

    /** Moves the watermark forward (never back) and fires every customer whose timer is due. */
    private void advanceTo(long to) {
        if (to <= watermark) {
            return;
        }
        watermark = to;
        Timer first;
        while ((first = timers.isEmpty() ? null : timers.first()) != null && first.due() <= to) {
            timers.pollFirst();
            CustomerState state = customers.get(first.customerId());
            if (state == null) {
                continue;
            }
            journey.advance(state, first.customerId(), to, sink);
            customers.put(first.customerId(), state);
            stats.timersFired.increment();
            if (state.nextDue != CustomerState.NONE) {
                // Always after the watermark: advance() emitted everything up to it.
                timers.add(new Timer(state.nextDue, first.customerId()));
            }
        }
    }

    private void moveTimer(String customerId, long oldDue, long newDue) {
        if (oldDue == newDue) {
            return;
        }
        if (oldDue != CustomerState.NONE) {
            timers.remove(new Timer(oldDue, customerId));
        }
        if (newDue != CustomerState.NONE) {
            timers.add(new Timer(newDue, customerId));
        }
    }

    @Override
    public void close() {
        stats.closeTask(taskStats);
    }
}
