package dev.weft.sdk;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import dev.weft.proto.common.v1.Common;
import dev.weft.proto.runtime.v1.Appcallback;
import dev.weft.proto.runtime.v1.Configuration;
import dev.weft.proto.runtime.v1.Pubsub;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.logging.Level;
import java.util.logging.Logger;
import weft.runtime.v1.Appchannel;

/** The long-lived streams of a client: topic subscriptions, configuration subscriptions, the app channel. */
final class Streams {
    private static final Logger LOG = Logger.getLogger(Streams.class.getName());

    private Streams() {}

    // === impl topic subscription ===

    /** SubscribeTopicEventsAlpha1: events handed to one worker thread in delivery order; acked after the handler. */
    static final class Topic extends ResumingStream<Pubsub.SubscribeTopicEventsRequestAlpha1,
            Pubsub.SubscribeTopicEventsResponseAlpha1> {
        private record Item(int gen, Appcallback.TopicEventRequest event) {}

        private final String pubsub;
        private final String topic;
        private final Map<String, String> metadata;
        private final TopicHandler handler;
        private final LinkedBlockingQueue<Item> queue = new LinkedBlockingQueue<>();
        private final Thread worker;

        Topic(WeftClient.Core core, String pubsub, String topic, Map<String, String> metadata, TopicHandler handler) {
            super(core, Rpc.SUBSCRIBE_TOPIC_EVENTS, "subscription to " + pubsub + "/" + topic);
            this.pubsub = pubsub;
            this.topic = topic;
            this.metadata = Map.copyOf(metadata);
            this.handler = handler;
            this.worker = new Thread(this::work, "weft-subscription-" + topic);
            this.worker.setDaemon(true);
            this.worker.start();
        }

        @Override
        protected Pubsub.SubscribeTopicEventsRequestAlpha1 first() {
            return Pubsub.SubscribeTopicEventsRequestAlpha1.newBuilder()
                    .setInitialRequest(Pubsub.SubscribeTopicEventsRequestInitialAlpha1.newBuilder()
                            .setPubsubName(pubsub).setTopic(topic).putAllMetadata(metadata))
                    .build();
        }

        @Override
        protected void onItem(int gen, Pubsub.SubscribeTopicEventsResponseAlpha1 m) {
            if (m.hasInitialResponse()) {
                ready(gen);
            } else if (m.hasEventMessage()) {
                queue.add(new Item(gen, m.getEventMessage()));
            }
        }

        private void work() {
            while (!closed) {
                Item it;
                try {
                    it = queue.poll(100, TimeUnit.MILLISECONDS);
                } catch (InterruptedException e) {
                    return;
                }
                if (it == null || it.gen != generation || closed) {
                    continue; // an event of a stream that is gone: the runtime delivers it again
                }
                Appcallback.TopicEventRequest e = it.event;
                TopicEvent ev = new TopicEvent(e.getId(), e.getSource(), e.getType(), e.getSpecVersion(),
                        e.getDataContentType(), e.getTopic(), e.getPubsubName(), e.getData().toByteArray(),
                        e.getExtensions());
                SubscriptionStatus st;
                try {
                    st = handler.onEvent(ev);
                    if (st == null) {
                        st = SubscriptionStatus.RETRY;
                    }
                } catch (Exception ex) {
                    LOG.log(Level.WARNING, "weft: the handler of " + what + " failed on event " + e.getId()
                            + "; it will be delivered again", ex);
                    st = SubscriptionStatus.RETRY;
                }
                Appcallback.TopicEventResponse.TopicEventResponseStatus s;
                switch (st) {
                    case SUCCESS:
                        s = Appcallback.TopicEventResponse.TopicEventResponseStatus.SUCCESS;
                        break;
                    case DROP:
                        s = Appcallback.TopicEventResponse.TopicEventResponseStatus.DROP;
                        break;
                    default:
                        s = Appcallback.TopicEventResponse.TopicEventResponseStatus.RETRY;
                }
                send(it.gen, Pubsub.SubscribeTopicEventsRequestAlpha1.newBuilder()
                        .setEventProcessed(Pubsub.SubscribeTopicEventsRequestProcessedAlpha1.newBuilder()
                                .setId(e.getId())
                                .setStatus(Appcallback.TopicEventResponse.newBuilder().setStatus(s)))
                        .build());
            }
        }

        @Override
        protected void afterClose() {
            worker.interrupt();
        }
    }

    // === impl configuration subscription ===

