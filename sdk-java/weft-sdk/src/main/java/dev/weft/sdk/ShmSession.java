package dev.weft.sdk;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Message;
import com.google.protobuf.Parser;
import dev.weft.sdk.shm.CallContextCodec;
import dev.weft.sdk.shm.Protocol;
import dev.weft.sdk.shm.ProtocolException;
import dev.weft.sdk.shm.Ring;
import dev.weft.sdk.shm.SegmentHeader;
import java.io.IOException;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executor;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;
import weft.runtime.v1.Appchannel;
import weft.runtime.v1.Shm.CallContext;

/**
 * One shared-memory session with the runtime (docs/shm-protocol.md): the
 * control socket, the mapped segment and its two rings.
 *
 * <p>Ring A (app→runtime) has one producer at a time ({@link #txLock}).
 * Ring B (runtime→app) is consumed by whichever thread holds
 * {@link #rxLock}: a caller waiting for its answer reads the ring itself
 * while it spins (no thread hand-off on the fast path), and a background
 * thread reads it when no caller is spinning — for streams, asynchronous
 * calls and callers that went to sleep — and is the only thread that sleeps
 * on the socket (§7.1).
 */
final class ShmSession {
    private static final byte[] WAKE = {1};

    final Path socketPath;
    final SegmentHeader header;
    final boolean contextFeature;
    private final SocketChannel sock;
    private final Selector selector;
    private final MappedByteBuffer segment;
    private final Ring tx;
    private final Ring rx;
    private final IdleStrategy idle;
    private final Executor callbacks;
    private final ScheduledExecutorService timers;

    private final ReentrantLock txLock = new ReentrantLock();
    private final ReentrantLock rxLock = new ReentrantLock();
    private final AtomicLong nextCorrelation = new AtomicLong(1);
    private final ConcurrentHashMap<Long, Pending> pending = new ConcurrentHashMap<>();
    private final AtomicInteger spinningCallers = new AtomicInteger();
    private volatile boolean readerSleeping;
    private volatile WeftException dead;
    private final Thread reader;
    private final byte[] socketBuf = new byte[4096];
    private int goodbyeLen = -1;
    private byte[] goodbye;

    private ShmSession(Path socketPath, SocketChannel sock, Selector selector, MappedByteBuffer segment,
            SegmentHeader header, IdleStrategy idle, Executor callbacks, ScheduledExecutorService timers) {
        this.socketPath = socketPath;
        this.sock = sock;
        this.selector = selector;
        this.segment = segment;
        this.header = header;
        this.contextFeature = (header.features() & Protocol.FEATURE_CONTEXT) != 0;
        this.tx = new Ring(segment, (int) header.a2rOffset(), header.a2rCapacity(), "app->runtime");
        this.rx = new Ring(segment, (int) header.r2aOffset(), header.r2aCapacity(), "runtime->app");
        this.idle = idle;
        this.callbacks = callbacks;
        this.timers = timers;
        this.reader = new Thread(this::readLoop, "weft-shm-reader-" + header.sessionId());
        this.reader.setDaemon(true);
    }

    // === impl handshake ===

