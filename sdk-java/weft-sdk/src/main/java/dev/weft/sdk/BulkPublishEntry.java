package dev.weft.sdk;

import java.util.Map;

/** One event of {@link WeftClient#publishEvents}: an id unique in the request, the bytes, content type, metadata. */
public final class BulkPublishEntry {
    private final String entryId;
    private final byte[] event;
    private final String contentType;
    private final Map<String, String> metadata;

    public BulkPublishEntry(String entryId, byte[] event, String contentType, Map<String, String> metadata) {
        Args.notEmpty(entryId, "entryId");
        Args.notNull(event, "event");
        this.entryId = entryId;
        this.event = event;
        this.contentType = contentType == null ? "" : contentType;
        this.metadata = metadata == null ? Map.of() : Map.copyOf(metadata);
    }

    public String getEntryId() {
        return entryId;
    }

    public byte[] getEvent() {
        return event;
    }

    public String getContentType() {
        return contentType;
    }

    public Map<String, String> getMetadata() {
        return metadata;
    }
}
