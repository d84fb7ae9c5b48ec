package dev.weft.sdk;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;

/** An invocation of this app by another one, received over the app channel (no port needed). */
public final class Invocation {
    private final long id;
    private final String method;
    private final byte[] data;
    private final String contentType;
    private final HttpExtension httpExtension;
    private final Map<String, String> metadata;
    private final Duration timeout;

    Invocation(long id, String method, byte[] data, String contentType, HttpExtension ext, Map<String, String> metadata,
            Duration timeout) {
        this.id = id;
        this.method = method;
        this.data = data;
        this.contentType = contentType;
        this.httpExtension = ext;
        this.metadata = Map.copyOf(metadata);
        this.timeout = timeout;
    }

    public long getId() {
        return id;
    }

    public String getMethod() {
        return method;
    }

    public byte[] getData() {
        return data;
    }

    public String getDataAsString() {
        return new String(data, StandardCharsets.UTF_8);
    }

    public String getContentType() {
        return contentType;
    }

    public HttpExtension getHttpExtension() {
        return httpExtension;
    }

    /** The caller's metadata, with {@code dapr-caller-app-id}, {@code dapr-callee-app-id} and {@code traceparent}. */
    public Map<String, String> getMetadata() {
        return metadata;
    }

    /** The calling app's id, as the runtimes verified it. */
    public String getCallerAppId() {
        return metadata.get("dapr-caller-app-id");
    }

    /** How long the caller still waits (what was left of its deadline when the call arrived). */
    public Duration getTimeout() {
        return timeout;
    }
}