    /** Connects, says hello, maps the segment and acknowledges it (§2). */
    static ShmSession connect(Path socketPath, String appId, String token, int ringA, int ringB, long timeoutNanos,
            IdleStrategy idle, Executor callbacks, ScheduledExecutorService timers) {
        long deadline = System.nanoTime() + timeoutNanos;
        SocketChannel sock = null;
        Selector selector = null;
        try {
            try {
                sock = SocketChannel.open(java.net.UnixDomainSocketAddress.of(socketPath));
            } catch (IOException e) {
                throw new UnavailableException("cannot connect to the runtime's shared-memory socket " + socketPath
                        + ": " + e.getMessage(), e);
            }
            writeFully(sock, Protocol.encodeHello(Protocol.VERSION, ringA, ringB, appId, token));
            sock.configureBlocking(false);
            selector = Selector.open();
            sock.register(selector, SelectionKey.OP_READ);
            byte[] head = readFully(sock, selector, 20, deadline);
            int len = Protocol.welcomeTextLength(head);
            byte[] text = readFully(sock, selector, len, deadline);
            ByteBuffer hb = ByteBuffer.wrap(head).order(ByteOrder.LITTLE_ENDIAN);
            int status = hb.getInt(12);
            String msg = new String(text, StandardCharsets.UTF_8);
            if (status != 0) {
                throw WeftException.of(StatusCode.of(status), "the runtime refused the shared-memory session on "
                        + socketPath + ": " + msg);
            }
            Path seg = Path.of(msg);
            MappedByteBuffer mapped;
            long size;
            try (FileChannel fc = FileChannel.open(seg, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
                size = fc.size();
                if (size > Integer.MAX_VALUE) {
                    throw new ProtocolException("segment " + seg + " of " + size + " bytes is too large to map");
                }
                mapped = fc.map(FileChannel.MapMode.READ_WRITE, 0, size);
            }
            mapped.order(ByteOrder.LITTLE_ENDIAN);
            SegmentHeader h = SegmentHeader.parse(mapped, size);
            long me = ProcessHandle.current().pid();
            if (h.appPid() != me) {
                throw new ProtocolException("segment " + seg + " is for pid " + h.appPid() + ", not this process " + me);
            }
            writeFully(sock, Protocol.MAPPED);
            ShmSession s = new ShmSession(socketPath, sock, selector, mapped, h, idle, callbacks, timers);
            s.reader.start();
            return s;
        } catch (ProtocolException e) {
            closeQuietly(sock, selector);
            throw new UnavailableException("shared-memory handshake with " + socketPath + " failed: " + e.getMessage(), e);
        } catch (IOException e) {
            closeQuietly(sock, selector);
            throw new UnavailableException("shared-memory handshake with " + socketPath + " failed: " + e, e);
        } catch (RuntimeException e) {
            closeQuietly(sock, selector);
            throw e;
        }
    }

    private static void writeFully(SocketChannel sock, byte[] b) throws IOException {
        ByteBuffer bb = ByteBuffer.wrap(b);
        while (bb.hasRemaining()) {
            if (sock.write(bb) == 0) {
                Thread.onSpinWait();
            }
        }
    }

    private static byte[] readFully(SocketChannel sock, Selector sel, int n, long deadline) throws IOException {
        ByteBuffer bb = ByteBuffer.allocate(n);
        while (bb.hasRemaining()) {
            int r = sock.read(bb);
            if (r < 0) {
                throw new UnavailableException("the runtime closed the shared-memory socket during the handshake");
            }
            if (r == 0) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    throw new UnavailableException("no welcome from the runtime's shared-memory socket in time");
                }
                sel.select(Math.max(1, TimeUnit.NANOSECONDS.toMillis(left)));
                sel.selectedKeys().clear();
            }
        }
        return bb.array();
    }

    private static void closeQuietly(SocketChannel sock, Selector sel) {
        try {
            if (sel != null) {
                sel.close();
            }
            if (sock != null) {
                sock.close();
            }
        } catch (IOException ignored) {
            // closing anyway
        }
    }

    boolean alive() {
        return dead == null;
    }

    /** Ends the session: the runtime sees the socket close (§8). */
    void close() {
        die(new UnavailableException("the shared-memory session was closed by the client"));
    }

    private void die(WeftException why) {
        synchronized (this) {
            if (dead != null) {
                return;
            }
            dead = why;
        }
        closeQuietly(sock, selector);
        for (Long corr : pending.keySet()) {
            Pending p = pending.remove(corr);
            if (p != null) {
                p.fail(why);
            }
        }
        LockSupport.unpark(reader);
    }

    private WeftException deadError(String rpc) {
        WeftException d = dead;
        return new UnavailableException(rpc + " over shared memory: " + d.getStatusMessage(), d);
    }

    // === impl sending ===

    private byte[] contextBlock(Transport.CallOpts opts, String rpc) {
        if (!contextFeature) {
            if (!opts.metadata.isEmpty()) {
                throw new WeftException(StatusCode.FAILED_PRECONDITION, rpc + ": the runtime's shared-memory "
                        + "transport does not carry call metadata (segment feature CONTEXT not set); use the gRPC transport");
            }
            return null;
        }
        if (!opts.hasDeadline && opts.metadata.isEmpty()) {
            return null;
        }
        CallContext.Builder b = CallContext.newBuilder();
        if (opts.hasDeadline) {
            b.setTimeoutMicros(Math.max(1, TimeUnit.NANOSECONDS.toMicros(opts.remainingNanos())));
        }
        for (Map.Entry<String, String> e : opts.metadata.entrySet()) {
            b.addMetadata(Appchannel.Metadata.newBuilder().setKey(e.getKey()).addValues(e.getValue()));
        }
        return CallContextCodec.encode(b.build());
    }

    /** Publishes one record on ring A and wakes the runtime if it asked for it (§7.1). */
    private void send(String rpc, int method, int flags, long corr, byte[] ctx, byte[] body, Transport.CallOpts opts) {
        if (dead != null) {
            throw deadError(rpc);
        }
        int need = Ring.recordLength(Protocol.ENVELOPE_LEN + (ctx == null ? 0 : ctx.length) + body.length);
        if (need > tx.maxRecord()) {
            throw new WeftException(StatusCode.RESOURCE_EXHAUSTED, rpc + ": the request of " + body.length
                    + " bytes needs a record of " + need + " bytes, above the shared-memory limit of " + tx.maxRecord()
                    + " (half the app->runtime ring); ask for a bigger ring or use gRPC");
        }
        long start = 0;
        txLock.lock();
        try {
            while (true) {
                boolean ok;
                try {
                    ok = tx.tryWrite(method, flags, corr, 0, ctx, body);
                } catch (ProtocolException e) {
                    die(new UnavailableException("protocol error: " + e.getMessage()));
                    throw deadError(rpc);
                }
                if (ok) {
                    break;
                }
                // The ring is full: wait for the runtime to consume.
                if (dead != null || Ring.sessionClosed(segment)) {
                    LockSupport.unpark(reader);
                    throw new UnavailableException(rpc + " over shared memory: the session ended while the ring was full");
                }
                if (opts.hasDeadline && opts.remainingNanos() <= 0) {
                    throw new DeadlineExceededException(rpc + ": the deadline passed while the app->runtime ring was full");
                }
                if (start == 0) {
                    start = System.nanoTime();
                }
                if (System.nanoTime() - start < idle.spinNanos) {
                    Thread.onSpinWait();
                } else {
                    LockSupport.parkNanos(50_000);
                }
            }
        } finally {
            txLock.unlock();
        }
        VarHandle.fullFence();
        if (tx.needWakeup()) {
            wakeRuntime();
        }
    }

    private void wakeRuntime() {
        try {
            // Non-blocking: a full socket buffer already holds a wake-up.
            sock.write(ByteBuffer.wrap(WAKE));
        } catch (IOException e) {
            die(new UnavailableException("the runtime's shared-memory socket failed: " + e.getMessage()));
        }
    }

    private void sendCancel(long corr) {
        if (dead != null) {
            return;
        }
        try {
            send("cancel", 0, Protocol.FLAG_CANCEL, corr, null, new byte[0], Transport.CallOpts.NONE);
        } catch (WeftException ignored) {
            // the session is gone: nothing to cancel
        }
    }

    // === impl unary calls ===

    <Q extends Message, R extends Message> R call(Rpc<Q, R> rpc, Q request, Transport.CallOpts opts) {
        byte[] ctx = contextBlock(opts, rpc.name);
        long corr = nextCorrelation.getAndIncrement();
        Waiter w = new Waiter(Thread.currentThread());
        pending.put(corr, w);
        try {
            send(rpc.name, rpc.shmMethod, ctx == null ? 0 : Protocol.FLAG_CONTEXT, corr, ctx, request.toByteArray(), opts);
        } catch (RuntimeException e) {
            pending.remove(corr);
            throw e;
        }
        await(w, corr, rpc.name, opts);
        if (w.error != null) {
            throw w.error;
        }
        return w.result(rpc.parser, rpc.name, opts);
    }

    private void await(Waiter w, long corr, String rpc, Transport.CallOpts opts) {
        boolean spinning = true;
        int spinners = spinningCallers.incrementAndGet();
        if (readerSleeping) {
            selector.wakeup();
        }
        boolean spin = spinners <= idle.maxSpinners;
        long start = System.nanoTime();
        try {
            while (!w.done) {
                if (spinning && rx.hasDataHint() && rxLock.tryLock()) {
                    try {
                        drain();
                    } finally {
                        rxLock.unlock();
                    }
                    if (w.done) {
                        break;
                    }
                }
                long now = System.nanoTime();
                if (opts.hasDeadline && now - opts.deadlineNanos >= 0) {
                    abandon(corr);
                    throw new DeadlineExceededException(rpc + ": the deadline passed before the runtime answered "
                            + "(over shared memory; the call was cancelled)");
                }
                if (Thread.interrupted()) {
                    abandon(corr);
                    Thread.currentThread().interrupt();
                    throw new CancelledException(rpc + ": the calling thread was interrupted (the call was cancelled)");
                }
                if (dead != null) {
                    break;
                }
                long waited = now - start;
                if (spinning && spin && waited < idle.spinNanos) {
                    Thread.onSpinWait();
                } else if (spinning && waited < idle.spinNanos + idle.yieldNanos && !Ring.sessionClosed(segment)) {
                    Thread.yield();
                } else {
                    if (spinning) {
                        // Hand the ring over to the reader thread and sleep until it delivers.
                        spinning = false;
                        if (spinningCallers.decrementAndGet() == 0) {
                            LockSupport.unpark(reader);
                        }
                    }
                    w.parked = true;
                    if (!w.done) {
                        long park = 10_000_000L;
                        if (opts.hasDeadline) {
                            park = Math.min(park, Math.max(1, opts.deadlineNanos - now));
                        }
                        LockSupport.parkNanos(this, park);
                    }
                }
            }
        } finally {
            if (spinning) {
                // No unpark here (a futex wake per call would cost more than the call): the
                // reader looks again within its park interval and reads for streams and async calls.
                spinningCallers.decrementAndGet();
            }
        }
        if (!w.done) {
            pending.remove(corr);
            throw deadError(rpc);
        }
    }

    /** Stops waiting for a call: forget it and tell the runtime (§5, cancellation). */
    private void abandon(long corr) {
        if (pending.remove(corr) != null) {
            sendCancel(corr);
        }
    }

    <Q extends Message, R extends Message> CompletableFuture<R> callAsync(Rpc<Q, R> rpc, Q request,
            Transport.CallOpts opts) {
        CompletableFuture<R> f = new CompletableFuture<>();
        byte[] ctx;
        try {
            ctx = contextBlock(opts, rpc.name);
        } catch (WeftException e) {
            f.completeExceptionally(e);
            return f;
        }
        long corr = nextCorrelation.getAndIncrement();
        AsyncCall<R> a = new AsyncCall<>(f, rpc.parser, rpc.name, opts);
        pending.put(corr, a);
        try {
            send(rpc.name, rpc.shmMethod, ctx == null ? 0 : Protocol.FLAG_CONTEXT, corr, ctx, request.toByteArray(), opts);
        } catch (RuntimeException e) {
            pending.remove(corr);
            f.completeExceptionally(e);
            return f;
        }
        if (opts.hasDeadline) {
            var timer = timers.schedule(() -> {
                if (pending.remove(corr) != null) {
                    sendCancel(corr);
                    f.completeExceptionally(new DeadlineExceededException(rpc.name
                            + ": the deadline passed before the runtime answered (over shared memory; the call was cancelled)"));
                }
            }, Math.max(0, opts.remainingNanos()), TimeUnit.NANOSECONDS);
            f.whenComplete((r, e) -> timer.cancel(false));
        }
        f.whenComplete((r, e) -> {
            if (f.isCancelled()) {
                abandon(corr);
            }
        });
        if (spinningCallers.get() == 0) {
            LockSupport.unpark(reader);
        }
        return f;
    }

    // === impl streams ===

    <Q extends Message, R extends Message> Transport.Stream<Q> open(Rpc<Q, R> rpc, Q first, Transport.CallOpts opts,
            Transport.Listener<R> listener) {
        byte[] ctx = contextBlock(opts, rpc.name);
        long corr = nextCorrelation.getAndIncrement();
        StreamCall<R> s = new StreamCall<>(listener, rpc.parser, rpc.name);
        pending.put(corr, s);
        try {
            send(rpc.name, rpc.shmMethod, ctx == null ? 0 : Protocol.FLAG_CONTEXT, corr, ctx, first.toByteArray(), opts);
        } catch (RuntimeException e) {
            pending.remove(corr);
            throw e;
        }
        if (spinningCallers.get() == 0) {
            LockSupport.unpark(reader);
        }
        return new Transport.Stream<>() {
            @Override
            public void send(Q message) {
                if (!pending.containsKey(corr)) {
                    return; // the call ended: acks may race with its end (§5)
                }
                ShmSession.this.send(rpc.name, rpc.shmMethod, Protocol.FLAG_MORE, corr, null, message.toByteArray(),
                        Transport.CallOpts.NONE);
            }

            @Override
            public void cancel() {
                abandon(corr);
            }
        };
    }

    // === impl receiving ===

    /** Reads every record on ring B and hands each to its call. Caller holds rxLock. */
    private int drain() {
        int n = 0;
        while (true) {
            Protocol.Message m;
            try {
                m = rx.poll();
            } catch (ProtocolException e) {
                die(new UnavailableException("protocol error from the runtime: " + e.getMessage()));
                return n;
            }
            if (m == null) {
                return n;
            }
            n++;
            dispatch(m);
        }
    }

    private void dispatch(Protocol.Message m) {
        Protocol.Envelope env = m.envelope();
        Pending p = pending.get(env.correlation());
        if (p == null) {
            return; // a call we no longer track (cancelled, timed out)
        }
        byte[] body = m.body();
        CallContext ctx = null;
        if ((env.flags() & Protocol.FLAG_CONTEXT) != 0) {
            try {
                CallContextCodec.Split split = CallContextCodec.split(body);
                ctx = split.context();
                body = split.rest();
            } catch (ProtocolException e) {
                die(new UnavailableException("protocol error from the runtime: " + e.getMessage()));
                return;
            }
        }
        boolean end = (env.flags() & Protocol.FLAG_END) != 0;
        if (end) {
            pending.remove(env.correlation());
        }
        p.deliver(env.status(), end, body, ctx);
    }

    private void readLoop() {
        long lastActivity = System.nanoTime();
        while (dead == null) {
            if (spinningCallers.get() > 0) {
                LockSupport.parkNanos(this, 200_000L);
                lastActivity = System.nanoTime();
                continue;
            }
            if (!rxLock.tryLock()) {
                LockSupport.parkNanos(this, 50_000L);
                continue;
            }
            try {
                if (drain() > 0) {
                    lastActivity = System.nanoTime();
                    continue;
                }
                long idleFor = System.nanoTime() - lastActivity;
                if (idleFor < idle.readerSpinNanos) {
                    Thread.onSpinWait();
                    continue;
                }
                if (idleFor < idle.readerSpinNanos + idle.yieldNanos) {
                    Thread.yield();
                    continue;
                }
                sleepOnSocket();
            } finally {
                rxLock.unlock();
            }
        }
    }

    /** §7.1: flag, fence, re-check, block on the socket; then read wake-ups, goodbye or EOF. */
    private void sleepOnSocket() {
        rx.setNeedWakeup(true);
        VarHandle.fullFence();
        readerSleeping = true;
        VarHandle.fullFence();
        try {
            if (rx.hasData() || spinningCallers.get() > 0 || dead != null) {
                return;
            }
            selector.select(100);
            selector.selectedKeys().clear();
        } catch (IOException | java.nio.channels.ClosedSelectorException e) {
            die(new UnavailableException("the runtime's shared-memory socket failed: " + e));
            return;
        } finally {
            readerSleeping = false;
            rx.setNeedWakeup(false);
        }
        readSocket();
    }

    private void readSocket() {
        try {
            while (true) {
                ByteBuffer bb = ByteBuffer.wrap(socketBuf);
                int r = sock.read(bb);
                if (r < 0) {
                    drain(); // answers published before the runtime went away still count
                    die(new UnavailableException(goodbye != null ? goodbyeMessage()
                            : "the runtime closed the shared-memory session (socket closed: runtime gone)"));
                    return;
                }
                if (r == 0) {
                    return;
                }
                for (int i = 0; i < r; i++) {
                    if (goodbyeLen >= 0) {
                        appendGoodbye(socketBuf[i]);
                    } else if (socketBuf[i] == Protocol.GOODBYE_BYTE) {
                        goodbye = new byte[64];
                        goodbyeLen = 0;
                        appendGoodbye(socketBuf[i]);
                    }
                }
                if (goodbyeLen >= 0) {
                    Protocol.Goodbye g = Protocol.decodeGoodbye(goodbye, 0, goodbyeLen);
                    if (g != null) {
                        drain();
                        die(WeftException.of(StatusCode.UNAVAILABLE, "the runtime ended the shared-memory session: "
                                + StatusCode.of(g.code()) + ": " + g.message()));
                        return;
                    }
                }
            }
        } catch (IOException e) {
            die(new UnavailableException("the runtime's shared-memory socket failed: " + e.getMessage()));
        } catch (ProtocolException e) {
            die(new UnavailableException("the runtime sent a malformed goodbye: " + e.getMessage()));
        }
    }

    private void appendGoodbye(byte b) {
        if (goodbyeLen == goodbye.length) {
            goodbye = java.util.Arrays.copyOf(goodbye, goodbye.length * 2);
        }
        goodbye[goodbyeLen++] = b;
    }

    private String goodbyeMessage() {
        Protocol.Goodbye g = Protocol.decodeGoodbye(goodbye, 0, goodbyeLen);
        return g == null ? "the runtime closed the shared-memory session"
                : "the runtime ended the shared-memory session: " + StatusCode.of(g.code()) + ": " + g.message();
    }

    // === impl pending calls ===

    private abstract static class Pending {
        /** A record of this call arrived (on the thread that reads ring B). */
        abstract void deliver(int status, boolean end, byte[] body, CallContext ctx);

        /** The session ended under this call. */
        abstract void fail(WeftException e);
    }

    static WeftException errorOf(int status, byte[] body, CallContext ctx, String rpc) {
        byte[] details = ctx == null || ctx.getStatusDetails().isEmpty() ? null : ctx.getStatusDetails().toByteArray();
        return WeftException.of(StatusCode.of(status), new String(body, StandardCharsets.UTF_8), details,
                ctx == null ? null : metadataOf(ctx), null);
    }

    static Map<String, String> metadataOf(CallContext ctx) {
        Map<String, String> m = new HashMap<>();
        for (Appchannel.Metadata md : ctx.getMetadataList()) {
            m.put(md.getKey(), String.join(",", md.getValuesList()));
        }
        return m;
    }

    /** A blocking caller. */
    private static final class Waiter extends Pending {
        final Thread owner;
        volatile boolean parked;
        volatile boolean done;
        int status;
        byte[] body;
        CallContext ctx;
        WeftException error;

        Waiter(Thread owner) {
            this.owner = owner;
        }

        @Override
        void deliver(int status, boolean end, byte[] body, CallContext ctx) {
            if (!end) {
                return;
            }
            this.status = status;
            this.body = body;
            this.ctx = ctx;
            finish();
        }

        @Override
        void fail(WeftException e) {
            this.error = e;
            finish();
        }

        private void finish() {
            done = true;
            if (parked) {
                LockSupport.unpark(owner);
            }
        }

        <R extends Message> R result(Parser<R> parser, String rpc, Transport.CallOpts opts) {
            if (ctx != null && opts.responseMetadata != null) {
                opts.responseMetadata.putAll(metadataOf(ctx));
            }
            if (status != 0) {
                throw errorOf(status, body, ctx, rpc);
            }
            try {
                return parser.parseFrom(body);
            } catch (InvalidProtocolBufferException e) {
                throw new WeftException(StatusCode.INTERNAL, rpc + ": the runtime's answer does not decode: "
                        + e.getMessage(), e);
            }
        }
    }

    private final class AsyncCall<R extends Message> extends Pending {
        final CompletableFuture<R> future;
        final Parser<R> parser;
        final String rpc;
        final Transport.CallOpts opts;

        AsyncCall(CompletableFuture<R> future, Parser<R> parser, String rpc, Transport.CallOpts opts) {
            this.future = future;
            this.parser = parser;
            this.rpc = rpc;
            this.opts = opts;
        }

        @Override
        void deliver(int status, boolean end, byte[] body, CallContext ctx) {
            if (!end) {
                return;
            }
            callbacks.execute(() -> {
                if (ctx != null && opts.responseMetadata != null) {
                    opts.responseMetadata.putAll(metadataOf(ctx));
                }
                if (status != 0) {
                    future.completeExceptionally(errorOf(status, body, ctx, rpc));
                    return;
                }
                try {
                    future.complete(parser.parseFrom(body));
                } catch (InvalidProtocolBufferException e) {
                    future.completeExceptionally(new WeftException(StatusCode.INTERNAL, rpc
                            + ": the runtime's answer does not decode: " + e.getMessage(), e));
                }
            });
        }

        @Override
        void fail(WeftException e) {
            callbacks.execute(() -> future.completeExceptionally(
                    new UnavailableException(rpc + " over shared memory: " + e.getStatusMessage(), e)));
        }
    }

    private static final class StreamCall<R extends Message> extends Pending {
        final Transport.Listener<R> listener;
        final Parser<R> parser;
        final String rpc;

        StreamCall(Transport.Listener<R> listener, Parser<R> parser, String rpc) {
            this.listener = listener;
            this.parser = parser;
            this.rpc = rpc;
        }

        @Override
        void deliver(int status, boolean end, byte[] body, CallContext ctx) {
            if (end) {
                listener.onClose(status == 0 ? null : errorOf(status, body, ctx, rpc));
                return;
            }
            R m;
            try {
                m = parser.parseFrom(body);
            } catch (InvalidProtocolBufferException e) {
                listener.onClose(new WeftException(StatusCode.INTERNAL, rpc + ": a stream message does not decode: "
                        + e.getMessage(), e));
                return;
            }
            listener.onMessage(m);
        }

        @Override
        void fail(WeftException e) {
            listener.onClose(new UnavailableException(rpc + " over shared memory: " + e.getStatusMessage(), e));
        }
    }

    /** How callers and the reader wait (docs/shm-protocol.md §7.3). */
    static final class IdleStrategy {
        final long spinNanos;
        final long yieldNanos;
        final long readerSpinNanos;
        final int maxSpinners;

        IdleStrategy(long spinNanos, long yieldNanos, long readerSpinNanos, int maxSpinners) {
            this.spinNanos = spinNanos;
            this.yieldNanos = yieldNanos;
            this.readerSpinNanos = readerSpinNanos;
            this.maxSpinners = maxSpinners;
        }
    }
}
