package io.waymark.bench.kstreams;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One customer's state in the journey: the events that matter to it (sorted by
 * {@code (occurredAt, eventId)}, unique by event id), the profile attributes with the event time
 * that set them, which outputs were emitted, and when the customer is due next.
 *
 * <p>Everything the journey decides is derived from the sorted events, so any arrival order of
 * the same events yields the same outputs. Stored in a RocksDB key-value store (changelogged)
 * with the compact binary {@link #SERDE}.
 */
final class CustomerState {
    /** An event kept in the state. {@code productLine} only for orders. */
    record StoredEvent(long at, String eventId, byte type, String productLine) {}

    /** One value of a profile attribute and the event that set it. */
    record ProfileValue(long at, String eventId, String value) {}

    /** No output due. */
    static final long NONE = Long.MIN_VALUE;

    final List<StoredEvent> events = new ArrayList<>(8);
    /** Per attribute of {@link OnboardingJourney#PROFILE}: values sorted by (at, eventId). */
    @SuppressWarnings({"unchecked", "rawtypes"})
    final List<ProfileValue>[] profile = new List[OnboardingJourney.PROFILE.length];
    /** Bit set of the outputs already emitted (see {@link OnboardingJourney}). */
    int emitted;
    /** Event time of the next output due, or {@link #NONE}. */
    long nextDue = NONE;
    int duplicates;
    int lateEvents;

    CustomerState() {
        for (int i = 0; i < profile.length; i++) {
            profile[i] = new ArrayList<>(2);
        }
    }

    boolean hasEvent(String eventId) {
        for (StoredEvent e : events) {
            if (e.eventId().equals(eventId)) {
                return true;
            }
        }
        return false;
    }

    /** Orders events by event time, then event id (ties broken as Waymark does). */
    static int compare(long at, String id, long otherAt, String otherId) {
        int c = Long.compare(at, otherAt);
        return c != 0 ? c : id.compareTo(otherId);
    }

    /** The binary form in the state store (and its changelog). */
    static final Serde<CustomerState> SERDE = Serdes.serdeFrom(new StateSerializer(), new StateDeserializer());

    private static final byte FORMAT = 1;

    private static final class StateSerializer implements Serializer<CustomerState> {
        @Override
        public byte[] serialize(String topic, CustomerState s) {
            if (s == null) {
                return null;
            }
            Out out = new Out();
            out.buf.put(FORMAT);
            out.buf.putInt(s.emitted);
            out.buf.putLong(s.nextDue);
            out.buf.putInt(s.duplicates);
            out.buf.putInt(s.lateEvents);
            out.buf.putShort((short) s.events.size());
            for (StoredEvent e : s.events) {
                out.ensure(16);
                out.buf.putLong(e.at());
                out.buf.put(e.type());
                out.string(e.eventId());
                out.string(e.productLine());
            }
            for (List<ProfileValue> values : s.profile) {
                out.ensure(2);
                out.buf.put((byte) values.size());
                for (ProfileValue v : values) {
                    out.ensure(8);
                    out.buf.putLong(v.at());
                    out.string(v.eventId());
                    out.string(v.value());
                }
            }
            return Arrays.copyOf(out.buf.array(), out.buf.position());
        }
    }

    private static final class StateDeserializer implements Deserializer<CustomerState> {
        @Override
        public CustomerState deserialize(String topic, byte[] bytes) {
            if (bytes == null) {
                return null;
            }
            ByteBuffer in = ByteBuffer.wrap(bytes);
            if (in.get() != FORMAT) {
                throw new SerializationException("customer state of an unknown format in " + topic + "; delete the state directory and the application's changelog topics");
            }
            CustomerState s = new CustomerState();
            s.emitted = in.getInt();
            s.nextDue = in.getLong();
            s.duplicates = in.getInt();
            s.lateEvents = in.getInt();
            int n = in.getShort() & 0xffff;
            for (int i = 0; i < n; i++) {
                long at = in.getLong();
                byte type = in.get();
                String id = string(in);
                s.events.add(new StoredEvent(at, id, type, string(in)));
            }
            for (List<ProfileValue> values : s.profile) {
                int m = in.get() & 0xff;
                for (int i = 0; i < m; i++) {
                    long at = in.getLong();
                    String id = string(in);
                    values.add(new ProfileValue(at, id, string(in)));
                }
            }
            return s;
        }

        private static String string(ByteBuffer in) {
            int len = in.getInt();
            if (len < 0) {
                return null;
            }
            String s = new String(in.array(), in.position(), len, StandardCharsets.UTF_8);
            in.position(in.position() + len);
            return s;
        }
    }

    /** A growable buffer. */
    private static final class Out {
        ByteBuffer buf = ByteBuffer.allocate(256);

        void ensure(int n) {
            if (buf.remaining() < n) {
                ByteBuffer bigger = ByteBuffer.allocate(Math.max(buf.capacity() * 2, buf.position() + n));
                buf.flip();
                bigger.put(buf);
                buf = bigger;
            }
        }

        void string(String s) {
            if (s == null) {
                ensure(4);
                buf.putInt(-1);
                return;
            }
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            ensure(4 + b.length);
            buf.putInt(b.length);
            buf.put(b);
        }
    }
}
