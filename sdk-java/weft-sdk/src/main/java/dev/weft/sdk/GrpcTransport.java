package dev.weft.sdk;

import com.google.common.util.concurrent.FutureCallback;
import com.google.common.util.concurrent.Futures;
import com.google.common.util.concurrent.ListenableFuture;
import com.google.common.util.concurrent.MoreExecutors;
import com.google.protobuf.Message;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptors;
import io.grpc.Deadline;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.MetadataUtils;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/** The gRPC transport: the Dapr v1 API (and weft.runtime.v1.AppChannel) over HTTP/2 on TCP. */
final class GrpcTransport implements Transport {
    static final Metadata.Key<String> TOKEN = Metadata.Key.of("dapr-api-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<byte[]> DETAILS =
            Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER);

    private final ManagedChannel managed;
    private final Channel channel;
    final String target;

    private final io.grpc.netty.shaded.io.netty.channel.EventLoopGroup udsGroup;

    GrpcTransport(String host, int port, String token) {
        this(NettyChannelBuilder.forAddress(host, port), host + ":" + port, null, token);
    }

    /** gRPC over the runtime's Unix socket (--uds), through netty's native epoll transport. */
    static GrpcTransport unix(java.nio.file.Path socket, String token) {
        if (!io.grpc.netty.shaded.io.netty.channel.epoll.Epoll.isAvailable()) {
            throw new WeftException(StatusCode.FAILED_PRECONDITION, "gRPC over the Unix socket " + socket
                    + " needs netty's epoll transport, which is not available here: "
                    + io.grpc.netty.shaded.io.netty.channel.epoll.Epoll.unavailabilityCause());
        }
        var group = new io.grpc.netty.shaded.io.netty.channel.MultiThreadIoEventLoopGroup(1, r -> {
            Thread t = new Thread(r, "weft-grpc-uds");
            t.setDaemon(true);
            return t;
        }, io.grpc.netty.shaded.io.netty.channel.epoll.EpollIoHandler.newFactory());
        NettyChannelBuilder b = NettyChannelBuilder
                .forAddress(new io.grpc.netty.shaded.io.netty.channel.unix.DomainSocketAddress(socket.toString()))
                .eventLoopGroup(group)
                .channelType(io.grpc.netty.shaded.io.netty.channel.epoll.EpollDomainSocketChannel.class)
                .overrideAuthority("localhost");
        return new GrpcTransport(b, "unix:" + socket, group, token);
    }

    private GrpcTransport(NettyChannelBuilder builder, String target,
            io.grpc.netty.shaded.io.netty.channel.EventLoopGroup udsGroup, String token) {
        this.target = target;
        this.udsGroup = udsGroup;
        this.managed = builder
                .usePlaintext()
                .maxInboundMessageSize(64 << 20)
                .build();
        if (token != null && !token.isEmpty()) {
            Metadata md = new Metadata();
            md.put(TOKEN, token);
            this.channel = ClientInterceptors.intercept(managed, MetadataUtils.newAttachHeadersInterceptor(md));
        } else {
            this.channel = managed;
        }
    }

    @Override
    public String kind() {
        return "grpc";
    }

    private static final class PerCall {
        final Channel channel;
        final AtomicReference<Metadata> headers = new AtomicReference<>();
        final AtomicReference<Metadata> trailers = new AtomicReference<>();

        PerCall(Channel base, CallOpts opts) {
            Channel c = base;
            if (!opts.metadata.isEmpty()) {
                Metadata md = new Metadata();
                for (Map.Entry<String, String> e : opts.metadata.entrySet()) {
                    md.put(Metadata.Key.of(e.getKey(), Metadata.ASCII_STRING_MARSHALLER), e.getValue());
                }
                c = ClientInterceptors.intercept(c, MetadataUtils.newAttachHeadersInterceptor(md));
            }
            if (opts.responseMetadata != null) {
                c = ClientInterceptors.intercept(c, MetadataUtils.newCaptureMetadataInterceptor(headers, trailers));
            }
            this.channel = c;
        }

