package dev.weft.sdk;

import java.util.Map;

/** The runtime, its transport or a backend cannot be reached now; retry later: UNAVAILABLE. */
public class UnavailableException extends WeftException {
    private static final long serialVersionUID = 1L;

    public UnavailableException(String message) {
        super(StatusCode.UNAVAILABLE, message, null, null, null);
    }

    public UnavailableException(String message, Throwable cause) {
        super(StatusCode.UNAVAILABLE, message, null, null, cause);
    }

    UnavailableException(String message, byte[] details, Map<String, String> metadata, Throwable cause) {
        super(StatusCode.UNAVAILABLE, message, details, metadata, cause);
    }
}
