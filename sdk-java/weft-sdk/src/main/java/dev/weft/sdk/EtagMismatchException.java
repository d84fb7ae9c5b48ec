package dev.weft.sdk;

import java.util.Map;

/** An etag did not match (first-write concurrency or a stale etag): ABORTED. */
public class EtagMismatchException extends WeftException {
    private static final long serialVersionUID = 1L;

    public EtagMismatchException(String message) {
        super(StatusCode.ABORTED, message, null, null, null);
    }

    public EtagMismatchException(String message, Throwable cause) {
        super(StatusCode.ABORTED, message, null, null, cause);
    }

    EtagMismatchException(String message, byte[] details, Map<String, String> metadata, Throwable cause) {
        super(StatusCode.ABORTED, message, details, metadata, cause);
    }
}
