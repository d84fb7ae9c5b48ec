package dev.weft.sdk.testing;

import dev.weft.sdk.TransportKind;
import dev.weft.sdk.WeftClient;
import java.io.IOException;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * A real {@code weft} process for tests: free ports, a private data dir, a
 * resources dir with {@code statestore} (state.in-memory), {@code pubsub}
 * (pubsub.embedded) and {@code configstore} (configuration.file), started
 * and waited for on {@code /v1.0/healthz}. The binary is {@code $WEFT_BIN},
 * else {@code <repo>/target/debug/weft}.
 */
public final class WeftRuntime implements AutoCloseable {
    private static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build();

    public final String appId;
    public final Path dir;
    public final Path dataDir;
    public final Path resources;
    public final Path configFile;
    public final Path log;
    public final int grpcPort;
    public final int httpPort;
    private final List<String> extraArgs;
    private final Map<String, String> env;
    private Process process;

    private WeftRuntime(String appId, Path dir, List<String> extraArgs, Map<String, String> env) throws IOException {
        this.appId = appId;
        this.dir = dir;
        this.dataDir = Files.createDirectories(dir.resolve("data"));
        this.resources = Files.createDirectories(dir.resolve("resources"));
        this.configFile = dir.resolve("configuration.yaml");
        this.log = dir.resolve("weft.log");
        this.grpcPort = freePort();
        this.httpPort = freePort();
        this.extraArgs = List.copyOf(extraArgs);
        this.env = Map.copyOf(env);
        Files.writeString(configFile, "greeting: hello\nmode:\n  value: \"a\"\n  version: \"1\"\n");
        component("statestore", "state.in-memory", Map.of());
        component("pubsub", "pubsub.embedded", Map.of());
        component("configstore", "configuration.file", Map.of("path", configFile.toString()));
    }

    public static Path weftBin() {
        String b = System.getenv("WEFT_BIN");
        if (b != null && !b.isEmpty() && !b.startsWith("${")) {
            return Path.of(b);
        }
        return repoRoot().resolve("target/debug/weft");
    }

    public static Path repoRoot() {
        String p = System.getProperty("weft.repo.root");
        return (p != null ? Path.of(p) : Path.of("../..")).toAbsolutePath().normalize();
    }

    public static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    /** How to start one. */
    public static final class Options {
        private final String appId;
        private Path parent;
        private final List<String> args = new ArrayList<>();
        private final Map<String, String> env = new LinkedHashMap<>();

        Options(String appId) {
            this.appId = appId;
        }

        public Options arg(String... a) {
            args.addAll(List.of(a));
            return this;
        }

        public Options env(String k, String v) {
            env.put(k, v);
            return this;
        }

        /** Put the runtime's directory under this one (default: a new temp dir). */
        public Options under(Path dir) {
            this.parent = dir;
            return this;
        }

        public WeftRuntime start() throws Exception {
            Path d = parent == null ? Files.createTempDirectory("weft-java-") : Files.createTempDirectory(parent, appId + "-");
            WeftRuntime w = new WeftRuntime(appId, d, args, env);
            w.startProcess();
            return w;
        }
    }

    public static Options options(String appId) {
        return new Options(appId);
    }

    public static WeftRuntime start(String appId) throws Exception {
        return options(appId).start();
    }

    public void component(String name, String type, Map<String, String> metadata) throws IOException {
        StringBuilder b = new StringBuilder("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: ")
                .append(name).append("\nspec:\n  type: ").append(type).append("\n  version: v1\n  metadata:\n");
        if (metadata.isEmpty()) {
            b.append("    []\n");
        }
        for (Map.Entry<String, String> e : metadata.entrySet()) {
            b.append("    - name: ").append(e.getKey()).append("\n      value: \"").append(e.getValue()).append("\"\n");
        }
        Files.writeString(resources.resolve(name + ".yaml"), b.toString());
    }

    public Path shmSocket() {
        return dataDir.resolve("shm.sock");
    }

    private void startProcess() throws Exception {
        Path bin = weftBin();
        if (!Files.isExecutable(bin)) {
            throw new IllegalStateException("weft binary not found at " + bin
                    + ": run `cargo build -p weft` first or set WEFT_BIN");
        }
        List<String> cmd = new ArrayList<>(List.of(bin.toString(), "run", "--app-id", appId,
                "--grpc-port", Integer.toString(grpcPort), "--http-port", Integer.toString(httpPort),
                "--data-dir", dataDir.toString(), "--resources-path", resources.toString()));
        cmd.addAll(extraArgs);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile()));
        pb.environment().remove("DAPR_API_TOKEN");
        pb.environment().remove("WEFT_API_TOKEN");
        pb.environment().put("WEFT_LOG", "info");
        pb.environment().putAll(env);
        process = pb.start();
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (true) {
            if (!process.isAlive()) {
                throw new IllegalStateException("weft exited during start-up with " + process.exitValue() + ":\n" + logs());
            }
            if (healthy()) {
                return;
            }
            if (System.nanoTime() - end > 0) {
                throw new IllegalStateException("weft did not become healthy within 30 s:\n" + logs());
            }
            Thread.sleep(50);
        }
    }

    public boolean healthy() {
        try {
            HttpResponse<Void> r = HTTP.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + httpPort + "/v1.0/healthz"))
                    .timeout(Duration.ofSeconds(2)).GET().build(), HttpResponse.BodyHandlers.discarding());
            return r.statusCode() == 204;
        } catch (IOException e) {
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    public long pid() {
        return process.pid();
    }

    public boolean isRunning() {
        return process != null && process.isAlive();
    }

    /** SIGKILL, and wait for the exit. */
    public void kill() throws InterruptedException {
        process.destroyForcibly();
        process.waitFor(10, TimeUnit.SECONDS);
    }

    /** SIGTERM, and wait (bounded) for the exit. */
    public void stop() throws InterruptedException {
        if (process != null && process.isAlive()) {
            process.destroy();
            if (!process.waitFor(15, TimeUnit.SECONDS)) {
                process.destroyForcibly();
                process.waitFor(5, TimeUnit.SECONDS);
            }
        }
    }

    /** Waits (bounded) for the process to exit by itself; true if it did. */
    public boolean awaitExit(Duration d) throws InterruptedException {
        return process.waitFor(d.toMillis(), TimeUnit.MILLISECONDS);
    }

    /** Starts the same runtime again: same ports, data dir and resources. */
    public void restart() throws Exception {
        stop();
        startProcess();
    }

    public String logs() {
        try {
            return Files.readString(log);
        } catch (IOException e) {
            return "(no log: " + e + ")";
        }
    }

    /** A client of this runtime on the given transport. */
    public WeftClient.Builder clientBuilder(TransportKind kind) {
        return WeftClient.builder().transport(kind).appId(appId).grpcPort(grpcPort).shmSocket(shmSocket());
    }

    public WeftClient client(TransportKind kind) {
        return clientBuilder(kind).build();
    }

    @Override
    public void close() throws IOException {
        try {
            stop();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            try (Stream<Path> s = Files.walk(dir)) {
                s.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }
}
