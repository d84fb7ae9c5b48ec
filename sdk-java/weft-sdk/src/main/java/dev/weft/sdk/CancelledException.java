package dev.weft.sdk;

import java.util.Map;

/** The call was cancelled (by an interrupt of the calling thread or by the runtime): CANCELLED. */
public class CancelledException extends WeftException {
    private static final long serialVersionUID = 1L;

    public CancelledException(String message) {
        super(StatusCode.CANCELLED, message, null, null, null);
    }

    public CancelledException(String message, Throwable cause) {
        super(StatusCode.CANCELLED, message, null, null, cause);
    }

    CancelledException(String message, byte[] details, Map<String, String> metadata, Throwable cause) {
        super(StatusCode.CANCELLED, message, details, metadata, cause);
    }
}
