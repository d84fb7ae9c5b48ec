package dev.weft.sdk;

import com.google.protobuf.Message;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executor;
import java.util.concurrent.ScheduledExecutorService;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The shared-memory transport: one session at a time, opened again on the
 * next call after the runtime ended the previous one (a restart), so calls
 * fail fast while the runtime is away and work again once it is back.
 */
final class ShmTransport implements Transport {
    private static final Logger LOG = Logger.getLogger(ShmTransport.class.getName());

    private final Path socket;
    private final String appId;
    private final String token;
    private final int ringSize;
    private final long handshakeNanos;
    private final ShmSession.IdleStrategy idle;
    private final Executor callbacks;
    private final ScheduledExecutorService timers;
    private final Object lock = new Object();
    private volatile ShmSession session;
    private volatile boolean closed;

    ShmTransport(Path socket, String appId, String token, int ringSize, long handshakeNanos,
            ShmSession.IdleStrategy idle, Executor callbacks, ScheduledExecutorService timers) {
        this.socket = socket;
        this.appId = appId;
        this.token = token;
        this.ringSize = ringSize;
        this.handshakeNanos = handshakeNanos;
        this.idle = idle;
        this.callbacks = callbacks;
        this.timers = timers;
    }

    /** Opens the first session now, so that a missing runtime shows at build time. */
    void connect() {
        session();
    }

    ShmSession session() {
        ShmSession s = session;
        if (s != null && s.alive()) {
            return s;
        }
        synchronized (lock) {
            if (closed) {
                throw new UnavailableException("the client is closed");
            }
            s = session;
            if (s != null && s.alive()) {
                return s;
            }
            boolean again = s != null;
            s = ShmSession.connect(socket, appId, token, ringSize, ringSize, handshakeNanos, idle, callbacks, timers);
            if (again) {
                LOG.log(Level.INFO, "weft: shared-memory session re-opened on {0} (session {1})",
                        new Object[] {socket, s.header.sessionId()});
            }
            session = s;
            return s;
        }
    }

    /** Whether the current session's runtime serves call contexts (§5.1). */
    boolean contextFeature() {
        return session().contextFeature;
    }

    @Override
    public String kind() {
        return "shm";
    }

    @Override
    public <Q extends Message, R extends Message> R call(Rpc<Q, R> rpc, Q request, CallOpts opts) {
        return session().call(rpc, request, opts);
    }

    @Override
    public <Q extends Message, R extends Message> CompletableFuture<R> callAsync(Rpc<Q, R> rpc, Q request,
            CallOpts opts) {
        ShmSession s;
        try {
            s = session();
        } catch (WeftException e) {
            return CompletableFuture.failedFuture(e);
        }
        return s.callAsync(rpc, request, opts);
    }

    @Override
    public <Q extends Message, R extends Message> Stream<Q> open(Rpc<Q, R> rpc, Q first, CallOpts opts,
            Listener<R> listener) {
        return session().open(rpc, first, opts, listener);
    }

    @Override
    public void close() {
        synchronized (lock) {
            closed = true;
            ShmSession s = session;
            if (s != null) {
                s.close();
            }
        }
    }
}
