package io.waymark.bench.kstreams;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serializer;

/**
 * Avro (de)serializers for Waymark's topics, from the schemas in the repository's
 * {@code schemas/} directory (read at start-up: they are the single source of truth).
 *
 * <p>Values are raw Avro datums in binary encoding, no header (Waymark's framing without a
 * schema registry): the reader's schema is the writer's. Kafka Streams shares one
 * (de)serializer instance between all tasks of a topology, so the reusable buffers, encoders
 * and decoders live in thread-locals, one set per stream thread.
 */
final class AvroSerdes {
    final Schema customerEvent;
    final Schema command;
    final Schema journeyEvent;
    private final Schema channelEnum;
    private final Schema journeyEventTypeEnum;

    AvroSerdes(Path schemaDir) throws IOException {
        customerEvent = parse(schemaDir, "customer_event.avsc");
        command = parse(schemaDir, "intervention_command.avsc");
        journeyEvent = parse(schemaDir, "journey_event.avsc");
        channelEnum = command.getField("channel").schema();
        journeyEventTypeEnum = journeyEvent.getField("type").schema();
    }

    private static Schema parse(Path dir, String file) throws IOException {
        Path path = dir.resolve(file);
        try {
            return new Schema.Parser().parse(Files.readString(path));
        } catch (IOException e) {
            throw new IOException("cannot read the Avro schema " + path + " (is --schemas the repository's schemas/ directory?): " + e, e);
        }
    }

    /** Reads {@code CustomerEvent} values. */
    Deserializer<Model.CustomerEvent> customerEventDeserializer() {
        ThreadLocal<GenericDatumReader<GenericRecord>> readers =
                ThreadLocal.withInitial(() -> new GenericDatumReader<>(customerEvent));
        ThreadLocal<BinaryDecoder[]> decoders = ThreadLocal.withInitial(() -> new BinaryDecoder[1]);
        ThreadLocal<GenericRecord[]> reuse = ThreadLocal.withInitial(() -> new GenericRecord[1]);
        return (topic, bytes) -> {
            if (bytes == null) {
                return null;
            }
            try {
                BinaryDecoder[] d = decoders.get();
                d[0] = DecoderFactory.get().binaryDecoder(bytes, d[0]);
                GenericRecord[] r = reuse.get();
                r[0] = readers.get().read(r[0], d[0]);
                GenericRecord rec = r[0];
                Map<?, ?> raw = (Map<?, ?>) rec.get("attributes");
                Map<String, String> attrs = new HashMap<>(raw.size() * 2);
                for (Map.Entry<?, ?> e : raw.entrySet()) {
                    attrs.put(e.getKey().toString(), e.getValue().toString());
                }
                return new Model.CustomerEvent(
                        rec.get("event_id").toString(),
                        rec.get("customer_id").toString(),
                        rec.get("type").toString(),
                        (Long) rec.get("occurred_at"),
                        attrs);
            } catch (IOException | RuntimeException e) {
                throw new SerializationException(
                        "a value on " + topic + " is not an Avro CustomerEvent datum (schemas/customer_event.avsc): " + e, e);
            }
        };
    }

    /** Writes {@code InterventionCommand} values. */
    Serializer<Model.Command> commandSerializer() {
        Writer w = new Writer(command);
        return (topic, c) -> {
            if (c == null) {
                return null;
            }
            GenericData.Record r = new GenericData.Record(command);
            r.put("command_id", c.commandId());
            r.put("journey", c.journey());
            r.put("journey_version", c.journeyVersion());
            r.put("customer_id", c.customerId());
            r.put("instance", c.instance());
            r.put("rule", c.rule());
            r.put("action", c.action());
            r.put("channel", new GenericData.EnumSymbol(channelEnum, c.channel().avroSymbol));
            r.put("due_at", c.dueAt());
            r.put("template", c.template());
            r.put("variant", null);
            r.put("params", c.params());
            r.put("attributes", c.attributes());
            return w.write(topic, r);
        };
    }

    /** Writes {@code JourneyEvent} values. */
    Serializer<Model.JourneyEvent> journeyEventSerializer() {
        Writer w = new Writer(journeyEvent);
        return (topic, e) -> {
            if (e == null) {
                return null;
            }
            GenericData.Record r = new GenericData.Record(journeyEvent);
            r.put("journey_event_id", e.journeyEventId());
            r.put("journey", e.journey());
            r.put("journey_version", e.journeyVersion());
            r.put("customer_id", e.customerId());
            r.put("instance", e.instance());
            r.put("type", new GenericData.EnumSymbol(journeyEventTypeEnum, e.type()));
            r.put("step", e.step());
            r.put("at", e.at());
            r.put("command_id", e.commandId());
            r.put("action", e.action());
            r.put("reason", null);
            r.put("variant", null);
            return w.write(topic, r);
        };
    }

    /** A datum writer with a per-thread output buffer and encoder. */
    private static final class Writer {
        private final GenericDatumWriter<GenericRecord> writer;
        private final ThreadLocal<ByteArrayOutputStream> buffers =
                ThreadLocal.withInitial(() -> new ByteArrayOutputStream(512));
        private final ThreadLocal<BinaryEncoder[]> encoders = ThreadLocal.withInitial(() -> new BinaryEncoder[1]);

        Writer(Schema schema) {
            writer = new GenericDatumWriter<>(schema);
        }

        byte[] write(String topic, GenericRecord record) {
            ByteArrayOutputStream out = buffers.get();
            out.reset();
            BinaryEncoder[] enc = encoders.get();
            enc[0] = EncoderFactory.get().binaryEncoder(out, enc[0]);
            try {
                writer.write(record, enc[0]);
                enc[0].flush();
            } catch (IOException | RuntimeException e) {
                throw new SerializationException("cannot encode a " + record.getSchema().getName() + " for " + topic + ": " + e, e);
            }
            return out.toByteArray();
        }
    }
}
