package dev.weft.sdk;

import java.util.List;

/** The entries of a bulk publish that failed (none when all were published). */
public final class BulkPublishResponse {
    /** One failed entry and why. */
    public record FailedEntry(String entryId, String errorMessage) {}

    private final List<FailedEntry> failedEntries;

    public BulkPublishResponse(List<FailedEntry> failedEntries) {
        this.failedEntries = List.copyOf(failedEntries);
    }

    public List<FailedEntry> getFailedEntries() {
        return failedEntries;
    }
}
