package dev.weft.test;

import java.util.List;
import java.util.Map;

/** The service the tests call through Weft's Dubbo codec and registry. */
public interface Greeter {
    /** Returns "Hello, " + name + " from " + the provider's name. */
    String greet(String name);

    /** Sleeps {@code millis} milliseconds, then returns "slept " + millis. */
    String slow(int millis);

    /** Always throws an IllegalStateException carrying {@code message}. */
    String fail(String message);

    /**
     * Returns a deterministic summary of its arguments, so that a test can
     * check that every value crossed a forwarder untouched.
     */
    String describe(Payload payload, List<Long> ids, Map<String, Object> extra);
}
