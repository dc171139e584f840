package io.waymark.bench.kstreams;

import java.util.Map;

/** The records on Waymark's topics, as this application reads and writes them. */
final class Model {
    private Model() {}

    /** A {@code CustomerEvent} read from the input topic. */
    record CustomerEvent(
            String eventId, String customerId, String type, long occurredAt, Map<String, String> attributes) {}

    /** Delivery channels; the Avro symbol of {@code contact-center} is {@code contact_center}. */
    enum Channel {
        EMAIL("email"),
        CONTACT_CENTER("contact_center");

        final String avroSymbol;

        Channel(String avroSymbol) {
            this.avroSymbol = avroSymbol;
        }
    }

    /** An {@code InterventionCommand} for a channel sink. */
    record Command(
            String commandId,
            String journey,
            long journeyVersion,
            String customerId,
            long instance,
            String rule,
            String action,
            Channel channel,
            long dueAt,
            String template,
            Map<String, String> params,
            Map<String, String> attributes) {}

    /** A {@code JourneyEvent} for analytics. {@code type} is the Avro enum symbol. */
    record JourneyEvent(
            String journeyEventId,
            String journey,
            long journeyVersion,
            String customerId,
            long instance,
            String type,
            String step,
            long at,
            String commandId,
            String action) {}
}
