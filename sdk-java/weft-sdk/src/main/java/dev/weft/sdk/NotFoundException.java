package dev.weft.sdk;

import java.util.Map;

/** Something named in the call does not exist (an app id, a subscription): NOT_FOUND. */
public class NotFoundException extends WeftException {
    private static final long serialVersionUID = 1L;

    public NotFoundException(String message) {
        super(StatusCode.NOT_FOUND, message, null, null, null);
    }

    public NotFoundException(String message, Throwable cause) {
        super(StatusCode.NOT_FOUND, message, null, null, cause);
    }

    NotFoundException(String message, byte[] details, Map<String, String> metadata, Throwable cause) {
        super(StatusCode.NOT_FOUND, message, details, metadata, cause);
    }
}
