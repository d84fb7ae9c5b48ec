package dev.weft.examples;

import dev.weft.sdk.BulkPublishEntry;
import dev.weft.sdk.Metadata;
import dev.weft.sdk.Subscription;
import dev.weft.sdk.SubscriptionStatus;
import dev.weft.sdk.WeftClient;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * An ordered consumer: events keyed by customer arrive in order per key;
 * the handler asks for a retry of one event and sees it again (attempt 1)
 * before anything later of that key.
 */
public final class OrderedConsumer {
    private OrderedConsumer() {}

    public static void main(String[] args) throws Exception {
        int customers = 3;
        int perCustomer = 4;
        CountDownLatch done = new CountDownLatch(customers * perCustomer);
        try (WeftClient client = WeftClient.builder().build();
                Subscription sub = client.subscribeToEvents("pubsub", "orders",
                        Map.of(Metadata.RETRY_BACKOFF, "50ms"), event -> {
                            String order = event.getDataAsString();
                            if (order.endsWith("#2") && event.getAttempt() == 0) {
                                System.out.printf("  %s: partition %d offset %d -> RETRY%n", order,
                                        event.getPartition(), event.getOffset());
                                return SubscriptionStatus.RETRY;
                            }
                            System.out.printf("  %s: partition %d offset %d attempt %d -> SUCCESS%n", order,
                                    event.getPartition(), event.getOffset(), event.getAttempt());
                            done.countDown();
                            return SubscriptionStatus.SUCCESS;
                        })) {
            System.out.println("transport: " + client.getTransport() + ", subscribed: " + sub.isActive());
            List<BulkPublishEntry> events = new ArrayList<>();
            for (int i = 1; i <= perCustomer; i++) {
                for (int c = 1; c <= customers; c++) {
                    String key = "customer-" + c;
                    events.add(new BulkPublishEntry(key + "-" + i, (key + " order #" + i).getBytes(StandardCharsets.UTF_8),
                            "text/plain", Map.of(Metadata.PARTITION_KEY, key)));
                }
            }
            client.publishEvents("pubsub", "orders", events, null);
            if (!done.await(30, TimeUnit.SECONDS)) {
                throw new IllegalStateException("not every event arrived within 30 s");
            }
            System.out.println("every customer's orders were processed in order");
        }
    }
}