    /** SubscribeConfiguration: the first message carries the id; updates go to the listener in order. */
    static final class Config extends ResumingStream<Configuration.SubscribeConfigurationRequest,
            Configuration.SubscribeConfigurationResponse> implements WeftClient.ConfigurationSubscription {
        private final String store;
        private final List<String> keys;
        private final Map<String, String> metadata;
        private final Consumer<SubscribeConfigurationResponse> listener;
        private final ExecutorService serial;
        private volatile String id;

        Config(WeftClient.Core core, String store, List<String> keys, Map<String, String> metadata,
                Consumer<SubscribeConfigurationResponse> listener) {
            super(core, Rpc.SUBSCRIBE_CONFIGURATION, "configuration subscription to " + store + " " + keys);
            this.store = store;
            this.keys = List.copyOf(keys);
            this.metadata = Map.copyOf(metadata);
            this.listener = listener;
            this.serial = Executors.newSingleThreadExecutor(r -> {
                Thread t = new Thread(r, "weft-configuration-" + store);
                t.setDaemon(true);
                return t;
            });
        }

        @Override
        protected Configuration.SubscribeConfigurationRequest first() {
            return Configuration.SubscribeConfigurationRequest.newBuilder()
                    .setStoreName(store).addAllKeys(keys).putAllMetadata(metadata).build();
        }

        @Override
        protected void onItem(int gen, Configuration.SubscribeConfigurationResponse m) {
            if (!m.getId().isEmpty()) {
                id = m.getId();
            }
            ready(gen);
            if (m.getItemsCount() == 0) {
                return;
            }
            SubscribeConfigurationResponse r = new SubscribeConfigurationResponse(m.getId().isEmpty() ? id : m.getId(),
                    WeftClient.items(m.getItemsMap()));
            serial.execute(() -> {
                try {
                    listener.accept(r);
                } catch (RuntimeException e) {
                    LOG.log(Level.WARNING, "weft: the listener of " + what + " failed", e);
                }
            });
        }

        @Override
        public String getId() {
            return id;
        }

        @Override
        protected void beforeCancel() {
            String i = id;
            if (i != null) {
                try {
                    core.transport().call(Rpc.UNSUBSCRIBE_CONFIGURATION,
                            Configuration.UnsubscribeConfigurationRequest.newBuilder().setStoreName(store).setId(i).build(),
                            Transport.CallOpts.timeout(TimeUnit.SECONDS.toNanos(5), Map.of()));
                } catch (WeftException e) {
                    // the stream is cancelled below anyway
                }
            }
        }

        @Override
        protected void afterClose() {
            serial.shutdown();
        }
    }

    // === impl app channel ===

    /** ServeInvocations: each invocation runs on the handler pool; results go back on the same stream. */
    static final class AppChannel extends ResumingStream<Appchannel.ServeInvocationsRequest,
            Appchannel.ServeInvocationsResponse> {
        private final InvocationHandler handler;
        private final ExecutorService pool;

        AppChannel(WeftClient.Core core, InvocationHandler handler, ExecutorService pool) {
            super(core, Rpc.SERVE_INVOCATIONS, "app channel (ServeInvocations)");
            this.handler = handler;
            this.pool = pool;
        }

        @Override
        protected Appchannel.ServeInvocationsRequest first() {
            return Appchannel.ServeInvocationsRequest.newBuilder()
                    .setInitial(Appchannel.ServeInvocationsInitial.getDefaultInstance()).build();
        }

        @Override
        protected void onItem(int gen, Appchannel.ServeInvocationsResponse m) {
            if (m.hasInitialResponse()) {
                ready(gen);
                return;
            }
            if (!m.hasInvocation()) {
                return;
            }
            Appchannel.Invocation inv = m.getInvocation();
            try {
                pool.execute(() -> send(gen, Appchannel.ServeInvocationsRequest.newBuilder().setResult(run(inv)).build()));
            } catch (java.util.concurrent.RejectedExecutionException e) {
                // closing: the caller gets UNAVAILABLE when the stream ends
            }
        }

        private Appchannel.InvocationResult run(Appchannel.Invocation inv) {
            Common.InvokeRequest r = inv.getRequest();
            Map<String, String> md = new HashMap<>();
            for (Appchannel.Metadata e : inv.getMetadataList()) {
                md.put(e.getKey(), String.join(",", e.getValuesList()));
            }
            HttpExtension ext = new HttpExtension(
                    HttpExtension.Verb.values()[Math.min(r.getHttpExtension().getVerbValue(), HttpExtension.Verb.values().length - 1)],
                    r.getHttpExtension().getQuerystring());
            Invocation in = new Invocation(inv.getId(), r.getMethod(), r.getData().getValue().toByteArray(),
                    r.getContentType(), ext, md, inv.getTimeoutMs() == 0 ? null : Duration.ofMillis(inv.getTimeoutMs()));
            Appchannel.InvocationResult.Builder b = Appchannel.InvocationResult.newBuilder().setId(inv.getId());
            try {
                InvokeMethodResponse resp = handler.onInvoke(in);
                if (resp == null) {
                    resp = new InvokeMethodResponse(new byte[0], "", Map.of());
                }
                b.setResponse(Common.InvokeResponse.newBuilder()
                        .setData(Any.newBuilder().setValue(ByteString.copyFrom(resp.getData())))
                        .setContentType(resp.getContentType()));
                for (Map.Entry<String, String> e : resp.getMetadata().entrySet()) {
                    b.addMetadata(Appchannel.Metadata.newBuilder().setKey(e.getKey()).addValues(e.getValue()));
                }
            } catch (WeftException e) {
                b.setCode(e.getCode().value()).setMessage(e.getStatusMessage());
                byte[] d = e.getStatusDetails();
                if (d.length > 0) {
                    b.setDetails(ByteString.copyFrom(d));
                }
            } catch (Exception e) {
                b.setCode(StatusCode.UNKNOWN.value()).setMessage(e.toString());
            }
            return b.build();
        }
    }
}