        void fill(CallOpts opts) {
            if (opts.responseMetadata == null) {
                return;
            }
            for (Metadata md : new Metadata[] {headers.get(), trailers.get()}) {
                if (md == null) {
                    continue;
                }
                for (String k : md.keys()) {
                    if (k.endsWith("-bin") || k.startsWith("grpc-") || k.equals("content-type")) {
                        continue;
                    }
                    Iterable<String> vs = md.getAll(Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER));
                    if (vs != null) {
                        opts.responseMetadata.put(k, String.join(",", vs));
                    }
                }
            }
        }
    }

    private static CallOptions options(CallOpts opts) {
        CallOptions o = CallOptions.DEFAULT;
        if (opts.hasDeadline) {
            o = o.withDeadline(Deadline.after(Math.max(0, opts.remainingNanos()), TimeUnit.NANOSECONDS));
        }
        return o;
    }

    /** The typed exception for a gRPC failure. */
    static WeftException map(Throwable t, String rpc, Map<String, String> responseMetadata) {
        if (t instanceof WeftException) {
            return (WeftException) t;
        }
        Status s = Status.fromThrowable(t);
        Metadata trailers = Status.trailersFromThrowable(t);
        byte[] details = trailers == null ? null : trailers.get(DETAILS);
        String msg = s.getDescription() != null ? s.getDescription() : s.getCode().toString();
        if (s.getCode() == Status.Code.UNAVAILABLE && s.getCause() != null) {
            msg = rpc + " over gRPC: the runtime cannot be reached (" + msg + ": " + s.getCause().getMessage() + ")";
        } else if (s.getCode() == Status.Code.CANCELLED && s.getCause() instanceof InterruptedException) {
            msg = rpc + ": the calling thread was interrupted (the call was cancelled)";
        } else if (s.getCode() == Status.Code.DEADLINE_EXCEEDED && msg.contains("deadline exceeded after")) {
            msg = rpc + ": the deadline passed before the runtime answered (over gRPC: " + msg + ")";
        }
        return WeftException.of(StatusCode.of(s.getCode().value()), msg, details, responseMetadata, t);
    }

    @Override
    public <Q extends Message, R extends Message> R call(Rpc<Q, R> rpc, Q request, CallOpts opts) {
        PerCall pc = new PerCall(channel, opts);
        try {
            R r = ClientCalls.blockingUnaryCall(pc.channel, rpc.grpc, options(opts), request);
            pc.fill(opts);
            return r;
        } catch (StatusRuntimeException e) {
            pc.fill(opts);
            throw map(e, rpc.name, opts.responseMetadata);
        }
    }

    @Override
    public <Q extends Message, R extends Message> CompletableFuture<R> callAsync(Rpc<Q, R> rpc, Q request,
            CallOpts opts) {
        PerCall pc = new PerCall(channel, opts);
        ClientCall<Q, R> call = pc.channel.newCall(rpc.grpc, options(opts));
        ListenableFuture<R> lf = ClientCalls.futureUnaryCall(call, request);
        CompletableFuture<R> f = new CompletableFuture<>() {
            @Override
            public boolean cancel(boolean mayInterrupt) {
                lf.cancel(true);
                return super.cancel(mayInterrupt);
            }
        };
        Futures.addCallback(lf, new FutureCallback<R>() {
            @Override
            public void onSuccess(R r) {
                pc.fill(opts);
                f.complete(r);
            }

            @Override
            public void onFailure(Throwable t) {
                pc.fill(opts);
                f.completeExceptionally(map(t, rpc.name, opts.responseMetadata));
            }
        }, MoreExecutors.directExecutor());
        return f;
    }

    @Override
    public <Q extends Message, R extends Message> Stream<Q> open(Rpc<Q, R> rpc, Q first, CallOpts opts,
            Listener<R> listener) {
        PerCall pc = new PerCall(channel, opts);
        ClientCall<Q, R> call = pc.channel.newCall(rpc.grpc, options(opts));
        AtomicReference<ClientCallStreamObserver<Q>> req = new AtomicReference<>();
        ClientResponseObserver<Q, R> obs = new ClientResponseObserver<>() {
            private volatile boolean cancelled;

            @Override
            public void beforeStart(ClientCallStreamObserver<Q> r) {
                req.set(r);
            }

            @Override
            public void onNext(R value) {
                if (!cancelled) {
                    listener.onMessage(value);
                }
            }

            @Override
            public void onError(Throwable t) {
                Status s = Status.fromThrowable(t);
                if (s.getCode() == Status.Code.CANCELLED && s.getDescription() != null
                        && s.getDescription().startsWith("weft: cancelled by the app")) {
                    return;
                }
                listener.onClose(map(t, rpc.name, null));
            }

            @Override
            public void onCompleted() {
                listener.onClose(null);
            }
        };
        io.grpc.stub.StreamObserver<Q> out = ClientCalls.asyncBidiStreamingCall(call, obs);
        synchronized (out) {
            out.onNext(first);
            if (rpc.grpc.getType() == io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING) {
                out.onCompleted();
            }
        }
        return new Stream<>() {
            @Override
            public void send(Q message) {
                synchronized (out) {
                    try {
                        out.onNext(message);
                    } catch (IllegalStateException e) {
                        // the call already ended: acks may race with its end
                    }
                }
            }

            @Override
            public void cancel() {
                ClientCallStreamObserver<Q> r = req.get();
                if (r != null) {
                    r.cancel("weft: cancelled by the app", null);
                }
            }
        };
    }

    /** Response headers as a plain map (for tests and error reports). */
    static Map<String, String> toMap(Metadata md) {
        Map<String, String> m = new HashMap<>();
        for (String k : md.keys()) {
            if (!k.endsWith("-bin")) {
                m.put(k, md.get(Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER)));
            }
        }
        return m;
    }

    @Override
    public void close() {
        managed.shutdownNow();
        try {
            managed.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        if (udsGroup != null) {
            udsGroup.shutdownGracefully(0, 1, TimeUnit.SECONDS);
        }
    }
}
