package dev.weft.sdk;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.Message;
import dev.weft.proto.common.v1.Common;
import dev.weft.proto.runtime.v1.Configuration;
import dev.weft.proto.runtime.v1.DaprOuterClass;
import dev.weft.proto.runtime.v1.Invoke;
import dev.weft.proto.runtime.v1.Pubsub;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The one client of a Weft runtime: state, configuration, pub/sub,
 * service invocation, metadata and shutdown, plus the app side
 * (invocation handlers and ordered topic handlers) without an open port.
 *
 * <p>Method names follow the official Dapr Java SDK's {@code DaprClient}.
 * Every call is blocking; {@code ...Async} variants return a
 * {@link CompletableFuture} (the Dapr SDK returns Reactor {@code Mono}s).
 * Values are bytes (or UTF-8 strings): no serializer is built in.
 *
 * <p>Thread-safe: share one client between threads. Built with
 * {@link #builder()}; the transport is shared memory when the runtime offers
 * it, else gRPC ({@code WEFT_TRANSPORT=shm|grpc|auto}). Close it when done.
 */
public final class WeftClient implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(WeftClient.class.getName());

    private final Core core;
    private final long timeoutNanos;
    private final boolean view;

    private WeftClient(Core core, long timeoutNanos, boolean view) {
        this.core = core;
        this.timeoutNanos = timeoutNanos;
        this.view = view;
    }

    public static Builder builder() {
        return new Builder();
    }

    /** The transport in use: {@code "shm"} or {@code "grpc"}. */
    public String getTransport() {
        return core.transport.kind();
    }

    /** Why AUTO chose gRPC, or null when it did not. */
    public String getFallbackReason() {
        return core.fallbackReason;
    }

    /** Whether the shared-memory session carries call contexts (deadline, metadata, error details: §5.1). */
    public boolean hasCallContext() {
        return core.transport instanceof ShmTransport && ((ShmTransport) core.transport).contextFeature();
    }

    /**
     * A view of this client whose calls have this deadline (closing the view
     * does nothing; close the client it came from).
     */
    public WeftClient withTimeout(Duration timeout) {
        if (timeout == null || timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("timeout must be positive, got " + timeout);
        }
        return new WeftClient(core, timeout.toNanos(), true);
    }

    // === impl calls ===

    private Transport.CallOpts opts(Map<String, String> metadata) {
        return Transport.CallOpts.timeout(timeoutNanos, metadata);
    }

    private <Q extends Message, R extends Message> R call(Rpc<Q, R> rpc, Q req) {
        return core.transport().call(rpc, req, opts(Map.of()));
    }

    private <Q extends Message, R extends Message, T> CompletableFuture<T> async(Rpc<Q, R> rpc, Q req,
            Function<R, T> map) {
        return core.transport().callAsync(rpc, req, opts(Map.of())).thenApply(map);
    }

    // === impl state ===

    private static Common.StateOptions options(StateOptions o) {
        Common.StateOptions.Builder b = Common.StateOptions.newBuilder();
        if (o.getConcurrency() != null) {
            b.setConcurrency(o.getConcurrency() == StateOptions.Concurrency.FIRST_WRITE
                    ? Common.StateOptions.StateConcurrency.CONCURRENCY_FIRST_WRITE
                    : Common.StateOptions.StateConcurrency.CONCURRENCY_LAST_WRITE);
        }
        if (o.getConsistency() != null) {
            b.setConsistency(o.getConsistency() == StateOptions.Consistency.STRONG
                    ? Common.StateOptions.StateConsistency.CONSISTENCY_STRONG
                    : Common.StateOptions.StateConsistency.CONSISTENCY_EVENTUAL);
        }
        return b.build();
    }

    private static Common.StateItem item(State s, String what) {
        if (s.getValue() == null) {
            throw new IllegalArgumentException(what + ": the value of key '" + s.getKey() + "' must not be null");
        }
        return itemOrKey(s);
    }

    private static Common.StateItem itemOrKey(State s) {
        Common.StateItem.Builder b = Common.StateItem.newBuilder().setKey(s.getKey()).putAllMetadata(s.getMetadata());
        if (s.getValue() != null) {
            b.setValue(ByteString.copyFrom(s.getValue()));
        }
        if (s.getEtag() != null) {
            b.setEtag(Common.Etag.newBuilder().setValue(s.getEtag()));
        }
        if (s.getOptions() != null) {
            b.setOptions(options(s.getOptions()));
        }
        return b.build();
    }

    private static dev.weft.proto.runtime.v1.State.GetStateRequest getReq(String store, String key, StateOptions o,
            Map<String, String> md) {
        Args.notEmpty(store, "storeName");
        Args.notEmpty(key, "key");
        var b = dev.weft.proto.runtime.v1.State.GetStateRequest.newBuilder().setStoreName(store).setKey(key);
        if (md != null) {
            b.putAllMetadata(md);
        }
        if (o != null && o.getConsistency() != null) {
            b.setConsistency(options(o).getConsistency());
        }
        return b.build();
    }

    private static State state(String key, dev.weft.proto.runtime.v1.State.GetStateResponse r) {
        boolean none = r.getData().isEmpty() && r.getEtag().isEmpty();
        return new State(key, none ? null : r.getData().toByteArray(), r.getEtag(), r.getMetadataMap(), null, null);
    }

    /** Reads a key: its value (null when it has none), etag and metadata (e.g. ttlExpireTime). */
    public State getState(String storeName, String key) {
        return getState(storeName, key, null, null);
    }

    public State getState(String storeName, String key, StateOptions options) {
        return getState(storeName, key, options, null);
    }

    public State getState(String storeName, String key, StateOptions options, Map<String, String> metadata) {
        return state(key, call(Rpc.GET_STATE, getReq(storeName, key, options, metadata)));
    }

    public CompletableFuture<State> getStateAsync(String storeName, String key) {
        return async(Rpc.GET_STATE, getReq(storeName, key, null, null), r -> state(key, r));
    }

    private dev.weft.proto.runtime.v1.State.SaveStateRequest saveReq(String store, List<State> states) {
        Args.notEmpty(store, "storeName");
        Args.notEmpty(states, "states");
        var b = dev.weft.proto.runtime.v1.State.SaveStateRequest.newBuilder().setStoreName(store);
        for (State s : states) {
            b.addStates(item(s, "states"));
        }
        return b.build();
    }

    /** Saves a value (last write wins). */
    public void saveState(String storeName, String key, byte[] value) {
        saveState(storeName, key, null, value, null, null);
    }

    public void saveState(String storeName, String key, String value) {
        Args.notNull(value, "value");
        saveState(storeName, key, null, value.getBytes(StandardCharsets.UTF_8), null, null);
    }

    /**
     * Saves a value with an etag and options: with
     * {@link StateOptions#firstWrite()} the etag must be the current one (or
     * null for a key that has none), else {@link EtagMismatchException}.
     */
    public void saveState(String storeName, String key, String etag, byte[] value, StateOptions options) {
        saveState(storeName, key, etag, value, null, options);
    }

    /** The same with item metadata, e.g. {@code Map.of(Metadata.TTL_IN_SECONDS, "60")}. */
    public void saveState(String storeName, String key, String etag, byte[] value, Map<String, String> metadata,
            StateOptions options) {
        Args.notEmpty(key, "key");
        Args.notNull(value, "value");
        call(Rpc.SAVE_STATE, saveReq(storeName, List.of(new State(key, value, etag, metadata, options))));
    }

    public CompletableFuture<Void> saveStateAsync(String storeName, String key, byte[] value) {
        Args.notEmpty(key, "key");
        Args.notNull(value, "value");
        return async(Rpc.SAVE_STATE, saveReq(storeName, List.of(new State(key, value))), r -> null);
    }

    /** Saves several items in one call. */
    public void saveBulkState(String storeName, List<State> states) {
        call(Rpc.SAVE_STATE, saveReq(storeName, states));
    }

    public CompletableFuture<Void> saveBulkStateAsync(String storeName, List<State> states) {
        return async(Rpc.SAVE_STATE, saveReq(storeName, states), r -> null);
    }

    private static dev.weft.proto.runtime.v1.State.GetBulkStateRequest bulkReq(String store, List<String> keys) {
        Args.notEmpty(store, "storeName");
        Args.notEmpty(keys, "keys");
        for (int i = 0; i < keys.size(); i++) {
            Args.notEmpty(keys.get(i), "keys[" + i + "]");
        }
        return dev.weft.proto.runtime.v1.State.GetBulkStateRequest.newBuilder().setStoreName(store).addAllKeys(keys).build();
    }

    private static List<State> bulk(dev.weft.proto.runtime.v1.State.GetBulkStateResponse r) {
        List<State> out = new ArrayList<>();
        for (var i : r.getItemsList()) {
            boolean none = i.getData().isEmpty() && i.getEtag().isEmpty();
            out.add(new State(i.getKey(), none ? null : i.getData().toByteArray(), i.getEtag(), i.getMetadataMap(),
                    null, i.getError()));
        }
        return out;
    }

    /** Reads several keys; each answer carries its value (or none) or its error. */
    public List<State> getBulkState(String storeName, List<String> keys) {
        return bulk(call(Rpc.GET_BULK_STATE, bulkReq(storeName, keys)));
    }

    public CompletableFuture<List<State>> getBulkStateAsync(String storeName, List<String> keys) {
        return async(Rpc.GET_BULK_STATE, bulkReq(storeName, keys), WeftClient::bulk);
    }

    private static dev.weft.proto.runtime.v1.State.DeleteStateRequest delReq(String store, String key, String etag,
            StateOptions o, Map<String, String> md) {
        Args.notEmpty(store, "storeName");
        Args.notEmpty(key, "key");
        var b = dev.weft.proto.runtime.v1.State.DeleteStateRequest.newBuilder().setStoreName(store).setKey(key);
        if (etag != null) {
            b.setEtag(Common.Etag.newBuilder().setValue(etag));
        }
        if (o != null) {
            b.setOptions(options(o));
        }
        if (md != null) {
            b.putAllMetadata(md);
        }
        return b.build();
    }

    public void deleteState(String storeName, String key) {
        call(Rpc.DELETE_STATE, delReq(storeName, key, null, null, null));
    }

    /** Deletes a key; with an etag (and first-write) only if it is still the current one. */
    public void deleteState(String storeName, String key, String etag, StateOptions options) {
        call(Rpc.DELETE_STATE, delReq(storeName, key, etag, options, null));
    }

    public CompletableFuture<Void> deleteStateAsync(String storeName, String key) {
        return async(Rpc.DELETE_STATE, delReq(storeName, key, null, null, null), r -> null);
    }

    /** Deletes several keys (each may carry an etag). */
    public void deleteBulkState(String storeName, List<State> states) {
        Args.notEmpty(storeName, "storeName");
        Args.notEmpty(states, "states");
        var b = dev.weft.proto.runtime.v1.State.DeleteBulkStateRequest.newBuilder().setStoreName(storeName);
        for (State s : states) {
            b.addStates(itemOrKey(s));
        }
        call(Rpc.DELETE_BULK_STATE, b.build());
    }

    private static dev.weft.proto.runtime.v1.State.ExecuteStateTransactionRequest txReq(String store,
            List<TransactionalStateOperation> ops, Map<String, String> md) {
        Args.notEmpty(store, "storeName");
        Args.notEmpty(ops, "operations");
        var b = dev.weft.proto.runtime.v1.State.ExecuteStateTransactionRequest.newBuilder().setStoreName(store);
        if (md != null) {
            b.putAllMetadata(md);
        }
        for (int i = 0; i < ops.size(); i++) {
            TransactionalStateOperation op = ops.get(i);
            Common.StateItem it = op.getOperation() == TransactionalStateOperation.OperationType.UPSERT
                    ? item(op.getRequest(), "operations[" + i + "]")
                    : itemOrKey(op.getRequest());
            b.addOperations(dev.weft.proto.runtime.v1.State.TransactionalStateOperation.newBuilder()
                    .setOperationType(op.getOperation().wire).setRequest(it));
        }
        return b.build();
    }

    /** Upserts and deletes, all or nothing. */
    public void executeStateTransaction(String storeName, List<TransactionalStateOperation> operations) {
        call(Rpc.EXECUTE_STATE_TRANSACTION, txReq(storeName, operations, null));
    }

    public void executeStateTransaction(String storeName, List<TransactionalStateOperation> operations,
            Map<String, String> metadata) {
        call(Rpc.EXECUTE_STATE_TRANSACTION, txReq(storeName, operations, metadata));
    }

    public CompletableFuture<Void> executeStateTransactionAsync(String storeName,
            List<TransactionalStateOperation> operations) {
        return async(Rpc.EXECUTE_STATE_TRANSACTION, txReq(storeName, operations, null), r -> null);
    }

    // === impl configuration ===

    static Map<String, ConfigurationItem> items(Map<String, Common.ConfigurationItem> m) {
        Map<String, ConfigurationItem> out = new LinkedHashMap<>();
        for (var e : m.entrySet()) {
            out.put(e.getKey(), new ConfigurationItem(e.getKey(), e.getValue().getValue(), e.getValue().getVersion(),
                    e.getValue().getMetadataMap()));
        }
        return out;
    }

    private static Configuration.GetConfigurationRequest confReq(String store, List<String> keys,
            Map<String, String> md) {
        Args.notEmpty(store, "storeName");
        Args.notNull(keys, "keys");
        for (int i = 0; i < keys.size(); i++) {
            Args.notEmpty(keys.get(i), "keys[" + i + "]");
        }
        return Configuration.GetConfigurationRequest.newBuilder().setStoreName(store).addAllKeys(keys)
                .putAllMetadata(md == null ? Map.of() : md).build();
    }

    /** Reads configuration items (no keys: all of them). */
    public Map<String, ConfigurationItem> getConfiguration(String storeName, String... keys) {
        Args.notNull(keys, "keys");
        return getConfiguration(storeName, Arrays.asList(keys), null);
    }

    public Map<String, ConfigurationItem> getConfiguration(String storeName, List<String> keys,
            Map<String, String> metadata) {
        return items(call(Rpc.GET_CONFIGURATION, confReq(storeName, keys, metadata)).getItemsMap());
    }

    public CompletableFuture<Map<String, ConfigurationItem>> getConfigurationAsync(String storeName, List<String> keys) {
        return async(Rpc.GET_CONFIGURATION, confReq(storeName, keys, null), r -> items(r.getItemsMap()));
    }

    /** A running configuration subscription; close() unsubscribes. */
    public interface ConfigurationSubscription extends Subscription {
        /** The id the runtime gave it (it changes when the subscription is opened again after a restart). */
        String getId();
    }

    /**
     * Subscribes to changes of configuration keys; the listener gets each
     * update in order on a thread of its own. Returns once the runtime
     * confirmed the subscription (its id is known).
     */
    public ConfigurationSubscription subscribeConfiguration(String storeName, List<String> keys,
            Consumer<SubscribeConfigurationResponse> listener) {
        return subscribeConfiguration(storeName, keys, Map.of(), listener);
    }

    public ConfigurationSubscription subscribeConfiguration(String storeName, List<String> keys,
            Map<String, String> metadata, Consumer<SubscribeConfigurationResponse> listener) {
        confReq(storeName, keys, metadata);
        Args.notNull(listener, "listener");
        Streams.Config c = new Streams.Config(core, storeName, keys, metadata, listener);
        core.track(c);
        c.start(startTimeout());
        return c;
    }

    /** Ends a configuration subscription by id (as the Dapr SDK: id first, then the store). */
    public UnsubscribeConfigurationResponse unsubscribeConfiguration(String id, String storeName) {
        Args.notEmpty(id, "id");
        Args.notEmpty(storeName, "storeName");
        var r = call(Rpc.UNSUBSCRIBE_CONFIGURATION,
                Configuration.UnsubscribeConfigurationRequest.newBuilder().setStoreName(storeName).setId(id).build());
        return new UnsubscribeConfigurationResponse(r.getOk(), r.getMessage());
    }

    // === impl pub/sub ===

    private static Pubsub.PublishEventRequest pubReq(String pubsub, String topic, byte[] data, String contentType,
            Map<String, String> md) {
        Args.notEmpty(pubsub, "pubsubName");
        Args.notEmpty(topic, "topic");
        Args.notNull(data, "data");
        return Pubsub.PublishEventRequest.newBuilder().setPubsubName(pubsub).setTopic(topic)
                .setData(ByteString.copyFrom(data)).setDataContentType(contentType == null ? "" : contentType)
                .putAllMetadata(md == null ? Map.of() : md).build();
    }

    /** Publishes text; the runtime wraps it in a CloudEvent. */
    public void publishEvent(String pubsubName, String topic, String data) {
        Args.notNull(data, "data");
        publishEvent(pubsubName, topic, data.getBytes(StandardCharsets.UTF_8), "text/plain", null);
    }

    /**
     * Publishes bytes. Metadata: {@link Metadata#PARTITION_KEY} (ordering
     * key), {@link Metadata#RAW_PAYLOAD} {@code "true"} (no CloudEvent
     * envelope); content type {@code application/cloudevents+json} passes
     * the app's own envelope through.
     */
    public void publishEvent(String pubsubName, String topic, byte[] data, String contentType,
            Map<String, String> metadata) {
        call(Rpc.PUBLISH_EVENT, pubReq(pubsubName, topic, data, contentType, metadata));
    }

    public CompletableFuture<Void> publishEventAsync(String pubsubName, String topic, byte[] data, String contentType,
            Map<String, String> metadata) {
        return async(Rpc.PUBLISH_EVENT, pubReq(pubsubName, topic, data, contentType, metadata), r -> null);
    }

    private static Pubsub.BulkPublishRequest bulkPubReq(String pubsub, String topic, List<BulkPublishEntry> entries,
            Map<String, String> md) {
        Args.notEmpty(pubsub, "pubsubName");
        Args.notEmpty(topic, "topic");
        Args.notEmpty(entries, "entries");
        var b = Pubsub.BulkPublishRequest.newBuilder().setPubsubName(pubsub).setTopic(topic)
                .putAllMetadata(md == null ? Map.of() : md);
        Set<String> ids = new java.util.HashSet<>();
        for (BulkPublishEntry e : entries) {
            if (!ids.add(e.getEntryId())) {
                throw new IllegalArgumentException("entries: entryId '" + e.getEntryId() + "' is used twice");
            }
            b.addEntries(Pubsub.BulkPublishRequestEntry.newBuilder().setEntryId(e.getEntryId())
                    .setEvent(ByteString.copyFrom(e.getEvent())).setContentType(e.getContentType())
                    .putAllMetadata(e.getMetadata()));
        }
        return b.build();
    }

    private static BulkPublishResponse bulkPub(Pubsub.BulkPublishResponse r) {
        List<BulkPublishResponse.FailedEntry> f = new ArrayList<>();
        for (var e : r.getFailedEntriesList()) {
            f.add(new BulkPublishResponse.FailedEntry(e.getEntryId(), e.getError()));
        }
        return new BulkPublishResponse(f);
    }

    /** Publishes several events of one content type in one call; entry ids are their indexes. */
    public BulkPublishResponse publishEvents(String pubsubName, String topic, String contentType, List<byte[]> events) {
        Args.notEmpty(events, "events");
        List<BulkPublishEntry> entries = new ArrayList<>();
        for (int i = 0; i < events.size(); i++) {
            entries.add(new BulkPublishEntry(Integer.toString(i), events.get(i), contentType, null));
        }
        return publishEvents(pubsubName, topic, entries, null);
    }

    /** Publishes entries with their own ids, content types and metadata (e.g. a partitionKey each). */
    public BulkPublishResponse publishEvents(String pubsubName, String topic, List<BulkPublishEntry> entries,
            Map<String, String> metadata) {
        return bulkPub(call(Rpc.BULK_PUBLISH_EVENT, bulkPubReq(pubsubName, topic, entries, metadata)));
    }

    public CompletableFuture<BulkPublishResponse> publishEventsAsync(String pubsubName, String topic,
            List<BulkPublishEntry> entries, Map<String, String> metadata) {
        return async(Rpc.BULK_PUBLISH_EVENT, bulkPubReq(pubsubName, topic, entries, metadata), WeftClient::bulkPub);
    }

    /**
     * Subscribes to a topic over a stream this client opens (no app port):
     * events reach the handler one at a time in delivery order and are acked
     * with its verdict once it returns. The runtime owns the consumer group
     * (the app id) and partition order. Returns once the runtime confirmed
     * the subscription; after a runtime restart it is opened again.
     */
    public Subscription subscribeToEvents(String pubsubName, String topic, TopicHandler handler) {
        return subscribeToEvents(pubsubName, topic, Map.of(), handler);
    }

    /** The same with subscription metadata (e.g. {@link Metadata#RETRY_BACKOFF}, maxInFlightPartitions). */
    public Subscription subscribeToEvents(String pubsubName, String topic, Map<String, String> metadata,
            TopicHandler handler) {
        Args.notEmpty(pubsubName, "pubsubName");
        Args.notEmpty(topic, "topic");
        Args.notNull(metadata, "metadata");
        Args.notNull(handler, "handler");
        Streams.Topic t = new Streams.Topic(core, pubsubName, topic, metadata, handler);
        core.track(t);
        t.start(startTimeout());
        return t;
    }

    // === impl service invocation ===

    private static Invoke.InvokeServiceRequest invReq(InvokeMethodRequest r) {
        Common.HTTPExtension.Builder ext = Common.HTTPExtension.newBuilder()
                .setVerbValue(r.httpExtension.getMethod().ordinal()).setQuerystring(r.httpExtension.getQueryString());
        return Invoke.InvokeServiceRequest.newBuilder().setId(r.appId)
                .setMessage(Common.InvokeRequest.newBuilder().setMethod(r.method)
                        .setData(Any.newBuilder().setValue(ByteString.copyFrom(r.data)))
                        .setContentType(r.contentType).setHttpExtension(ext))
                .build();
    }

    private Transport.CallOpts invOpts(InvokeMethodRequest r) {
        long t = r.timeout != null ? r.timeout.toNanos() : timeoutNanos;
        Transport.CallOpts o = Transport.CallOpts.timeout(t, Map.copyOf(r.metadata));
        o.responseMetadata = new ConcurrentHashMap<>();
        return o;
    }

    /** Calls a method of another app (or of this one) by app id; returns the answer's data. */
    public byte[] invokeMethod(String appId, String methodName, byte[] data, HttpExtension httpExtension) {
        Args.notNull(data, "data");
        Args.notNull(httpExtension, "httpExtension");
        return invokeMethod(new InvokeMethodRequest(appId, methodName).setBody(data).setHttpExtension(httpExtension))
                .getData();
    }

    /** The full form: metadata, content type, timeout; the answer with its content type and metadata. */
    public InvokeMethodResponse invokeMethod(InvokeMethodRequest request) {
        Args.notNull(request, "request");
        Transport.CallOpts o = invOpts(request);
        Common.InvokeResponse r = core.transport().call(Rpc.INVOKE_SERVICE, invReq(request), o);
        return new InvokeMethodResponse(r.getData().getValue().toByteArray(), r.getContentType(), o.responseMetadata);
    }

    public CompletableFuture<InvokeMethodResponse> invokeMethodAsync(InvokeMethodRequest request) {
        Args.notNull(request, "request");
        Transport.CallOpts o = invOpts(request);
        return core.transport().callAsync(Rpc.INVOKE_SERVICE, invReq(request), o).thenApply(
                r -> new InvokeMethodResponse(r.getData().getValue().toByteArray(), r.getContentType(), o.responseMetadata));
    }

    /**
     * Receives this app's invocations over a stream this client opens
     * (ServeInvocations; the runtime must run without --app-port). Handlers
     * run on the client's handler threads, concurrently. Returns once the
     * runtime registered the stream; after a restart it is opened again.
     */
    public Subscription serveInvocations(InvocationHandler handler) {
        Args.notNull(handler, "handler");
        Streams.AppChannel a = new Streams.AppChannel(core, handler, core.handlers);
        core.track(a);
        a.start(startTimeout());
        return a;
    }

    // === impl metadata and shutdown ===

    private static RuntimeMetadata metadata(dev.weft.proto.runtime.v1.Metadata.GetMetadataResponse r) {
        List<RuntimeMetadata.Component> comps = new ArrayList<>();
        for (var c : r.getRegisteredComponentsList()) {
            comps.add(new RuntimeMetadata.Component(c.getName(), c.getType(), c.getVersion(), c.getCapabilitiesList()));
        }
        List<RuntimeMetadata.TopicSubscription> subs = new ArrayList<>();
        for (var s : r.getSubscriptionsList()) {
            subs.add(new RuntimeMetadata.TopicSubscription(s.getPubsubName(), s.getTopic()));
        }
        return new RuntimeMetadata(r.getId(), r.getRuntimeVersion(), r.getEnabledFeaturesList(), comps, subs,
                r.getExtendedMetadataMap());
    }

    /** The runtime's metadata: app id, version, components, subscriptions. */
    public RuntimeMetadata getMetadata() {
        return metadata(call(Rpc.GET_METADATA, dev.weft.proto.runtime.v1.Metadata.GetMetadataRequest.getDefaultInstance()));
    }

    public CompletableFuture<RuntimeMetadata> getMetadataAsync() {
        return async(Rpc.GET_METADATA, dev.weft.proto.runtime.v1.Metadata.GetMetadataRequest.getDefaultInstance(),
                WeftClient::metadata);
    }

    /** Sets an extended metadata attribute of the runtime. */
    public void setMetadata(String key, String value) {
        Args.notEmpty(key, "key");
        Args.notNull(value, "value");
        call(Rpc.SET_METADATA, dev.weft.proto.runtime.v1.Metadata.SetMetadataRequest.newBuilder().setKey(key)
                .setValue(value).build());
    }

    /** Asks the runtime to shut down gracefully. */
    public void shutdown() {
        call(Rpc.SHUTDOWN, DaprOuterClass.ShutdownRequest.getDefaultInstance());
    }

    /** Waits until the runtime answers GetMetadata, at most {@code timeout}. */
    public void waitForSidecar(Duration timeout) {
        Args.notNull(timeout, "timeout");
        long end = System.nanoTime() + timeout.toNanos();
        WeftException last = null;
        while (System.nanoTime() - end < 0) {
            try {
                withTimeout(Duration.ofSeconds(1)).getMetadata();
                return;
            } catch (UnavailableException | DeadlineExceededException e) {
                last = e;
            }
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new CancelledException("waitForSidecar: interrupted");
            }
        }
        throw new UnavailableException("the runtime did not answer within " + timeout.toMillis() + " ms"
                + (last == null ? "" : ": " + last.getStatusMessage()), last);
    }

    private long startTimeout() {
        return timeoutNanos > 0 ? timeoutNanos : TimeUnit.SECONDS.toNanos(10);
    }

    /** Ends every subscription and app channel of this client, then its transport. A view's close does nothing. */
    @Override
    public void close() {
        if (!view) {
            core.close();
        }
    }

    // === impl shared core ===

    /** What views of one client share: the transport, threads, open streams. */
    static final class Core {
        final Transport transport;
        final String fallbackReason;
        final ScheduledExecutorService timers;
        final ExecutorService callbacks;
        final ExecutorService handlers;
        private final Set<Subscription> streams = ConcurrentHashMap.newKeySet();
        private volatile boolean closed;

        Core(Transport transport, String fallbackReason, ScheduledExecutorService timers, ExecutorService callbacks,
                ExecutorService handlers) {
            this.transport = transport;
            this.fallbackReason = fallbackReason;
            this.timers = timers;
            this.callbacks = callbacks;
            this.handlers = handlers;
        }

        Transport transport() {
            if (closed) {
                throw new IllegalStateException("the client is closed");
            }
            return transport;
        }

        void track(Subscription s) {
            streams.add(s);
        }

        void forget(Subscription s) {
            streams.remove(s);
        }

        void close() {
            if (closed) {
                return;
            }
            for (Subscription s : new ArrayList<>(streams)) {
                s.close();
            }
            closed = true;
            transport.close();
            timers.shutdownNow();
            handlers.shutdown();
            callbacks.shutdown();
        }
    }

    static ExecutorService daemonPool(String prefix) {
        AtomicInteger n = new AtomicInteger();
        return Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r, prefix + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        });
    }

    // === impl builder ===

    /**
     * Builds a client. Unset options come from the environment:
     * {@code WEFT_TRANSPORT}, {@code WEFT_APP_ID} (or {@code APP_ID}),
     * {@code DAPR_GRPC_PORT} / {@code WEFT_GRPC_PORT} (default 50001),
     * {@code DAPR_API_TOKEN} / {@code WEFT_API_TOKEN},
     * {@code WEFT_UDS} (gRPC over the runtime's Unix socket instead of TCP),
     * {@code WEFT_SHM_SOCKET} (default {@code <data-dir>/shm.sock} with the
     * runtime's default data dir: {@code WEFT_DATA_DIR}, else
     * {@code $XDG_DATA_HOME/weft/<app-id>}, else
     * {@code ~/.local/share/weft/<app-id>}).
     */
    public static final class Builder {
        private final Map<String, String> env;
        private TransportKind transport;
        private String appId;
        private String grpcHost = "127.0.0.1";
        private Integer grpcPort;
        private String apiToken;
        private Path shmSocket;
        private Path grpcSocket;
        private Duration timeout;
        private int ringSize;
        private Duration spin = Duration.ofMillis(1) .dividedBy(20);
        private Duration yield = Duration.ofMillis(1).dividedBy(20);
        private int maxSpinners = Math.max(1, Runtime.getRuntime().availableProcessors() - 1);

        Builder() {
            this(System.getenv());
        }

        Builder(Map<String, String> env) {
            this.env = new HashMap<>(env);
        }

        private String env(String... names) {
            for (String n : names) {
                String v = env.get(n);
                if (v != null && !v.isEmpty()) {
                    return v;
                }
            }
            return null;
        }

        public Builder transport(TransportKind kind) {
            Args.notNull(kind, "transport");
            this.transport = kind;
            return this;
        }

        /** The runtime's {@code --app-id} (needed by the shared-memory hello). */
        public Builder appId(String appId) {
            Args.notEmpty(appId, "appId");
            this.appId = appId;
            return this;
        }

        public Builder grpcEndpoint(String host, int port) {
            Args.notEmpty(host, "host");
            grpcPort(port);
            this.grpcHost = host;
            return this;
        }

        public Builder grpcPort(int port) {
            if (port <= 0 || port > 65535) {
                throw new IllegalArgumentException("grpcPort: " + port + " is not a TCP port (1..65535)");
            }
            this.grpcPort = port;
            return this;
        }

        public Builder apiToken(String token) {
            Args.notNull(token, "apiToken");
            this.apiToken = token;
            return this;
        }

        /**
         * gRPC over the runtime's Unix socket ({@code --uds}) instead of TCP
         * (netty's native epoll transport, Linux x86_64/aarch64).
         */
        public Builder grpcSocket(Path socket) {
            Args.notNull(socket, "grpcSocket");
            this.grpcSocket = socket;
            return this;
        }

        /** The runtime's {@code --shm-socket}. */
        public Builder shmSocket(Path socket) {
            Args.notNull(socket, "shmSocket");
            this.shmSocket = socket;
            return this;
        }

        /** A deadline for every call (none by default; {@link WeftClient#withTimeout} per call). */
        public Builder timeout(Duration timeout) {
            if (timeout == null || timeout.isNegative() || timeout.isZero()) {
                throw new IllegalArgumentException("timeout must be positive, got " + timeout);
            }
            this.timeout = timeout;
            return this;
        }

        /** Ring size of each direction (power of two, 4096..2^28; 0 = the runtime's default, 1 MiB). */
        public Builder shmRingSize(int bytes) {
            if (bytes != 0 && !dev.weft.sdk.shm.Protocol.validRingSize(bytes)) {
                throw new IllegalArgumentException("shmRingSize: " + bytes + " is not 0 or a power of two from 4096 to 2^28");
            }
            this.ringSize = bytes;
            return this;
        }

        /**
         * How long a caller spins, then yields, waiting for its answer before
         * it sleeps (default 50 µs each, as the runtime's
         * --shm-spin-micros/--shm-yield-micros). Spinning costs CPU and saves
         * a kernel wake-up (tens of µs) per call.
         */
        public Builder shmIdle(Duration spin, Duration yield) {
            if (spin == null || spin.isNegative()) {
                throw new IllegalArgumentException("spin must be zero or positive, got " + spin);
            }
            if (yield == null || yield.isNegative()) {
                throw new IllegalArgumentException("yield must be zero or positive, got " + yield);
            }
            this.spin = spin;
            this.yield = yield;
            return this;
        }

        /** How many callers may busy-spin at once (default: cores − 1); the others yield. */
        public Builder shmMaxSpinners(int n) {
            if (n < 0) {
                throw new IllegalArgumentException("shmMaxSpinners: " + n + " is negative");
            }
            this.maxSpinners = n;
            return this;
        }

        private Path defaultSocket(String id) {
            String s = env("WEFT_SHM_SOCKET");
            if (s != null) {
                return Path.of(s);
            }
            String dataDir = env("WEFT_DATA_DIR");
            if (dataDir != null) {
                return Path.of(dataDir, "shm.sock");
            }
            String xdg = env("XDG_DATA_HOME");
            if (xdg != null) {
                return Path.of(xdg, "weft", id, "shm.sock");
            }
            return Path.of(System.getProperty("user.home"), ".local", "share", "weft", id, "shm.sock");
        }

        public WeftClient build() {
            TransportKind kind = transport;
            if (kind == null) {
                String t = env("WEFT_TRANSPORT");
                kind = t == null ? TransportKind.AUTO : TransportKind.parse(t, "WEFT_TRANSPORT");
            }
            int port;
            if (grpcPort != null) {
                port = grpcPort;
            } else {
                String p = env("DAPR_GRPC_PORT", "WEFT_GRPC_PORT");
                try {
                    port = p == null ? 50001 : Integer.parseInt(p.trim());
                } catch (NumberFormatException e) {
                    throw new IllegalArgumentException("DAPR_GRPC_PORT: '" + p + "' is not a port number");
                }
            }
            String token = apiToken != null ? apiToken : env("DAPR_API_TOKEN", "WEFT_API_TOKEN");
            Path uds = grpcSocket != null ? grpcSocket : (env("WEFT_UDS") == null ? null : Path.of(env("WEFT_UDS")));
            String id = appId != null ? appId : env("WEFT_APP_ID", "APP_ID");
            ScheduledExecutorService timers = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "weft-timers");
                t.setDaemon(true);
                return t;
            });
            ExecutorService callbacks = daemonPool("weft-callback-");
            ExecutorService handlers = daemonPool("weft-handler-");
            long tn = timeout == null ? 0 : timeout.toNanos();
            String reason = null;
            Transport tr = null;
            GrpcTransport grpc = null;
            try {
                if (kind != TransportKind.GRPC) {
                    try {
                        if (id == null) {
                            // Learn the app id from the runtime itself.
                            grpc = uds != null ? GrpcTransport.unix(uds, token) : new GrpcTransport(grpcHost, port, token);
                            id = grpc.call(Rpc.GET_METADATA,
                                    dev.weft.proto.runtime.v1.Metadata.GetMetadataRequest.getDefaultInstance(),
                                    Transport.CallOpts.timeout(TimeUnit.SECONDS.toNanos(5), Map.of())).getId();
                        }
                        Path sock = shmSocket != null ? shmSocket : defaultSocket(id);
                        ShmSession.IdleStrategy idle = new ShmSession.IdleStrategy(spin.toNanos(), yield.toNanos(),
                                spin.toNanos(), maxSpinners);
                        ShmTransport shm = new ShmTransport(sock, id, token == null ? "" : token, ringSize,
                                TimeUnit.SECONDS.toNanos(5), idle, callbacks, timers);
                        shm.connect();
                        tr = shm;
                    } catch (WeftException e) {
                        if (kind == TransportKind.SHM) {
                            throw e;
                        }
                        reason = e.getStatusMessage();
                    }
                }
                if (tr == null) {
                    GrpcTransport g = grpc != null ? grpc
                            : uds != null ? GrpcTransport.unix(uds, token) : new GrpcTransport(grpcHost, port, token);
                    tr = g;
                    grpc = null;
                    if (reason != null) {
                        LOG.log(Level.INFO, "weft: using gRPC at {0}, not shared memory: {1}",
                                new Object[] {g.target, reason});
                    }
                }
            } catch (RuntimeException e) {
                timers.shutdownNow();
                callbacks.shutdown();
                handlers.shutdown();
                throw e;
            } finally {
                if (grpc != null) {
                    grpc.close();
                }
            }
            return new WeftClient(new Core(tr, reason, timers, callbacks, handlers), tn, false);
        }
    }
}
