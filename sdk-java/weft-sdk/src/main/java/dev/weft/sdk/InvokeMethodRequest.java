package dev.weft.sdk;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;

/** A service invocation: target app id, method, data, content type, HTTP extension, metadata, timeout. */
public final class InvokeMethodRequest {
    final String appId;
    final String method;
    byte[] data = new byte[0];
    String contentType = "";
    HttpExtension httpExtension = HttpExtension.NONE;
    final Map<String, String> metadata = new HashMap<>();
    Duration timeout;

    public InvokeMethodRequest(String appId, String method) {
        Args.notEmpty(appId, "appId");
        Args.notEmpty(method, "method");
        this.appId = appId;
        this.method = method;
    }

    public InvokeMethodRequest setBody(byte[] data) {
        Args.notNull(data, "data");
        this.data = data;
        return this;
    }

    public InvokeMethodRequest setBody(String data) {
        Args.notNull(data, "data");
        this.data = data.getBytes(StandardCharsets.UTF_8);
        return this;
    }

    public InvokeMethodRequest setContentType(String contentType) {
        this.contentType = contentType == null ? "" : contentType;
        return this;
    }

    public InvokeMethodRequest setHttpExtension(HttpExtension ext) {
        Args.notNull(ext, "httpExtension");
        this.httpExtension = ext;
        return this;
    }

    /** Request metadata for the called app (gRPC metadata: lower-case keys). */
    public InvokeMethodRequest putMetadata(String key, String value) {
        Args.notEmpty(key, "metadata key");
        Args.notNull(value, "metadata value");
        this.metadata.put(key.toLowerCase(java.util.Locale.ROOT), value);
        return this;
    }

    /** The deadline of this call, overriding the client's. */
    public InvokeMethodRequest setTimeout(Duration timeout) {
        if (timeout == null || timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("timeout must be positive, got " + timeout);
        }
        this.timeout = timeout;
        return this;
    }
}
