package dev.weft.sdk;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.weft.sdk.testing.WeftRuntime;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/** The runtime restarted under a running app: fail fast, reconnect, resume; no ack for unfinished work. */
class RestartTest {
    static <T> T eventually(java.util.concurrent.Callable<T> call, long seconds) throws Exception {
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (true) {
            try {
                return call.call();
            } catch (UnavailableException e) {
                if (System.nanoTime() > end) {
                    throw e;
                }
                Thread.sleep(50);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void runtimeKilledAndRestarted(TransportKind kind) throws Exception {
        try (WeftRuntime w = WeftRuntime.start("java-restart"); WeftClient c = w.client(kind)) {
            BlockingQueue<TopicEvent> events = new ArrayBlockingQueue<>(100);
            Subscription sub = c.subscribeToEvents("pubsub", "restarts", Map.of(), e -> {
                events.add(e);
                return SubscriptionStatus.SUCCESS;
            });
            Subscription channel = c.serveInvocations(inv -> InvokeMethodResponse.of("pong " + inv.getDataAsString()));
            c.saveState("statestore", "k", "before");
            c.publishEvent("pubsub", "restarts", "one");
            assertEquals("one", events.poll(10, TimeUnit.SECONDS).getDataAsString());

            w.kill();
            long t0 = System.nanoTime();
            UnavailableException down = assertThrows(UnavailableException.class, () -> c.getState("statestore", "k"));
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertTrue(ms < 5000, "the call did not fail fast: " + ms + " ms");
            assertNotNull(down.getMessage());
            assertThrows(UnavailableException.class, () -> c.saveState("statestore", "k", "x"), "still down");
            long waitInactive = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (sub.isActive() && System.nanoTime() < waitInactive) {
                Thread.sleep(20);
            }
            assertFalse(sub.isActive(), "the subscription noticed the runtime going away");

            w.restart();
            // The same client works again, without being rebuilt.
            eventually(() -> {
                c.saveState("statestore", "k", "after");
                return null;
            }, 15);
            assertEquals("after", c.getState("statestore", "k").getValueAsString());
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (!(sub.isActive() && channel.isActive()) && System.nanoTime() < end) {
                Thread.sleep(50);
            }
            assertTrue(sub.isActive(), "the subscription was opened again");
            assertTrue(channel.isActive(), "the app channel was opened again");
            c.publishEvent("pubsub", "restarts", "two");
            TopicEvent two = events.poll(15, TimeUnit.SECONDS);
            assertNotNull(two, "no event after the restart");
            assertEquals("two", two.getDataAsString());
            assertEquals("pong x", new String(
                    c.invokeMethod("java-restart", "ping", "x".getBytes(UTF_8), HttpExtension.POST), UTF_8));
            sub.close();
            channel.close();
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void anEventWhoseHandlerDidNotFinishIsNotAcked(TransportKind kind) throws Exception {
        try (WeftRuntime w = WeftRuntime.start("java-unacked"); WeftClient c = w.client(kind)) {
            CountDownLatch inHandler = new CountDownLatch(1);
            CountDownLatch never = new CountDownLatch(1);
            Subscription first = c.subscribeToEvents("pubsub", "work", Map.of(), e -> {
                inHandler.countDown();
                never.await(); // interrupted when the subscription closes
                return SubscriptionStatus.SUCCESS;
            });
            c.publishEvent("pubsub", "work", "job-1");
            assertTrue(inHandler.await(10, TimeUnit.SECONDS), "the first subscriber got the event");
            first.close(); // its handler never finished
            BlockingQueue<TopicEvent> again = new ArrayBlockingQueue<>(10);
            try (Subscription second = c.subscribeToEvents("pubsub", "work", Map.of(), e -> {
                again.add(e);
                return SubscriptionStatus.SUCCESS;
            })) {
                TopicEvent e = again.poll(15, TimeUnit.SECONDS);
                assertNotNull(e, "the unacked event was not delivered to the next subscriber");
                assertEquals("job-1", e.getDataAsString());
                assertTrue(second.isActive());
            }
        }
    }
}
