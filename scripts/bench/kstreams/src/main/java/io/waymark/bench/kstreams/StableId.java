package io.waymark.bench.kstreams;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.UUID;

/**
 * Waymark's stable output ids: UUID v5 (SHA-1, RFC 4122) of the identifying parts joined with
 * {@code /}, in Waymark's namespace. Replays yield the same id, and the ids equal the ones
 * {@code waymark simulate} derives for the same outputs, so the two compare record by record.
 */
final class StableId {
    /** Waymark's id namespace, {@code 5761796d-6172-6b00-8000-000000000001}. */
    private static final byte[] NAMESPACE = {
        0x57, 0x61, 0x79, 0x6d, 0x61, 0x72, 0x6b, 0x00,
        (byte) 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    };

    /** SHA-1 digests are not thread-safe; one per stream thread. */
    private static final ThreadLocal<MessageDigest> SHA1 = ThreadLocal.withInitial(() -> {
        try {
            return MessageDigest.getInstance("SHA-1");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("this JVM has no SHA-1", e);
        }
    });

    private StableId() {}

    /** The id of the output identified by {@code parts}. */
    static String of(String... parts) {
        MessageDigest sha1 = SHA1.get();
        sha1.reset();
        sha1.update(NAMESPACE);
        for (int i = 0; i < parts.length; i++) {
            if (i > 0) {
                sha1.update((byte) '/');
            }
            sha1.update(parts[i].getBytes(StandardCharsets.UTF_8));
        }
        byte[] h = sha1.digest();
        h[6] = (byte) ((h[6] & 0x0f) | 0x50); // version 5
        h[8] = (byte) ((h[8] & 0x3f) | 0x80); // RFC 4122 variant
        long msb = 0;
        long lsb = 0;
        for (int i = 0; i < 8; i++) {
            msb = (msb << 8) | (h[i] & 0xff);
            lsb = (lsb << 8) | (h[i + 8] & 0xff);
        }
        return new UUID(msb, lsb).toString();
    }
}
