package dev.weft.sdk;

/** A running subscription or app channel; close() ends it (events not yet acked go to other members). */
public interface Subscription extends AutoCloseable {
    /** Whether the stream to the runtime is open right now (false while it reconnects). */
    boolean isActive();

    @Override
    void close();
}
