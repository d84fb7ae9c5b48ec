package dev.weft.sdk;

import com.google.protobuf.Message;
import java.util.Map;
import java.util.concurrent.CompletableFuture;

/** One way to reach the runtime: shared memory or gRPC. Thread-safe. */
interface Transport extends AutoCloseable {
    /** "shm" or "grpc". */
    String kind();

    /** A unary call; blocks until the answer, the deadline or an interrupt. */
    <Q extends Message, R extends Message> R call(Rpc<Q, R> rpc, Q request, CallOpts opts);

    /** A unary call whose answer completes the future. */
    <Q extends Message, R extends Message> CompletableFuture<R> callAsync(Rpc<Q, R> rpc, Q request, CallOpts opts);

    /** Opens a server-streaming or bidirectional call with its first message. */
    <Q extends Message, R extends Message> Stream<Q> open(Rpc<Q, R> rpc, Q first, CallOpts opts, Listener<R> listener);

    @Override
    void close();

    /** Receives a stream's messages, then exactly one close. Called on a transport thread: must not block. */
    interface Listener<R> {
        void onMessage(R message);

        /** The stream ended: null when it ended with OK. */
        void onClose(WeftException error);
    }

    /** The app's side of an open stream. */
    interface Stream<Q> {
        /** A further message of the app's stream (bidirectional calls only). */
        void send(Q message);

        /** Ends the call; no further messages or close are delivered for it. */
        void cancel();
    }

    /** Per-call options: an absolute deadline (System.nanoTime) and request metadata. */
    final class CallOpts {
        static final CallOpts NONE = new CallOpts(false, 0, Map.of());

        final boolean hasDeadline;
        final long deadlineNanos;
        final Map<String, String> metadata;
        /** When non-null, the transport puts the answer's response metadata here. */
        Map<String, String> responseMetadata;

        CallOpts(boolean hasDeadline, long deadlineNanos, Map<String, String> metadata) {
            this.hasDeadline = hasDeadline;
            this.deadlineNanos = deadlineNanos;
            this.metadata = metadata;
        }

        static CallOpts timeout(long timeoutNanos, Map<String, String> metadata) {
            if (timeoutNanos <= 0) {
                return metadata.isEmpty() ? NONE : new CallOpts(false, 0, metadata);
            }
            return new CallOpts(true, System.nanoTime() + timeoutNanos, metadata);
        }

        long remainingNanos() {
            return deadlineNanos - System.nanoTime();
        }
    }
}
