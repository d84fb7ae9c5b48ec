package dev.weft.test;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/** The provider's implementation; {@code name} tells providers apart. */
public class GreeterImpl implements Greeter {
    private final String name;

    public GreeterImpl(String name) {
        this.name = name;
    }

    @Override
    public String greet(String who) {
        return "Hello, " + who + " from " + name;
    }

    @Override
    public String slow(int millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return "slept " + millis;
    }

    @Override
    public String fail(String message) {
        throw new IllegalStateException(message);
    }

    @Override
    public String describe(Payload payload, List<Long> ids, Map<String, Object> extra) {
        return (payload == null ? "null" : payload.summary())
                + "|ids=" + ids
                + "|extra=" + (extra == null ? "null" : new TreeMap<>(extra))
                + "|by=" + name;
    }
}
