package dev.weft.sdk;

import java.nio.charset.StandardCharsets;
import java.util.Map;

/** The called app's answer: data, content type and response metadata. */
public final class InvokeMethodResponse {
    private final byte[] data;
    private final String contentType;
    private final Map<String, String> metadata;

    public InvokeMethodResponse(byte[] data, String contentType, Map<String, String> metadata) {
        this.data = data == null ? new byte[0] : data;
        this.contentType = contentType == null ? "" : contentType;
        this.metadata = metadata == null ? Map.of() : Map.copyOf(metadata);
    }

    public static InvokeMethodResponse of(String text) {
        return new InvokeMethodResponse(text.getBytes(StandardCharsets.UTF_8), "text/plain", Map.of());
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

    public Map<String, String> getMetadata() {
        return metadata;
    }
}
