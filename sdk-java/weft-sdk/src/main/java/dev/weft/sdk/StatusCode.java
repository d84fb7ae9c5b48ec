package dev.weft.sdk;

/** gRPC status codes, as the runtime answers them on either transport. */
public enum StatusCode {
    OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
    RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
    DATA_LOSS, UNAUTHENTICATED;

    private static final StatusCode[] BY_VALUE = values();

    /** The code with this number; UNKNOWN for a number outside 0..16. */
    public static StatusCode of(int value) {
        return value >= 0 && value < BY_VALUE.length ? BY_VALUE[value] : UNKNOWN;
    }

    public int value() {
        return ordinal();
    }
}
