package dev.weft.examples;

import dev.weft.sdk.EtagMismatchException;
import dev.weft.sdk.State;
import dev.weft.sdk.StateOptions;
import dev.weft.sdk.WeftClient;
import java.nio.charset.StandardCharsets;

/** State with etags: save, read, update with the etag, and a stale update refused. */
public final class StateWithEtag {
    private StateWithEtag() {}

    public static void main(String[] args) {
        try (WeftClient client = WeftClient.builder().build()) {
            System.out.println("transport: " + client.getTransport());
            client.saveState("statestore", "order-1", "{\"qty\": 1}");
            State s = client.getState("statestore", "order-1");
            System.out.println("read " + s.getValueAsString() + " with etag " + s.getEtag());

            client.saveState("statestore", "order-1", s.getEtag(), bytes("{\"qty\": 2}"), StateOptions.firstWrite());
            System.out.println("updated with the current etag: " + client.getState("statestore", "order-1").getValueAsString());

            try {
                client.saveState("statestore", "order-1", s.getEtag(), bytes("{\"qty\": 3}"), StateOptions.firstWrite());
            } catch (EtagMismatchException e) {
                System.out.println("a stale etag is refused: " + e.getMessage());
            }
            client.deleteState("statestore", "order-1");
            System.out.println("deleted; value now " + client.getState("statestore", "order-1").getValue());
        }
    }

    private static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
