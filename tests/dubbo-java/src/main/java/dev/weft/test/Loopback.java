package dev.weft.test;

import java.lang.reflect.Field;
import java.net.InetAddress;

/**
 * Keeps every connection of these test programs on 127.0.0.1.
 *
 * <p>Dubbo rewrites a loopback host it is asked to connect to (a direct URL
 * {@code dubbo://127.0.0.1:PORT}, or a provider URL read from ZooKeeper) into
 * the machine's first non-loopback address (NetUtils.filterLocalHost), and
 * the tests must only talk over loopback. Dubbo computes that address lazily
 * into two static fields; setting them first makes it 127.0.0.1.
 */
final class Loopback {
    private Loopback() {}

    static void pin() {
        try {
            Class<?> netUtils = Class.forName("org.apache.dubbo.common.utils.NetUtils");
            set(netUtils, "HOST_ADDRESS", "127.0.0.1");
            set(netUtils, "LOCAL_ADDRESS", InetAddress.getLoopbackAddress());
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot pin Dubbo's local host to 127.0.0.1", e);
        }
    }

    private static void set(Class<?> c, String name, Object value) throws ReflectiveOperationException {
        Field f = c.getDeclaredField(name);
        f.setAccessible(true);
        f.set(null, value);
    }
}
