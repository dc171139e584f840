package io.waymark.bench.kstreams;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The reference B2B onboarding journey ({@code deploy/journeys/b2b-onboarding.yaml}), written
 * out by hand as a Kafka Streams user would: no I/O, no clock, no Kafka; the processor feeds it
 * a customer's state, an event and the partition's watermark, and takes the outputs.
 *
 * <p>Semantics as in Waymark's {@code DESIGN.md} "Semantics": steps are completed at the
 * earliest event time of an event completing them, whatever the arrival order; duplicates (same
 * event id) change nothing; an output is emitted once the watermark reaches its event time,
 * and only once (a bit per output in {@link CustomerState#emitted}). The payment-account nudge
 * sends an email at login + 1h, a contact-center assist task at + 2d and a sales-rep call at
 * + 4d, each only if neither the payment account nor the goal was completed strictly before
 * it is due. Every step after the login is abandoned 7 days after its window opens (all earlier
 * steps completed) unless completed before then or the goal ended the journey by then.
 * {@code re-entry: never}: a customer enters once.
 */
final class OnboardingJourney {
    static final String NAME = "b2b-onboarding";
    static final long VERSION = 1;
    static final String VERSION_ID = "1";
    /** {@code re-entry: never}: the only instance. */
    static final long INSTANCE = 1;
    static final String INSTANCE_ID = "1";

    // Event types the journey reacts to.
    static final byte LOGIN = 0;
    static final byte PAYMENT_ACCOUNT = 1;
    static final byte FINANCIALS = 2;
    static final byte REFERENCES = 3;
    static final byte ORDER = 4;

    /** The type code of a relevant event, or -1 when the journey ignores it. */
    static byte typeCode(String type) {
        return switch (type) {
            case "login.created" -> LOGIN;
            case "payment_account.created" -> PAYMENT_ACCOUNT;
            case "financials.provided" -> FINANCIALS;
            case "references.provided" -> REFERENCES;
            case "order.placed" -> ORDER;
            default -> -1;
        };
    }

    static final String[] STEPS = {
        "login", "payment_account", "financials", "references", "first_order", "second_order", "additional_product_line",
    };
    static final int GOAL = 6;
    static final long ABANDON_AFTER = 7 * 86_400_000L;

    /** Profile attributes kept on the customer and copied onto every command. */
    static final String[] PROFILE = {"email", "phone", "sales_rep", "tz"};
    /** Values kept per profile attribute (as Waymark keeps); the oldest is dropped beyond it. */
    static final int PROFILE_HISTORY = 8;

    static final String RULE = "payment-account-nudge";
    static final String[] ACTIONS = {"invite-email", "assist-task", "sales-rep-call"};
    /** The journey's delays; the invite email's is {@link #INVITE_DELAY} unless a bench run sets another. */
    static final long INVITE_DELAY = 3_600_000L;
    private final long[] delays;
    static final Model.Channel[] CHANNELS = {Model.Channel.EMAIL, Model.Channel.CONTACT_CENTER, Model.Channel.CONTACT_CENTER};
    static final String[] TEMPLATES = {"payment-account-invite", null, null};

    // Bits of CustomerState.emitted.
    private static final int ENTERED = 0;
    private static final int COMPLETED = 1; // + step
    private static final int ABANDONED = 8; // + step
    private static final int GOAL_REACHED = 15;
    private static final int COMMAND = 16; // + action

    private static final long NOT_DONE = Long.MIN_VALUE;

    /**
     * The journey with its invite email at login + {@code inviteDelay} ms ({@link #INVITE_DELAY}
     * in the reference journey; {@code make bench}'s latency phase makes it 0, an immediate action).
     */
    OnboardingJourney(long inviteDelay) {
        delays = new long[] {inviteDelay, 2 * 86_400_000L, 4 * 86_400_000L};
    }

    /** What happened to an applied event. */
    enum Applied { ACCEPTED, LATE, DUPLICATE, IGNORED }

    /** Receives the outputs, in event-time order per customer. */
    interface Sink {
        void command(Model.Command c);

        void journeyEvent(Model.JourneyEvent e);
    }

    /** The derived instance: entry and per-step completion times. */
    private static final class Instance {
        boolean entered;
        long enteredAt;
        final long[] done = new long[STEPS.length];
        long end = NOT_DONE;

        Instance() {
            java.util.Arrays.fill(done, NOT_DONE);
        }
    }

    /**
     * Applies one event to a customer's state, then emits every output due at or before
     * {@code watermark}, the partition's watermark before this event.
     */
    Applied apply(CustomerState s, Model.CustomerEvent ev, byte type, long watermark, Sink out) {
        if (type < 0) {
            return Applied.IGNORED;
        }
        if (s.hasEvent(ev.eventId())) {
            s.duplicates++;
            return Applied.DUPLICATE;
        }
        boolean late = ev.occurredAt() < watermark;
        if (late) {
            s.lateEvents++;
        }
        for (int a = 0; a < PROFILE.length; a++) {
            String value = ev.attributes().get(PROFILE[a]);
            if (value == null) {
                continue;
            }
            List<CustomerState.ProfileValue> values = s.profile[a];
            int pos = values.size();
            while (pos > 0 && CustomerState.compare(values.get(pos - 1).at(), values.get(pos - 1).eventId(), ev.occurredAt(), ev.eventId()) >= 0) {
                pos--;
            }
            values.add(pos, new CustomerState.ProfileValue(ev.occurredAt(), ev.eventId(), value));
            if (values.size() > PROFILE_HISTORY) {
                values.remove(0);
            }
        }
        String productLine = type == ORDER ? ev.attributes().get("product_line") : null;
        int pos = s.events.size();
        while (pos > 0 && CustomerState.compare(s.events.get(pos - 1).at(), s.events.get(pos - 1).eventId(), ev.occurredAt(), ev.eventId()) >= 0) {
            pos--;
        }
        s.events.add(pos, new CustomerState.StoredEvent(ev.occurredAt(), ev.eventId(), type, productLine));
        advance(s, ev.customerId(), watermark, out);
        return late ? Applied.LATE : Applied.ACCEPTED;
    }

    /** Derives the customer's instance from the sorted events. */
    private static Instance derive(List<CustomerState.StoredEvent> events) {
        Instance inst = new Instance();
        int orders = 0;
        List<String> productLines = new ArrayList<>(4);
        for (CustomerState.StoredEvent e : events) {
            boolean isOrder = e.type() == ORDER;
            // Predicates look at the customer's earlier orders in event time (all of them).
            int nth = isOrder ? orders + 1 : 0;
            boolean newLine = isOrder && e.productLine() != null && orders > 0 && !productLines.contains(e.productLine());
            if (isOrder) {
                orders++;
                productLines.add(e.productLine());
            }
            if (!inst.entered) {
                if (e.type() != LOGIN) {
                    continue;
                }
                inst.entered = true;
                inst.enteredAt = e.at();
            } else if (inst.end != NOT_DONE) {
                continue; // ended, and re-entry: never
            }
            long[] done = inst.done;
            long at = e.at();
            switch (e.type()) {
                case LOGIN -> complete(done, 0, at);
                case PAYMENT_ACCOUNT -> complete(done, 1, at);
                case FINANCIALS -> complete(done, 2, at);
                case REFERENCES -> complete(done, 3, at);
                default -> {
                    if (nth == 1) {
                        complete(done, 4, at);
                    }
                    if (nth == 2) {
                        complete(done, 5, at);
                    }
                    if (newLine) {
                        complete(done, 6, at);
                    }
                }
            }
            if (done[GOAL] != NOT_DONE) {
                inst.end = at;
            }
        }
        return inst;
    }

    private static void complete(long[] done, int step, long at) {
        if (done[step] == NOT_DONE) {
            done[step] = at;
        }
    }

    /**
     * Emits every output of this customer due at or before {@code watermark} and not emitted
     * yet, in event-time order, and updates {@link CustomerState#nextDue}.
     */
    void advance(CustomerState s, String customerId, long watermark, Sink out) {
        Instance inst = derive(s.events);
        s.nextDue = CustomerState.NONE;
        if (!inst.entered) {
            return;
        }
        // The outputs the instance calls for: (due, bit), in derivation order.
        long[] due = new long[24];
        int[] bit = new int[24];
        int n = 0;
        due[n] = inst.enteredAt;
        bit[n++] = ENTERED;
        for (int st = 0; st < STEPS.length; st++) {
            if (inst.done[st] != NOT_DONE) {
                due[n] = inst.done[st];
                bit[n++] = COMPLETED + st;
            }
            if (st == 0) {
                continue; // the entry step has no abandonment window
            }
            long open = inst.enteredAt;
            boolean opens = true;
            for (int p = 0; p < st; p++) {
                if (inst.done[p] == NOT_DONE) {
                    opens = false;
                    break;
                }
                open = Math.max(open, inst.done[p]);
            }
            if (!opens) {
                continue;
            }
            long deadline = open + ABANDON_AFTER;
            boolean completedInTime = inst.done[st] != NOT_DONE && inst.done[st] < deadline;
            boolean endedBefore = inst.end != NOT_DONE && inst.end <= deadline;
            if (!completedInTime && !endedBefore) {
                due[n] = deadline;
                bit[n++] = ABANDONED + st;
            }
        }
        if (inst.end != NOT_DONE) {
            due[n] = inst.end;
            bit[n++] = GOAL_REACHED;
        }
        long login = inst.done[0];
        for (int a = 0; a < ACTIONS.length; a++) {
            long at = login + delays[a];
            boolean cancelled = (inst.done[1] != NOT_DONE && inst.done[1] < at) || (inst.end != NOT_DONE && inst.end < at);
            if (!cancelled) {
                due[n] = at;
                bit[n++] = COMMAND + a;
            }
        }
        // Emit what is due, in event-time order (stable: ties keep derivation order).
        long next = CustomerState.NONE;
        int readyMask = 0;
        for (int i = 0; i < n; i++) {
            if ((s.emitted & (1 << bit[i])) != 0) {
                continue;
            }
            if (due[i] <= watermark) {
                readyMask |= 1 << i;
            } else if (next == CustomerState.NONE || due[i] < next) {
                next = due[i];
            }
        }
        while (readyMask != 0) {
            int best = -1;
            for (int i = 0; i < n; i++) {
                if ((readyMask & (1 << i)) != 0 && (best < 0 || due[i] < due[best])) {
                    best = i;
                }
            }
            readyMask &= ~(1 << best);
            emit(s, customerId, bit[best], due[best], out);
            s.emitted |= 1 << bit[best];
        }
        s.nextDue = next;
    }

    private static void emit(CustomerState s, String customerId, int bit, long at, Sink out) {
        if (bit == ENTERED) {
            out.journeyEvent(stepEvent(customerId, "entered", STEPS[0], at));
        } else if (bit < ABANDONED) {
            out.journeyEvent(stepEvent(customerId, "step_completed", STEPS[bit - COMPLETED], at));
        } else if (bit < GOAL_REACHED) {
            out.journeyEvent(stepEvent(customerId, "step_abandoned", STEPS[bit - ABANDONED], at));
        } else if (bit == GOAL_REACHED) {
            out.journeyEvent(stepEvent(customerId, "goal_reached", STEPS[GOAL], at));
        } else {
            int a = bit - COMMAND;
            String commandId = StableId.of(NAME, VERSION_ID, customerId, INSTANCE_ID, RULE, ACTIONS[a]);
            Map<String, String> attributes = new TreeMap<>();
            for (int p = 0; p < PROFILE.length; p++) {
                String v = profileAt(s, p, at);
                if (v != null) {
                    attributes.put(PROFILE[p], v);
                }
            }
            out.command(new Model.Command(
                    commandId, NAME, VERSION, customerId, INSTANCE, RULE, ACTIONS[a], CHANNELS[a], at, TEMPLATES[a],
                    params(s, a, at), attributes));
            out.journeyEvent(new Model.JourneyEvent(
                    StableId.of(NAME, VERSION_ID, customerId, INSTANCE_ID, "command_emitted", RULE + "." + ACTIONS[a]),
                    NAME, VERSION, customerId, INSTANCE, "command_emitted", null, at, commandId, ACTIONS[a]));
        }
    }

    private static Model.JourneyEvent stepEvent(String customerId, String type, String step, long at) {
        return new Model.JourneyEvent(
                StableId.of(NAME, VERSION_ID, customerId, INSTANCE_ID, type, step),
                NAME, VERSION, customerId, INSTANCE, type, step, at, null, null);
    }

    /** The action's parameters, placeholders filled from the profile as of {@code at}. */
    private static Map<String, String> params(CustomerState s, int action, long at) {
        Map<String, String> p = new TreeMap<>();
        switch (action) {
            case 0 -> p.put("link", "https://billing.example.com/payment-account/new");
            case 1 -> {
                p.put("task", "assist");
                p.put("queue", "onboarding");
                p.put("note", "Customer created a login two days ago but has no payment account yet; offer help.");
            }
            default -> {
                p.put("task", "outbound-call");
                String rep = profileAt(s, 2, at);
                p.put("assignee", rep == null ? "" : rep);
                p.put("note", "Schedule an outbound call: no payment account four days after login.");
            }
        }
        return p;
    }

    /** A profile attribute as of event time {@code at}: the latest set at or before it, else the earliest. */
    private static String profileAt(CustomerState s, int attr, long at) {
        List<CustomerState.ProfileValue> values = s.profile[attr];
        if (values.isEmpty()) {
            return null;
        }
        int upto = 0;
        while (upto < values.size() && values.get(upto).at() <= at) {
            upto++;
        }
        return values.get(Math.max(upto - 1, 0)).value();
    }
}
