package dev.weft.sdk;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.weft.sdk.testing.WeftRuntime;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Service invocation between apps on two runtimes that find each other
 * through a private local registry and trust one development CA: Java to
 * Java, and Java to a Go app (weft.dev/sdk-go) and back.
 */
class MeshInvokeTest {
    static Path shared;
    static WeftRuntime javaA;
    static WeftRuntime javaB;

    static WeftRuntime.Options mesh(String appId) {
        return WeftRuntime.options(appId).under(shared)
                .arg("--dev-ca-dir", shared.resolve("dev-ca").toString())
                .env("WEFT_LOCAL_REGISTRY_DIR", shared.resolve("registry").toString());
    }

    @BeforeAll
    static void start() throws Exception {
        shared = Files.createTempDirectory("weft-java-mesh-");
        javaA = mesh("java-a").start();
        javaB = mesh("java-b").start();
    }

    @AfterAll
    static void stop() throws Exception {
        for (WeftRuntime w : new WeftRuntime[] {javaA, javaB}) {
            if (w != null) {
                w.close();
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void javaToJavaThroughTwoRuntimes(TransportKind kind) throws Exception {
        try (WeftClient a = javaA.client(kind); WeftClient b = javaB.client(kind)) {
            AtomicReference<Invocation> seen = new AtomicReference<>();
            try (Subscription ch = b.serveInvocations(inv -> {
                seen.set(inv);
                if (inv.getMethod().equals("slow")) {
                    Thread.sleep(3000);
                }
                return new InvokeMethodResponse(("b:" + inv.getDataAsString()).getBytes(UTF_8), "text/plain",
                        Map.of("x-from", "b"));
            })) {
                assertTrue(ch.isActive());
                byte[] r = a.withTimeout(Duration.ofSeconds(20))
                        .invokeMethod("java-b", "echo", "hi".getBytes(UTF_8), HttpExtension.POST);
                assertEquals("b:hi", new String(r, UTF_8));
                assertEquals("java-a", seen.get().getCallerAppId(), "the caller's verified identity");
                if (kind == TransportKind.GRPC || a.hasCallContext()) {
                    assertTrue(seen.get().getTimeout() != null && seen.get().getTimeout().toMillis() <= 20_000,
                            "the caller's deadline reaches the called app: " + seen.get().getTimeout());
                }
                long t0 = System.nanoTime();
                assertThrows(DeadlineExceededException.class, () -> a.invokeMethod(
                        new InvokeMethodRequest("java-b", "slow").setTimeout(Duration.ofMillis(400))));
                assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) < 2900, "deadline honoured");
                if (kind == TransportKind.GRPC || a.hasCallContext()) {
                    InvokeMethodResponse full = a.invokeMethod(new InvokeMethodRequest("java-b", "echo").setBody("m")
                            .putMetadata("x-tenant", "acme"));
                    assertEquals("acme", seen.get().getMetadata().get("x-tenant"));
                    assertEquals("b", full.getMetadata().get("x-from"), full.getMetadata().toString());
                }
            }
        }
    }

    // === Java ↔ Go ===

    /** The sdk-go module: $WEFT_SDK_GO_DIR, else the repository's sdk-go/ once it holds the module. */
    static Path sdkGoDir() {
        String d = System.getenv("WEFT_SDK_GO_DIR");
        if (d != null && !d.isEmpty()) {
            return Path.of(d);
        }
        return WeftRuntime.repoRoot().resolve("sdk-go");
    }

    static Path goBinary;

    static synchronized Path buildGoApp() throws Exception {
        if (goBinary != null) {
            return goBinary;
        }
        Path sdk = sdkGoDir().toAbsolutePath();
        Assumptions.assumeTrue(Files.exists(sdk.resolve("go.mod")),
                "sdk-go is not in this tree (" + sdk + " has no go.mod): set WEFT_SDK_GO_DIR to test Java <-> Go");
        Path mod = Files.createTempDirectory(shared, "go-interop-");
        Files.copy(WeftRuntime.repoRoot().resolve("sdk-java/weft-sdk/src/test/go/interop/main.go"), mod.resolve("main.go"));
        Files.writeString(mod.resolve("go.mod"), "module weft.dev/java-interop\n\ngo 1.26.0\n\n"
                + "require weft.dev/sdk-go v0.0.0\n\nreplace weft.dev/sdk-go => " + sdk + "\n");
        Path bin = mod.resolve("interop");
        ProcessBuilder pb = new ProcessBuilder("go", "build", "-o", bin.toString(), ".").directory(mod.toFile())
                .redirectErrorStream(true);
        pb.environment().put("GOFLAGS", "-mod=mod");
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), UTF_8);
        assertTrue(p.waitFor(300, TimeUnit.SECONDS), "go build did not finish in 5 min");
        assertEquals(0, p.exitValue(), "go build of the interop app failed:\n" + out);
        goBinary = bin;
        return bin;
    }

    @ParameterizedTest
    @EnumSource(value = TransportKind.class, names = {"SHM", "GRPC"})
    void javaInvokesGoAndGoInvokesJavaBack(TransportKind kind) throws Exception {
        Path bin = buildGoApp();
        try (WeftRuntime goRt = mesh("go-app").start(); WeftClient a = javaA.client(kind)) {
            List<String> cmd = new ArrayList<>(List.of(bin.toString(), "-transport", kind.name().toLowerCase(),
                    "-app-id", "go-app", "-grpc", "127.0.0.1:" + goRt.grpcPort,
                    "-shm-socket", goRt.shmSocket().toString(), "-java-app", "java-a"));
            Process go = new ProcessBuilder(cmd).redirectErrorStream(true).start();
            try (Subscription ch = a.serveInvocations(inv -> InvokeMethodResponse.of("java says " + inv.getDataAsString()))) {
                assertTrue(ch.isActive());
                BufferedReader r = new BufferedReader(new InputStreamReader(go.getInputStream(), UTF_8));
                String line = r.readLine();
                assertEquals("READY " + kind.name().toLowerCase(), line, "the Go app did not start");
                WeftClient t = a.withTimeout(Duration.ofSeconds(20));
                assertEquals("hello from go, java", new String(
                        t.invokeMethod("go-app", "hello", "java".getBytes(UTF_8), HttpExtension.POST), UTF_8));
                assertEquals("go got: java says x", new String(
                        t.invokeMethod("go-app", "relay", "x".getBytes(UTF_8), HttpExtension.POST), UTF_8));
            } finally {
                go.destroy();
                go.waitFor(10, TimeUnit.SECONDS);
            }
        }
    }
}
