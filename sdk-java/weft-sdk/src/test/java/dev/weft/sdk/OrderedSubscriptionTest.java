package dev.weft.sdk;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.weft.sdk.testing.WeftRuntime;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Several thousand keyed events through one ordered subscription whose
 * handler asks for a retry of every tenth event the first time it sees it:
 * per key, the processed sequence must be exactly 0, 1, 2, … with nothing
 * skipped or repeated, and every retried event must come back before
 * anything later of its key.
 */
class OrderedSubscriptionTest {
    static final int KEYS = 40;
    static final int PER_KEY = 75;
    static WeftRuntime weft;

    @BeforeAll
    static void start() throws Exception {
        weft = WeftRuntime.start("java-ordered");
    }

    @AfterAll
    static void stop() throws Exception {
        if (weft != null) {
            weft.close();
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void perKeyOrderWithRetries(TransportKind kind) throws Exception {
        String topic = "ordered-" + kind.name().toLowerCase();
        Map<String, List<Integer>> processed = new HashMap<>();
        List<String> errors = new ArrayList<>();
        AtomicInteger retries = new AtomicInteger();
        AtomicInteger redeliveredWithAttempt = new AtomicInteger();
        AtomicInteger total = new AtomicInteger();
        Map<String, Integer> retriedPending = new HashMap<>();
        try (WeftClient c = weft.client(kind);
                Subscription sub = c.subscribeToEvents("pubsub", topic, Map.of(Metadata.RETRY_BACKOFF, "5ms"), e -> {
                    String[] ks = e.getDataAsString().split(":");
                    String key = ks[0];
                    int seq = Integer.parseInt(ks[1]);
                    synchronized (processed) {
                        if (!key.equals(e.getPartitionKey()) && errors.size() < 10) {
                            errors.add("event " + key + ":" + seq + " has partitionKey " + e.getPartitionKey());
                        }
                        List<Integer> log = processed.computeIfAbsent(key, k -> new ArrayList<>());
                        Integer waiting = retriedPending.get(key);
                        if (waiting != null && waiting != seq && errors.size() < 10) {
                            errors.add("key " + key + ": seq " + seq + " came before the retried " + waiting);
                        }
                        if (seq % 10 == 3 && e.getAttempt() == 0) {
                            retries.incrementAndGet();
                            retriedPending.put(key, seq);
                            return SubscriptionStatus.RETRY;
                        }
                        if (waiting != null && waiting == seq) {
                            retriedPending.remove(key);
                            if (e.getAttempt() >= 1) {
                                redeliveredWithAttempt.incrementAndGet();
                            }
                        }
                        int expect = log.isEmpty() ? 0 : log.get(log.size() - 1) + 1;
                        if (seq != expect && errors.size() < 10) {
                            errors.add("key " + key + ": processed seq " + seq + ", expected " + expect);
                        }
                        log.add(seq);
                        total.incrementAndGet();
                    }
                    return SubscriptionStatus.SUCCESS;
                })) {
            // Publish in bulk, interleaving the keys, each entry with its own partitionKey.
            List<BulkPublishEntry> batch = new ArrayList<>();
            int n = 0;
            for (int seq = 0; seq < PER_KEY; seq++) {
                for (int k = 0; k < KEYS; k++) {
                    String key = "key-" + k;
                    batch.add(new BulkPublishEntry("e" + n++, (key + ":" + seq).getBytes(UTF_8), "text/plain",
                            Map.of(Metadata.PARTITION_KEY, key)));
                    if (batch.size() == 200) {
                        assertTrue(c.publishEvents("pubsub", topic, batch, null).getFailedEntries().isEmpty());
                        batch.clear();
                    }
                }
            }
            if (!batch.isEmpty()) {
                assertTrue(c.publishEvents("pubsub", topic, batch, null).getFailedEntries().isEmpty());
            }
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
            while (total.get() < KEYS * PER_KEY && System.nanoTime() < end) {
                Thread.sleep(50);
            }
            assertTrue(sub.isActive());
        }
        synchronized (processed) {
            assertTrue(errors.isEmpty(), errors.toString());
            assertEquals(KEYS * PER_KEY, total.get(), "processed events");
            assertEquals(KEYS, processed.size());
            for (Map.Entry<String, List<Integer>> e : processed.entrySet()) {
                List<Integer> want = new ArrayList<>();
                for (int i = 0; i < PER_KEY; i++) {
                    want.add(i);
                }
                assertEquals(want, e.getValue(), "key " + e.getKey());
            }
            int expectRetries = KEYS * ((PER_KEY + 6) / 10);
            assertEquals(expectRetries, retries.get(), "retries asked for");
            assertEquals(expectRetries, redeliveredWithAttempt.get(), "retried events came back with attempt >= 1");
        }
    }
}
