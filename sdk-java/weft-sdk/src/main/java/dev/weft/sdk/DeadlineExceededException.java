package dev.weft.sdk;

import java.util.Map;

/** The call's deadline passed before the answer came: DEADLINE_EXCEEDED. */
public class DeadlineExceededException extends WeftException {
    private static final long serialVersionUID = 1L;

    public DeadlineExceededException(String message) {
        super(StatusCode.DEADLINE_EXCEEDED, message, null, null, null);
    }

    public DeadlineExceededException(String message, Throwable cause) {
        super(StatusCode.DEADLINE_EXCEEDED, message, null, null, cause);
    }

    DeadlineExceededException(String message, byte[] details, Map<String, String> metadata, Throwable cause) {
        super(StatusCode.DEADLINE_EXCEEDED, message, details, metadata, cause);
    }
}
