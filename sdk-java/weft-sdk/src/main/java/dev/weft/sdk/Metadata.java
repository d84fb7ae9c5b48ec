package dev.weft.sdk;

/** Well-known request metadata keys. */
public final class Metadata {
    private Metadata() {}

    /** State: seconds until the item expires ({@code -1}: never). */
    public static final String TTL_IN_SECONDS = "ttlInSeconds";
    /** State (answers): when the item expires, RFC 3339. */
    public static final String TTL_EXPIRE_TIME = "ttlExpireTime";
    /** Pub/sub: the message key; the same key always goes to the same partition, in order. */
    public static final String PARTITION_KEY = "partitionKey";
    /** Pub/sub: {@code "true"} publishes the bytes as they are, without a CloudEvents envelope. */
    public static final String RAW_PAYLOAD = "rawPayload";
    /** Subscriptions: how long a RETRY waits before the event is delivered again (e.g. {@code 10ms}). */
    public static final String RETRY_BACKOFF = "retryBackoff";
    /** Subscriptions: the consumer group (default: the app id). */
    public static final String CONSUMER_GROUP = "consumerGroup";
}
