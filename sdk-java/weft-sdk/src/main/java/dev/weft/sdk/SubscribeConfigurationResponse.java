package dev.weft.sdk;

import java.util.Map;

/** One update of a configuration subscription: the subscription id and the items that changed. */
public final class SubscribeConfigurationResponse {
    private final String subscriptionId;
    private final Map<String, ConfigurationItem> items;

    public SubscribeConfigurationResponse(String subscriptionId, Map<String, ConfigurationItem> items) {
        this.subscriptionId = subscriptionId;
        this.items = Map.copyOf(items);
    }

    public String getSubscriptionId() {
        return subscriptionId;
    }

    public Map<String, ConfigurationItem> getItems() {
        return items;
    }
}
