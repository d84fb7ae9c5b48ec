package dev.weft.sdk;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

/**
 * One event of a subscription, as a CloudEvent (id, source, type, data,
 * content type, topic) with the runtime's ordering extensions: partition,
 * offset, partition key and attempt.
 */
public final class TopicEvent {
    private final String id;
    private final String source;
    private final String type;
    private final String specVersion;
    private final String dataContentType;
    private final String topic;
    private final String pubsubName;
    private final byte[] data;
    private final Map<String, Object> extensions;

    TopicEvent(String id, String source, String type, String specVersion, String dataContentType, String topic,
            String pubsubName, byte[] data, Struct extensions) {
        this.id = id;
        this.source = source;
        this.type = type;
        this.specVersion = specVersion;
        this.dataContentType = dataContentType;
        this.topic = topic;
        this.pubsubName = pubsubName;
        this.data = data;
        Map<String, Object> ext = new HashMap<>();
        for (Map.Entry<String, Value> e : extensions.getFieldsMap().entrySet()) {
            ext.put(e.getKey(), plain(e.getValue()));
        }
        this.extensions = Map.copyOf(ext);
    }

    private static Object plain(Value v) {
        switch (v.getKindCase()) {
            case STRING_VALUE:
                return v.getStringValue();
            case NUMBER_VALUE:
                return v.getNumberValue();
            case BOOL_VALUE:
                return v.getBoolValue();
            case NULL_VALUE:
            case KIND_NOT_SET:
                return "";
            default:
                return v.toString();
        }
    }

    public String getId() {
        return id;
    }

    public String getSource() {
        return source;
    }

    public String getType() {
        return type;
    }

    public String getSpecVersion() {
        return specVersion;
    }

    public String getDataContentType() {
        return dataContentType;
    }

    public String getTopic() {
        return topic;
    }

    public String getPubsubName() {
        return pubsubName;
    }

    /** The event's data as published (for CloudEvents the envelope's data). */
    public byte[] getData() {
        return data;
    }

    public String getDataAsString() {
        return new String(data, StandardCharsets.UTF_8);
    }

    /** CloudEvent extensions (partition, offset, partitionKey, attempt, message headers), as plain values. */
    public Map<String, Object> getExtensions() {
        return extensions;
    }

    private long longExt(String name) {
        Object o = extensions.get(name);
        if (o instanceof Double) {
            return ((Double) o).longValue();
        }
        if (o instanceof String && !((String) o).isEmpty()) {
            try {
                return Long.parseLong((String) o);
            } catch (NumberFormatException e) {
                return -1;
            }
        }
        return -1;
    }

    /** The partition it came from; -1 when the runtime did not say. */
    public int getPartition() {
        return (int) longExt("partition");
    }

    /** Its offset in the partition; -1 when the runtime did not say. */
    public long getOffset() {
        return longExt("offset");
    }

    /** The key it was published with, or null. */
    public String getPartitionKey() {
        Object o = extensions.get("partitionKey");
        return o == null || "".equals(o) ? null : o.toString();
    }

    /** How many times this very event was retried before (0 on its first delivery); -1 when the runtime did not say. */
    public int getAttempt() {
        return (int) longExt("attempt");
    }

    @Override
    public String toString() {
        return "TopicEvent{id=" + id + ", topic=" + topic + ", partition=" + getPartition() + ", offset=" + getOffset()
                + ", attempt=" + getAttempt() + "}";
    }
}
