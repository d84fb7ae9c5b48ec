package dev.weft.sdk;

import com.google.protobuf.InvalidProtocolBufferException;
import java.util.Map;

/**
 * An error answered by the runtime (or the transport): its gRPC status code,
 * the runtime's message and, when the error has them, its encoded
 * {@code google.rpc.Status} details. Subclasses name the cases apps handle:
 * {@link EtagMismatchException}, {@link NotFoundException},
 * {@link UnavailableException}, {@link DeadlineExceededException},
 * {@link CancelledException}.
 */
public class WeftException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final StatusCode code;
    private final transient byte[] details;
    private final transient Map<String, String> responseMetadata;

    public WeftException(StatusCode code, String message) {
        this(code, message, null, null, null);
    }

    public WeftException(StatusCode code, String message, Throwable cause) {
        this(code, message, null, null, cause);
    }

    protected WeftException(StatusCode code, String message, byte[] details, Map<String, String> responseMetadata,
            Throwable cause) {
        super(code + ": " + message, cause);
        this.code = code;
        this.details = details == null ? new byte[0] : details;
        this.responseMetadata = responseMetadata == null ? Map.of() : Map.copyOf(responseMetadata);
    }

    /** The typed exception for a status code. */
    public static WeftException of(StatusCode code, String message, byte[] details, Map<String, String> metadata,
            Throwable cause) {
        switch (code) {
            case ABORTED:
                return new EtagMismatchException(message, details, metadata, cause);
            case NOT_FOUND:
                return new NotFoundException(message, details, metadata, cause);
            case UNAVAILABLE:
                return new UnavailableException(message, details, metadata, cause);
            case DEADLINE_EXCEEDED:
                return new DeadlineExceededException(message, details, metadata, cause);
            case CANCELLED:
                return new CancelledException(message, details, metadata, cause);
            default:
                return new WeftException(code, message, details, metadata, cause);
        }
    }

    public static WeftException of(StatusCode code, String message) {
        return of(code, message, null, null, null);
    }

    public StatusCode getCode() {
        return code;
    }

    /** The runtime's message, without the code prefix. */
    public String getStatusMessage() {
        String m = getMessage();
        String prefix = code + ": ";
        return m.startsWith(prefix) ? m.substring(prefix.length()) : m;
    }

    /** The encoded {@code google.rpc.Status} the error came with; empty when it had none. */
    public byte[] getStatusDetails() {
        return details.clone();
    }

    /** The decoded {@code google.rpc.Status}, or null when the error had no details. */
    public com.google.rpc.Status getStatus() {
        if (details.length == 0) {
            return null;
        }
        try {
            return com.google.rpc.Status.parseFrom(details);
        } catch (InvalidProtocolBufferException e) {
            return null;
        }
    }

    /** Response metadata (headers and trailers) of the failed call, when the transport carried any. */
    public Map<String, String> getResponseMetadata() {
        return responseMetadata;
    }
}
