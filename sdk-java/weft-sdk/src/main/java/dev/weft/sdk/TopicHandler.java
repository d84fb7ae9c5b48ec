package dev.weft.sdk;

/**
 * Handles the events of one subscription, one at a time and in the order
 * the runtime delivers them (per partition: offset order). An exception
 * counts as {@link SubscriptionStatus#RETRY}. The event is acked only after
 * this returns.
 */
@FunctionalInterface
public interface TopicHandler {
    SubscriptionStatus onEvent(TopicEvent event) throws Exception;
}
