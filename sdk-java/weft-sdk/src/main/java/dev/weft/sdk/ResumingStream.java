package dev.weft.sdk;

import com.google.protobuf.Message;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * A stream the app keeps open for as long as it wants it (a subscription,
 * the app channel): when the runtime goes away the stream is opened again,
 * with backoff, on a new session, until the app closes it. Messages of an
 * earlier opening ("generation") are never answered on a later one.
 */
abstract class ResumingStream<Q extends Message, R extends Message> implements Subscription {
    private static final Logger LOG = Logger.getLogger(ResumingStream.class.getName());

    protected final WeftClient.Core core;
    private final Rpc<Q, R> rpc;
    protected final String what;
    protected volatile int generation;
    protected volatile boolean closed;
    private volatile boolean active;
    private volatile Transport.Stream<Q> stream;
    private final CountDownLatch ready = new CountDownLatch(1);
    private volatile boolean everReady;
    private volatile WeftException startError;
    private long backoffMillis = 100;

    ResumingStream(WeftClient.Core core, Rpc<Q, R> rpc, String what) {
        this.core = core;
        this.rpc = rpc;
        this.what = what;
    }

    /** The opening message. */
    protected abstract Q first();

    /** One message of the runtime's stream of generation {@code gen} (call {@link #ready} on the first one). */
    protected abstract void onItem(int gen, R message);

    /** The stream of this generation ended (it will be opened again unless closed). */
    protected void onLost(int gen) {}

    /** Opens the stream and waits for the runtime to confirm it. */
    void start(long timeoutNanos) {
        open();
        boolean ok;
        try {
            ok = ready.await(timeoutNanos, TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            close();
            Thread.currentThread().interrupt();
            throw new CancelledException(what + ": interrupted while opening");
        }
        if (startError != null) {
            close();
            throw startError;
        }
        if (!ok) {
            close();
            throw new DeadlineExceededException(what + ": the runtime did not confirm the stream within "
                    + TimeUnit.NANOSECONDS.toMillis(timeoutNanos) + " ms");
        }
    }

    protected final void ready(int gen) {
        if (gen != generation) {
            return;
        }
        active = true;
        if (everReady) {
            LOG.log(Level.INFO, "weft: {0} resumed", what);
        }
        everReady = true;
        synchronized (this) {
            backoffMillis = 100;
        }
        ready.countDown();
    }

    private synchronized void open() {
        if (closed) {
            return;
        }
        final int gen = ++generation;
        Transport.Listener<R> listener = new Transport.Listener<>() {
            @Override
            public void onMessage(R message) {
                if (gen == generation && !closed) {
                    onItem(gen, message);
                }
            }

            @Override
            public void onClose(WeftException error) {
                lost(gen, error == null ? new UnavailableException(what + ": the runtime ended the stream") : error);
            }
        };
        try {
            stream = core.transport().open(rpc, first(), Transport.CallOpts.NONE, listener);
        } catch (WeftException e) {
            lost(gen, e);
        }
    }

    private void lost(int gen, WeftException error) {
        if (gen != generation || closed) {
            return;
        }
        active = false;
        onLost(gen);
        if (!everReady) {
            startError = error;
            ready.countDown();
            return;
        }
        long delay;
        synchronized (this) {
            delay = backoffMillis;
            backoffMillis = Math.min(2000, backoffMillis * 2);
        }
        LOG.log(Level.WARNING, "weft: {0} lost ({1}); opening it again in {2} ms",
                new Object[] {what, error.getMessage(), delay});
        try {
            core.timers.schedule(this::open, delay, TimeUnit.MILLISECONDS);
        } catch (java.util.concurrent.RejectedExecutionException e) {
            // the client is closing
        }
    }

    /** Sends on the stream of {@code gen}; dropped when that stream is gone (it was not acked then). */
    protected final boolean send(int gen, Q message) {
        Transport.Stream<Q> s = stream;
        if (gen != generation || closed || s == null) {
            return false;
        }
        try {
            s.send(message);
            return true;
        } catch (WeftException e) {
            return false;
        }
    }

    @Override
    public boolean isActive() {
        return active && !closed;
    }

    @Override
    public void close() {
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
        }
        active = false;
        beforeCancel();
        Transport.Stream<Q> s = stream;
        if (s != null) {
            s.cancel();
        }
        afterClose();
        core.forget(this);
    }

    /** Runs before the stream is cancelled (e.g. an unsubscribe call). */
    protected void beforeCancel() {}

    /** Runs after the stream is cancelled (e.g. stopping a worker). */
    protected void afterClose() {}
}
