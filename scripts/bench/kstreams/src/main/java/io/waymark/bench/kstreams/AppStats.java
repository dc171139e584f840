package io.waymark.bench.kstreams;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.LongAdder;

/**
 * Counters the status line reports (and scripts wait on), shared by all stream threads.
 * Cheap to update from the hot path: {@link LongAdder}s, and per-task flags written only by
 * the task's own stream thread.
 */
final class AppStats {
    final LongAdder records = new LongAdder();
    final LongAdder rejected = new LongAdder();
    final LongAdder duplicates = new LongAdder();
    final LongAdder late = new LongAdder();
    final LongAdder timersFired = new LongAdder();
    final LongAdder commands = new LongAdder();
    final LongAdder journeyEvents = new LongAdder();
    private final Set<Task> tasks = ConcurrentHashMap.newKeySet();

    /** One open task (input partition). */
    static final class Task {
        volatile boolean caughtUp;
    }

    Task openTask() {
        Task t = new Task();
        tasks.add(t);
        return t;
    }

    void closeTask(Task t) {
        tasks.remove(t);
    }

    int openTasks() {
        return tasks.size();
    }

    int caughtUpTasks() {
        int n = 0;
        for (Task t : tasks) {
            if (t.caughtUp) {
                n++;
            }
        }
        return n;
    }

    /** The consumer's {@code records-lag} of an input partition at its last fetch. */
    interface LagProbe {
        /** The lag, or {@code null} when the consumer reports none (yet) for the partition. */
        Long recordsLag(String topic, int partition);
    }
}
