package dev.weft.sdk;

import java.nio.charset.StandardCharsets;
import java.util.Map;

/**
 * A state item: key, value bytes, etag, metadata (e.g. {@code ttlInSeconds}
 * when saving, {@code ttlExpireTime} when read) and options. Like the Dapr
 * Java SDK's {@code State<T>}, but the value is bytes: serialize with the
 * library of your choice ({@link #getValueAsString()} for UTF-8 text).
 */
public final class State {
    private final String key;
    private final byte[] value;
    private final String etag;
    private final Map<String, String> metadata;
    private final StateOptions options;
    private final String error;

    public State(String key, byte[] value) {
        this(key, value, null, Map.of(), null);
    }

    public State(String key, String value) {
        this(key, value.getBytes(StandardCharsets.UTF_8), null, Map.of(), null);
    }

    public State(String key, byte[] value, String etag) {
        this(key, value, etag, Map.of(), null);
    }

    public State(String key, byte[] value, String etag, Map<String, String> metadata, StateOptions options) {
        this(key, value, etag, metadata, options, null);
    }

    State(String key, byte[] value, String etag, Map<String, String> metadata, StateOptions options, String error) {
        Args.notEmpty(key, "key");
        this.key = key;
        this.value = value;
        this.etag = etag == null || etag.isEmpty() ? null : etag;
        this.metadata = metadata == null ? Map.of() : Map.copyOf(metadata);
        this.options = options;
        this.error = error == null || error.isEmpty() ? null : error;
    }

    public String getKey() {
        return key;
    }

    /** The value, or null when the key has none (never saved, deleted or expired). */
    public byte[] getValue() {
        return value;
    }

    /** The value as UTF-8 text, or null. */
    public String getValueAsString() {
        return value == null ? null : new String(value, StandardCharsets.UTF_8);
    }

    /** The etag, or null when the key has no value. */
    public String getEtag() {
        return etag;
    }

    public Map<String, String> getMetadata() {
        return metadata;
    }

    public StateOptions getOptions() {
        return options;
    }

    /** In getBulkState answers: this key's error, or null. */
    public String getError() {
        return error;
    }

    @Override
    public String toString() {
        return "State{key=" + key + ", etag=" + etag + ", " + (value == null ? "no value" : value.length + " bytes") + "}";
    }
}
