package dev.weft.sdk;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.weft.sdk.testing.WeftRuntime;
import java.nio.file.Files;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/** Every client call against a real runtime, on both transports. */
class ClientTest {
    static WeftRuntime weft;

    @BeforeAll
    static void start() throws Exception {
        weft = WeftRuntime.start("java-client");
    }

    @AfterAll
    static void stop() throws Exception {
        if (weft != null) {
            weft.close();
        }
    }

    static String key(String prefix) {
        return prefix + "-" + UUID.randomUUID();
    }

    // === state ===

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void stateSaveGetDelete(TransportKind kind) {
        try (WeftClient c = weft.client(kind)) {
            assertEquals(kind.name().toLowerCase(), c.getTransport());
            String k = key("k");
            State none = c.getState("statestore", k);
            assertNull(none.getValue(), "a key never saved has no value");
            assertNull(none.getEtag());
            c.saveState("statestore", k, "v1");
            State s = c.getState("statestore", k);
            assertEquals("v1", s.getValueAsString());
            assertNotNull(s.getEtag());
            byte[] bin = {0, 1, 2, (byte) 0xff};
            c.saveState("statestore", k, bin);
            assertArrayEquals(bin, c.getState("statestore", k).getValue());
            c.deleteState("statestore", k);
            assertNull(c.getState("statestore", k).getValue());
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void etagFirstWriteAndLastWrite(TransportKind kind) {
        try (WeftClient c = weft.client(kind)) {
            String k = key("etag");
            c.saveState("statestore", k, null, "a".getBytes(UTF_8), StateOptions.firstWrite());
            EtagMismatchException e = assertThrows(EtagMismatchException.class,
                    () -> c.saveState("statestore", k, null, "b".getBytes(UTF_8), StateOptions.firstWrite()));
            assertEquals(StatusCode.ABORTED, e.getCode());
            assertTrue(e.getMessage().contains(k), e.getMessage());
            String etag = c.getState("statestore", k).getEtag();
            c.saveState("statestore", k, etag, "c".getBytes(UTF_8), StateOptions.firstWrite());
            assertThrows(EtagMismatchException.class,
                    () -> c.saveState("statestore", k, etag, "d".getBytes(UTF_8), StateOptions.firstWrite()),
                    "a stale etag");
            assertEquals("c", c.getState("statestore", k).getValueAsString());
            c.saveState("statestore", k, etag, "e".getBytes(UTF_8), StateOptions.lastWrite());
            assertEquals("e", c.getState("statestore", k).getValueAsString(), "last-write ignores the etag");
            assertThrows(EtagMismatchException.class, () -> c.deleteState("statestore", k, etag, StateOptions.firstWrite()));
            c.deleteState("statestore", k, c.getState("statestore", k).getEtag(), StateOptions.firstWrite());
            assertNull(c.getState("statestore", k).getValue());
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void bulkStateAndTransactions(TransportKind kind) {
        try (WeftClient c = weft.client(kind)) {
            String a = key("a");
            String b = key("b");
            String missing = key("missing");
            c.saveBulkState("statestore", List.of(new State(a, "1"), new State(b, "2")));
            List<State> got = c.getBulkState("statestore", List.of(a, b, missing));
            assertEquals(3, got.size());
            Map<String, String> byKey = new java.util.HashMap<>();
            for (State s : got) {
                byKey.put(s.getKey(), s.getValueAsString());
            }
            assertEquals("1", byKey.get(a));
            assertEquals("2", byKey.get(b));
            assertNull(byKey.get(missing));

            c.executeStateTransaction("statestore", List.of(
                    TransactionalStateOperation.upsert(new State(a, "10")),
                    TransactionalStateOperation.delete(b)));
            assertEquals("10", c.getState("statestore", a).getValueAsString());
            assertNull(c.getState("statestore", b).getValue());

            // All or nothing: a stale etag in the second operation leaves the first undone.
            String stale = c.getState("statestore", a).getEtag();
            c.saveState("statestore", a, "11");
            assertThrows(EtagMismatchException.class, () -> c.executeStateTransaction("statestore", List.of(
                    TransactionalStateOperation.upsert(new State(b, "20")),
                    TransactionalStateOperation.upsert(new State(a, "12".getBytes(UTF_8), stale, Map.of(),
                            StateOptions.firstWrite())))));
            assertNull(c.getState("statestore", b).getValue());
            assertEquals("11", c.getState("statestore", a).getValueAsString());

            c.deleteBulkState("statestore", List.of(new State(a, (byte[]) null)));
            assertNull(c.getState("statestore", a).getValue());
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void stateTtlExpires(TransportKind kind) throws Exception {
        try (WeftClient c = weft.client(kind)) {
            String k = key("ttl");
            c.saveState("statestore", k, null, "x".getBytes(UTF_8), Map.of(Metadata.TTL_IN_SECONDS, "1"), null);
            State s = c.getState("statestore", k);
            assertEquals("x", s.getValueAsString());
            assertTrue(s.getMetadata().containsKey(Metadata.TTL_EXPIRE_TIME), "metadata: " + s.getMetadata());
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (c.getState("statestore", k).getValue() != null) {
                assertTrue(System.nanoTime() < end, "the item did not expire within 10 s");
                Thread.sleep(100);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void asyncVariants(TransportKind kind) throws Exception {
        try (WeftClient c = weft.client(kind)) {
            String k = key("async");
            c.saveStateAsync("statestore", k, "v".getBytes(UTF_8)).get(10, TimeUnit.SECONDS);
            assertEquals("v", c.getStateAsync("statestore", k).get(10, TimeUnit.SECONDS).getValueAsString());
            List<CompletableFuture<State>> many = new java.util.ArrayList<>();
            for (int i = 0; i < 200; i++) {
                many.add(c.getStateAsync("statestore", k));
            }
            for (CompletableFuture<State> f : many) {
                assertEquals("v", f.get(10, TimeUnit.SECONDS).getValueAsString());
            }
            c.saveBulkStateAsync("statestore", List.of(new State(k, "w"))).get(10, TimeUnit.SECONDS);
            assertEquals(1, c.getBulkStateAsync("statestore", List.of(k)).get(10, TimeUnit.SECONDS).size());
            c.executeStateTransactionAsync("statestore", List.of(TransactionalStateOperation.delete(k)))
                    .get(10, TimeUnit.SECONDS);
            c.deleteStateAsync("statestore", k).get(10, TimeUnit.SECONDS);
            ExecutionException e = assertThrows(ExecutionException.class,
                    () -> c.getStateAsync("nope", k).get(10, TimeUnit.SECONDS));
            assertTrue(e.getCause() instanceof WeftException, e.getCause().toString());
            assertEquals(StatusCode.INVALID_ARGUMENT, ((WeftException) e.getCause()).getCode());
            assertEquals("java-client", c.getMetadataAsync().get(10, TimeUnit.SECONDS).getId());
            assertTrue(c.getConfigurationAsync("configstore", List.of()).get(10, TimeUnit.SECONDS).containsKey("greeting"));
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void manyThreadsShareOneClient(TransportKind kind) throws Exception {
        try (WeftClient c = weft.client(kind)) {
            int threads = 8;
            int calls = kind == TransportKind.SHM ? 2000 : 300;
            List<Thread> ts = new java.util.ArrayList<>();
            java.util.concurrent.ConcurrentLinkedQueue<String> errors = new java.util.concurrent.ConcurrentLinkedQueue<>();
            for (int t = 0; t < threads; t++) {
                final int id = t;
                Thread th = new Thread(() -> {
                    String k = key("thread-" + id);
                    for (int i = 0; i < calls; i++) {
                        c.saveState("statestore", k, id + ":" + i);
                        String got = c.getState("statestore", k).getValueAsString();
                        if (!(id + ":" + i).equals(got)) {
                            errors.add(k + ": wrote " + id + ":" + i + ", read " + got);
                            return;
                        }
                    }
                });
                th.start();
                ts.add(th);
            }
            for (Thread th : ts) {
                th.join(120_000);
                assertFalse(th.isAlive(), "a caller thread did not finish");
            }
            assertTrue(errors.isEmpty(), errors.toString());
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void runtimeErrorsAreTyped(TransportKind kind) {
        try (WeftClient c = weft.client(kind)) {
            WeftException e = assertThrows(WeftException.class, () -> c.getState("nope", "k"));
            assertEquals(StatusCode.INVALID_ARGUMENT, e.getCode());
            assertTrue(e.getMessage().contains("nope"), e.getMessage());
            WeftException p = assertThrows(WeftException.class, () -> c.publishEvent("nopubsub", "t", "x"));
            assertTrue(p.getMessage().contains("nopubsub"), p.getMessage());
            NotFoundException nf = assertThrows(NotFoundException.class,
                    () -> c.withTimeout(Duration.ofSeconds(20)).invokeMethod("no-such-app", "m", new byte[0], HttpExtension.POST));
            assertTrue(nf.getMessage().contains("no-such-app"), nf.getMessage());
        }
    }

    @Test
    void badArgumentsNameTheArgument() {
        try (WeftClient c = weft.client(TransportKind.GRPC)) {
            assertArg("storeName", () -> c.getState("", "k"));
            assertArg("key", () -> c.getState("statestore", null));
            assertArg("value", () -> c.saveState("statestore", "k", (byte[]) null));
            assertArg("states", () -> c.saveBulkState("statestore", List.of()));
            assertArg("keys", () -> c.getBulkState("statestore", List.of()));
            assertArg("keys[1]", () -> c.getBulkState("statestore", List.of("a", "")));
            assertArg("operations", () -> c.executeStateTransaction("statestore", List.of()));
            assertArg("operations[0]", () -> c.executeStateTransaction("statestore",
                    List.of(TransactionalStateOperation.upsert(new State("k", (byte[]) null)))));
            assertArg("pubsubName", () -> c.publishEvent(null, "t", "x"));
            assertArg("topic", () -> c.publishEvent("pubsub", " ", "x"));
            assertArg("data", () -> c.publishEvent("pubsub", "t", null, null, null));
            assertArg("entries", () -> c.publishEvents("pubsub", "t", List.of(), null));
            assertArg("entryId 'x' is used twice", () -> c.publishEvents("pubsub", "t", List.of(
                    new BulkPublishEntry("x", new byte[0], null, null), new BulkPublishEntry("x", new byte[0], null, null)), null));
            assertArg("appId", () -> c.invokeMethod("", "m", new byte[0], HttpExtension.POST));
            assertArg("method", () -> new InvokeMethodRequest("app", ""));
            assertArg("timeout", () -> new InvokeMethodRequest("app", "m").setTimeout(Duration.ZERO));
            assertArg("timeout", () -> c.withTimeout(Duration.ofMillis(-1)));
            assertArg("handler", () -> c.subscribeToEvents("pubsub", "t", null));
            assertArg("listener", () -> c.subscribeConfiguration("configstore", List.of("a"), null));
            assertArg("keys[0]", () -> c.getConfiguration("configstore", ""));
            assertArg("id", () -> c.unsubscribeConfiguration("", "configstore"));
            assertArg("handler", () -> c.serveInvocations(null));
            assertArg("key", () -> c.setMetadata("", "v"));
            assertArg("key", () -> c.deleteState("statestore", ""));
            assertArg("states", () -> c.deleteBulkState("statestore", List.of()));
            assertArg("storeName", () -> c.executeStateTransaction(null, List.of(TransactionalStateOperation.delete("k"))));
            assertArg("storeName", () -> c.getConfiguration(""));
            assertArg("keys", () -> c.subscribeConfiguration("configstore", null, r -> { }));
            assertArg("events", () -> c.publishEvents("pubsub", "t", "text/plain", List.of()));
            assertArg("request", () -> c.invokeMethod(null));
            assertArg("timeout", () -> c.waitForSidecar(null));
            assertArg("metadata", () -> c.subscribeToEvents("pubsub", "t", null, e -> SubscriptionStatus.SUCCESS));
            assertArg("key", () -> new State("", "v"));
            assertArg("event", () -> new BulkPublishEntry("x", null, null, null));
            assertArg("method", () -> new HttpExtension(null, ""));
            assertArg("operation", () -> new TransactionalStateOperation(null, new State("k", "v")));
            assertArg("appId", () -> WeftClient.builder().appId(""));
            assertArg("host", () -> WeftClient.builder().grpcEndpoint("", 50001));
            assertArg("shmSocket", () -> WeftClient.builder().shmSocket(null));
            assertArg("grpcSocket", () -> WeftClient.builder().grpcSocket(null));
            assertArg("apiToken", () -> WeftClient.builder().apiToken(null));
            assertArg("timeout", () -> WeftClient.builder().timeout(Duration.ZERO));
            assertArg("spin", () -> WeftClient.builder().shmIdle(Duration.ofMillis(-1), Duration.ZERO));
            assertArg("shmMaxSpinners", () -> WeftClient.builder().shmMaxSpinners(-1));
            assertArg("transport", () -> WeftClient.builder().transport(null));
            assertArg("grpcPort", () -> WeftClient.builder().grpcPort(0));
            assertArg("shmRingSize", () -> WeftClient.builder().shmRingSize(5000));
            assertArg("WEFT_TRANSPORT", () -> new WeftClient.Builder(Map.of("WEFT_TRANSPORT", "udp")).build());
            assertArg("DAPR_GRPC_PORT", () -> new WeftClient.Builder(Map.of("DAPR_GRPC_PORT", "x", "WEFT_TRANSPORT", "grpc")).build());
        }
    }

    static void assertArg(String name, org.junit.jupiter.api.function.Executable call) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
        assertTrue(e.getMessage().contains(name), "'" + e.getMessage() + "' should name " + name);
    }

    // === configuration ===

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void configurationGetSubscribeUnsubscribe(TransportKind kind) throws Exception {
        try (WeftClient c = weft.client(kind)) {
            Map<String, ConfigurationItem> all = c.getConfiguration("configstore");
            assertEquals("hello", all.get("greeting").getValue());
            Map<String, ConfigurationItem> one = c.getConfiguration("configstore", "mode");
            assertEquals(1, one.size());
            assertEquals("1", one.get("mode").getVersion());
            WeftException bad = assertThrows(WeftException.class, () -> c.getConfiguration("nostore"));
            assertTrue(bad.getMessage().contains("nostore"), bad.getMessage());

            String k = "k" + Math.abs(UUID.randomUUID().getLeastSignificantBits() % 100000);
            BlockingQueue<SubscribeConfigurationResponse> updates = new ArrayBlockingQueue<>(100);
            WeftClient.ConfigurationSubscription sub = c.subscribeConfiguration("configstore", List.of(k), updates::add);
            assertNotNull(sub.getId());
            assertTrue(sub.isActive());
            synchronized (ClientTest.class) {
                String text = Files.readString(weft.configFile);
                Files.writeString(weft.configFile, text + k + ": changed-" + kind + "\n");
            }
            SubscribeConfigurationResponse r;
            do {
                r = updates.poll(10, TimeUnit.SECONDS);
                assertNotNull(r, "no configuration update within 10 s");
            } while (!r.getItems().containsKey(k));
            assertEquals("changed-" + kind, r.getItems().get(k).getValue());
            assertEquals(sub.getId(), r.getSubscriptionId());
            UnsubscribeConfigurationResponse u = c.unsubscribeConfiguration(sub.getId(), "configstore");
            assertTrue(u.getIsUnsubscribed(), u.getMessage());
            sub.close();
            assertFalse(sub.isActive());
        }
    }

    // === pub/sub ===

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void publishAndSubscribe(TransportKind kind) throws Exception {
        try (WeftClient c = weft.client(kind)) {
            String topic = key("topic");
            BlockingQueue<TopicEvent> got = new ArrayBlockingQueue<>(100);
            try (Subscription sub = c.subscribeToEvents("pubsub", topic, e -> {
                got.add(e);
                return SubscriptionStatus.SUCCESS;
            })) {
                assertTrue(sub.isActive());
                c.publishEvent("pubsub", topic, "hello");
                TopicEvent e = got.poll(10, TimeUnit.SECONDS);
                assertNotNull(e, "no event within 10 s");
                assertEquals("hello", e.getDataAsString());
                assertEquals(topic, e.getTopic());
                assertTrue(e.getPartition() >= 0, e.getExtensions().toString());
                assertTrue(e.getOffset() >= 0, e.getExtensions().toString());
                assertEquals(0, e.getAttempt(), "attempt counts retries: " + e.getExtensions());

                c.publishEvent("pubsub", topic, "{\"a\":1}".getBytes(UTF_8), "application/json",
                        Map.of(Metadata.PARTITION_KEY, "order-7"));
                e = got.poll(10, TimeUnit.SECONDS);
                assertNotNull(e);
                assertEquals("order-7", e.getPartitionKey());
                assertEquals("application/json", e.getDataContentType());
                assertTrue(e.getDataAsString().contains("\"a\""), e.getDataAsString());

                c.publishEvent("pubsub", topic, "raw bytes".getBytes(UTF_8), "application/octet-stream",
                        Map.of(Metadata.RAW_PAYLOAD, "true"));
                e = got.poll(10, TimeUnit.SECONDS);
                assertNotNull(e);
                assertEquals("raw bytes", e.getDataAsString());

                BulkPublishResponse br = c.publishEvents("pubsub", topic, "text/plain",
                        List.of("b0".getBytes(UTF_8), "b1".getBytes(UTF_8)));
                assertTrue(br.getFailedEntries().isEmpty(), br.getFailedEntries().toString());
                BulkPublishResponse br2 = c.publishEvents("pubsub", topic, List.of(
                        new BulkPublishEntry("x1", "k1".getBytes(UTF_8), "text/plain", Map.of(Metadata.PARTITION_KEY, "p"))),
                        null);
                assertTrue(br2.getFailedEntries().isEmpty());
                c.publishEventAsync("pubsub", topic, "async".getBytes(UTF_8), "text/plain", null).get(10, TimeUnit.SECONDS);
                java.util.Set<String> rest = new java.util.HashSet<>();
                for (int i = 0; i < 4; i++) {
                    TopicEvent x = got.poll(10, TimeUnit.SECONDS);
                    assertNotNull(x, "bulk events: got " + rest);
                    rest.add(x.getDataAsString());
                }
                assertEquals(java.util.Set.of("b0", "b1", "k1", "async"), rest);
            }
        }
    }

    // === invocation, metadata ===

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void invokeOwnAppOverTheAppChannelWithDeadlines(TransportKind kind) throws Exception {
        try (WeftRuntime w = WeftRuntime.start("java-self"); WeftClient c = w.client(kind)) {
            AtomicReference<Invocation> seen = new AtomicReference<>();
            try (Subscription ch = c.serveInvocations(inv -> {
                seen.set(inv);
                switch (inv.getMethod()) {
                    case "echo":
                        return new InvokeMethodResponse(inv.getData(), "text/plain", Map.of("x-answer", "yes"));
                    case "slow":
                        Thread.sleep(3000);
                        return InvokeMethodResponse.of("late");
                    case "missing":
                        throw new NotFoundException("no order " + inv.getDataAsString());
                    default:
                        throw new IllegalStateException("boom");
                }
            })) {
                assertTrue(ch.isActive());
                byte[] r = c.invokeMethod("java-self", "echo", "ping".getBytes(UTF_8), HttpExtension.POST);
                assertEquals("ping", new String(r, UTF_8));
                assertEquals("echo", seen.get().getMethod());
                assertEquals(HttpExtension.Verb.POST, seen.get().getHttpExtension().getMethod());

                InvokeMethodResponse full = c.invokeMethod(new InvokeMethodRequest("java-self", "echo").setBody("p2")
                        .setContentType("text/plain").setHttpExtension(new HttpExtension(HttpExtension.Verb.GET, "a=1")));
                assertEquals("p2", full.getDataAsString());
                assertEquals("a=1", seen.get().getHttpExtension().getQueryString());
                assertEquals("text/plain", seen.get().getContentType());

                NotFoundException nf = assertThrows(NotFoundException.class,
                        () -> c.invokeMethod("java-self", "missing", "42".getBytes(UTF_8), HttpExtension.POST));
                assertTrue(nf.getMessage().contains("no order 42"), nf.getMessage());
                WeftException boom = assertThrows(WeftException.class,
                        () -> c.invokeMethod("java-self", "other", new byte[0], HttpExtension.POST));
                assertEquals(StatusCode.UNKNOWN, boom.getCode());
                assertTrue(boom.getMessage().contains("boom"), boom.getMessage());

                long t0 = System.nanoTime();
                assertThrows(DeadlineExceededException.class, () -> c.invokeMethod(
                        new InvokeMethodRequest("java-self", "slow").setTimeout(Duration.ofMillis(300))));
                long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                assertTrue(ms < 2900, "the deadline was not honoured: " + ms + " ms");
                ExecutionException ae = assertThrows(ExecutionException.class, () -> c.withTimeout(Duration.ofMillis(200))
                        .invokeMethodAsync(new InvokeMethodRequest("java-self", "slow")).get(10, TimeUnit.SECONDS));
                assertTrue(ae.getCause() instanceof DeadlineExceededException, ae.getCause().toString());

                // Metadata reaches the called app over gRPC, and over shm when the runtime serves CONTEXT.
                InvokeMethodRequest withMd = new InvokeMethodRequest("java-self", "echo").setBody("m")
                        .putMetadata("x-tenant", "acme");
                if (kind == TransportKind.GRPC || c.hasCallContext()) {
                    InvokeMethodResponse mr = c.invokeMethod(withMd);
                    assertEquals("acme", seen.get().getMetadata().get("x-tenant"), seen.get().getMetadata().toString());
                    assertEquals("yes", mr.getMetadata().get("x-answer"), mr.getMetadata().toString());
                    assertEquals("java-self", seen.get().getCallerAppId());
                } else {
                    WeftException e = assertThrows(WeftException.class, () -> c.invokeMethod(withMd));
                    assertEquals(StatusCode.FAILED_PRECONDITION, e.getCode());
                    assertTrue(e.getMessage().contains("CONTEXT"), e.getMessage());
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void interruptCancelsABlockingCall(TransportKind kind) throws Exception {
        try (WeftRuntime w = WeftRuntime.start("java-intr"); WeftClient c = w.client(kind)) {
            try (Subscription ch = c.serveInvocations(inv -> {
                Thread.sleep(5000);
                return InvokeMethodResponse.of("late");
            })) {
                assertTrue(ch.isActive());
                AtomicReference<Throwable> thrown = new AtomicReference<>();
                AtomicReference<Boolean> flag = new AtomicReference<>();
                Thread t = new Thread(() -> {
                    try {
                        c.invokeMethod("java-intr", "slow", new byte[0], HttpExtension.POST);
                    } catch (Throwable e) {
                        thrown.set(e);
                        flag.set(Thread.currentThread().isInterrupted());
                    }
                });
                t.start();
                Thread.sleep(500);
                long t0 = System.nanoTime();
                t.interrupt();
                t.join(3000);
                assertFalse(t.isAlive(), "the interrupted call did not return");
                assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) < 3000);
                assertTrue(thrown.get() instanceof CancelledException, String.valueOf(thrown.get()));
                assertTrue(flag.get(), "the interrupt status is kept");
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void metadataAndShutdown(TransportKind kind) throws Exception {
        try (WeftClient c = weft.client(kind)) {
            RuntimeMetadata m = c.getMetadata();
            assertEquals("java-client", m.getId());
            if (kind == TransportKind.SHM) {
                System.out.println("the runtime's shared-memory sessions serve call contexts (CONTEXT): " + c.hasCallContext());
            }
            assertTrue(m.getComponents().stream().anyMatch(x -> x.name().equals("statestore")), m.getComponents().toString());
            c.setMetadata("java-" + kind, "set");
            assertEquals("set", c.getMetadata().getExtended().get("java-" + kind));
        }
        try (WeftRuntime w = WeftRuntime.start("java-shutdown"); WeftClient c = w.client(kind)) {
            c.shutdown();
            assertTrue(w.awaitExit(Duration.ofSeconds(20)), "the runtime did not exit after Shutdown");
        }
    }

    @Test
    void grpcOverTheRuntimesUnixSocket() throws Exception {
        java.nio.file.Path dir = Files.createTempDirectory("weft-java-uds-");
        java.nio.file.Path sock = dir.resolve("weft.sock");
        try (WeftRuntime w = WeftRuntime.options("java-uds").arg("--uds", sock.toString()).start();
                WeftClient c = WeftClient.builder().transport(TransportKind.GRPC).grpcSocket(sock).build()) {
            assertEquals("grpc", c.getTransport());
            c.saveState("statestore", "k", "over uds");
            assertEquals("over uds", c.getState("statestore", "k").getValueAsString());
            assertEquals(w.appId, c.getMetadata().getId());
            BlockingQueue<TopicEvent> got = new ArrayBlockingQueue<>(10);
            try (Subscription sub = c.subscribeToEvents("pubsub", "t", e -> {
                got.add(e);
                return SubscriptionStatus.SUCCESS;
            })) {
                assertTrue(sub.isActive());
                c.publishEvent("pubsub", "t", "x");
                assertNotNull(got.poll(10, TimeUnit.SECONDS));
            }
            assertThrows(WeftException.class, () -> c.getState("nope", "k"));
        }
        try (WeftClient c = WeftClient.builder().transport(TransportKind.GRPC).grpcSocket(dir.resolve("none.sock"))
                .build()) {
            UnavailableException e = assertThrows(UnavailableException.class, () -> c.getState("statestore", "k"));
            assertTrue(e.getMessage().contains("GetState"), e.getMessage());
        }
    }

    @Test
    void autoFallsBackToGrpcWithTheReason() throws Exception {
        try (WeftRuntime w = WeftRuntime.options("java-noshm").arg("--no-shm").start();
                WeftClient c = w.client(TransportKind.AUTO)) {
            assertEquals("grpc", c.getTransport());
            assertNotNull(c.getFallbackReason());
            assertTrue(c.getFallbackReason().contains("shm.sock"), c.getFallbackReason());
            c.saveState("statestore", "k", "v");
            assertThrows(UnavailableException.class, () -> w.client(TransportKind.SHM));
        }
        try (WeftClient c = weft.client(TransportKind.AUTO)) {
            assertEquals("shm", c.getTransport());
            assertNull(c.getFallbackReason());
        }
        // The app id can come from the runtime itself.
        try (WeftClient c = WeftClient.builder().transport(TransportKind.SHM).grpcPort(weft.grpcPort)
                .shmSocket(weft.shmSocket()).build()) {
            assertEquals("java-client", c.getMetadata().getId());
        }
    }

    @Test
    void aWrongAppIdOrTokenIsRefusedByTheHandshake() {
        WeftException e = assertThrows(WeftException.class,
                () -> WeftClient.builder().transport(TransportKind.SHM).appId("someone-else")
                        .shmSocket(weft.shmSocket()).build());
        assertEquals(StatusCode.PERMISSION_DENIED, e.getCode());
    }
}
