package dev.weft.sdk;

/** A topic handler's verdict on one event (Dapr's TopicEventResponse status). */
public enum SubscriptionStatus {
    /** Processed: the runtime commits past it. */
    SUCCESS,
    /** Deliver it again (after the subscription's retryBackoff), before anything later in its partition. */
    RETRY,
    /** Give up on it: it goes to the dead-letter topic if one is set, and the partition moves on. */
    DROP
}
