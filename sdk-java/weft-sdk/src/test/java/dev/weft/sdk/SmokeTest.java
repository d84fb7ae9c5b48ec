package dev.weft.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.weft.sdk.testing.WeftRuntime;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

class SmokeTest {
    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void saveAndGet(TransportKind kind) throws Exception {
        try (WeftRuntime w = WeftRuntime.start("smoke"); WeftClient c = w.client(kind)) {
            assertEquals(kind.name().toLowerCase(), c.getTransport());
            c.saveState("statestore", "k", "v");
            assertEquals("v", c.getState("statestore", "k").getValueAsString());
            System.out.println(kind + " ctx=" + c.hasCallContext() + " md=" + c.getMetadata().getExtended());
            long t0 = System.nanoTime();
            for (int i = 0; i < 20000; i++) {
                c.getState("statestore", "k");
            }
            System.out.println(kind + " avg us " + (System.nanoTime() - t0) / 20000 / 1000.0);
        }
    }
}
