package dev.weft.sdk;

import java.util.List;
import java.util.Map;

/** What GetMetadata reports: app id, runtime version, components, subscriptions, extended metadata. */
public final class RuntimeMetadata {
    /** A loaded component. */
    public record Component(String name, String type, String version, List<String> capabilities) {}

    /** A topic subscription the runtime serves for this app. */
    public record TopicSubscription(String pubsubName, String topic) {}

    private final String id;
    private final String runtimeVersion;
    private final List<String> enabledFeatures;
    private final List<Component> components;
    private final List<TopicSubscription> subscriptions;
    private final Map<String, String> extended;

    RuntimeMetadata(String id, String runtimeVersion, List<String> enabledFeatures, List<Component> components,
            List<TopicSubscription> subscriptions, Map<String, String> extended) {
        this.id = id;
        this.runtimeVersion = runtimeVersion;
        this.enabledFeatures = List.copyOf(enabledFeatures);
        this.components = List.copyOf(components);
        this.subscriptions = List.copyOf(subscriptions);
        this.extended = Map.copyOf(extended);
    }

    public String getId() {
        return id;
    }

    public String getRuntimeVersion() {
        return runtimeVersion;
    }

    public List<String> getEnabledFeatures() {
        return enabledFeatures;
    }

    public List<Component> getComponents() {
        return components;
    }

    public List<TopicSubscription> getSubscriptions() {
        return subscriptions;
    }

    public Map<String, String> getExtended() {
        return extended;
    }
}
