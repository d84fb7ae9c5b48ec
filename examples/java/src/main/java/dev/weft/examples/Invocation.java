package dev.weft.examples;

import dev.weft.sdk.DeadlineExceededException;
import dev.weft.sdk.HttpExtension;
import dev.weft.sdk.InvokeMethodRequest;
import dev.weft.sdk.InvokeMethodResponse;
import dev.weft.sdk.Subscription;
import dev.weft.sdk.WeftClient;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

/**
 * Service invocation without an open port: the app receives its
 * invocations over a stream it opens (ServeInvocations) and calls itself by
 * app id; a call with a deadline shorter than the handler fails in time.
 */
public final class Invocation {
    private Invocation() {}

    public static void main(String[] args) throws Exception {
        try (WeftClient client = WeftClient.builder().build();
                Subscription channel = client.serveInvocations(inv -> {
                    if (inv.getMethod().equals("slow")) {
                        Thread.sleep(2000);
                    }
                    return InvokeMethodResponse.of("hello, " + inv.getDataAsString() + " (from " + inv.getCallerAppId() + ")");
                })) {
            String self = client.getMetadata().getId();
            System.out.println("transport: " + client.getTransport() + ", app " + self + ", channel open: " + channel.isActive());
            byte[] answer = client.invokeMethod(self, "greet", "world".getBytes(StandardCharsets.UTF_8), HttpExtension.POST);
            System.out.println("greet -> " + new String(answer, StandardCharsets.UTF_8));
            try {
                client.invokeMethod(new InvokeMethodRequest(self, "slow").setBody("x").setTimeout(Duration.ofMillis(300)));
            } catch (DeadlineExceededException e) {
                System.out.println("slow with a 300 ms deadline -> " + e.getMessage());
            }
        }
    }
}
