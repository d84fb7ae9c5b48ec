package dev.weft.sdk.shm;

/** The peer broke the shared-memory protocol (docs/shm-protocol.md §10). */
public final class ProtocolException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public ProtocolException(String message) {
        super(message);
    }
}
