package dev.weft.bench;

import dev.weft.sdk.TransportKind;
import dev.weft.sdk.WeftClient;
import io.dapr.client.DaprClient;
import io.dapr.client.DaprClientBuilder;
import io.dapr.config.Properties;
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
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.LongAdder;

/**
 * State GetState of a 64-byte value against one release {@code weft}
 * (state.in-memory), in one run: sdk-java over shared memory, sdk-java
 * over gRPC (TCP and the Unix socket), and the official Dapr Java SDK (io.dapr:dapr-sdk, gRPC),
 * interleaved by rounds. Per client and round: JIT warm-up, then p50/p99
 * of single-thread round trips, then ops/s with 1 and with 8 threads.
 *
 * <pre>
 * java -cp ... dev.weft.bench.StateGetBench [--weft PATH] [--rounds 2] [--latency-ops 200000]
 *     [--warmup-secs 3] [--throughput-secs 3] [--clients shm,grpc,uds,dapr] [--weft-args "..."]
 * </pre>
 */
public final class StateGetBench {
    private StateGetBench() {}

    interface Getter {
        byte[] get();
    }

    record Row(String client, int round, double p50, double p99, double p999, double ops1, double ops8) {}

    public static void main(String[] args) throws Exception {
        Map<String, String> opt = new LinkedHashMap<>();
        opt.put("weft", System.getenv().getOrDefault("WEFT_BIN", "target/release/weft"));
        opt.put("rounds", "2");
        opt.put("latency-ops", "200000");
        opt.put("warmup-secs", "3");
        opt.put("throughput-secs", "3");
        opt.put("clients", "shm,grpc,uds,dapr");
        opt.put("weft-args", "");
        for (int i = 0; i < args.length; i += 2) {
            String k = args[i].replaceFirst("^--", "");
            if (!opt.containsKey(k) || i + 1 >= args.length) {
                throw new IllegalArgumentException("unknown or incomplete option " + args[i] + "; options: " + opt.keySet());
            }
            opt.put(k, args[i + 1]);
        }
        Path weft = Path.of(opt.get("weft"));
        if (!Files.isExecutable(weft)) {
            throw new IllegalArgumentException("--weft: " + weft + " is not an executable (cargo build --release -p weft)");
        }
        int rounds = Integer.parseInt(opt.get("rounds"));
        int latencyOps = Integer.parseInt(opt.get("latency-ops"));
        long warmupNanos = (long) (Double.parseDouble(opt.get("warmup-secs")) * 1e9);
        long tputNanos = (long) (Double.parseDouble(opt.get("throughput-secs")) * 1e9);
        List<String> clients = Arrays.asList(opt.get("clients").split(","));

        Path dir = Files.createTempDirectory("weft-java-bench-");
        Path res = Files.createDirectories(dir.resolve("resources"));
        Files.writeString(res.resolve("memstore.yaml"), "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n"
                + "  name: memstore\nspec:\n  type: state.in-memory\n  version: v1\n  metadata: []\n");
        int grpcPort = freePort();
        int httpPort = freePort();
        List<String> cmd = new ArrayList<>(List.of(weft.toString(), "run", "--app-id", "java-bench", "--grpc-port",
                Integer.toString(grpcPort), "--http-port", Integer.toString(httpPort), "--data-dir",
                dir.resolve("data").toString(), "--resources-path", res.toString(), "--uds",
                dir.resolve("weft.sock").toString()));
        if (!opt.get("weft-args").isBlank()) {
            cmd.addAll(Arrays.asList(opt.get("weft-args").trim().split("\\s+")));
        }
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(dir.resolve("weft.log").toFile()).start();
        try {
            waitHealthy(httpPort, p);
            System.out.printf(Locale.ROOT, "weft %s (pid %d) %s; %d cores; load %s%n", weft, p.pid(),
                    String.join(" ", cmd.subList(1, cmd.size())).replace(dir.toString(), "<tmp>"),
                    Runtime.getRuntime().availableProcessors(), Files.readString(Path.of("/proc/loadavg")).trim());
            System.out.println("java " + System.getProperty("java.version") + " " + System.getProperty("java.vm.name"));
            byte[] value = new byte[64];
            Arrays.fill(value, (byte) 'x');
            try (WeftClient seed = WeftClient.builder().transport(TransportKind.GRPC).grpcPort(grpcPort).build()) {
                seed.saveState("memstore", "bench-key", value);
            }
            WeftClient shm = WeftClient.builder().transport(TransportKind.SHM).appId("java-bench")
                    .shmSocket(dir.resolve("data/shm.sock")).grpcPort(grpcPort).build();
            WeftClient grpc = WeftClient.builder().transport(TransportKind.GRPC).grpcPort(grpcPort).build();
            WeftClient uds = WeftClient.builder().transport(TransportKind.GRPC).grpcSocket(dir.resolve("weft.sock")).build();
            DaprClient dapr = new DaprClientBuilder()
                    .withPropertyOverride(Properties.GRPC_PORT, Integer.toString(grpcPort))
                    .withPropertyOverride(Properties.HTTP_PORT, Integer.toString(httpPort))
                    .build();
            Map<String, Getter> getters = new LinkedHashMap<>();
            getters.put("shm", () -> shm.getState("memstore", "bench-key").getValue());
            getters.put("grpc", () -> grpc.getState("memstore", "bench-key").getValue());
            getters.put("uds", () -> uds.getState("memstore", "bench-key").getValue());
            getters.put("dapr", () -> dapr.getState("memstore", "bench-key", byte[].class).block().getValue());
            for (Map.Entry<String, Getter> g : getters.entrySet()) {
                byte[] v = g.getValue().get();
                if (v == null || v.length != 64) {
                    throw new IllegalStateException(g.getKey() + ": GetState returned " + (v == null ? "null" : v.length + " bytes"));
                }
            }
            List<Row> rows = new ArrayList<>();
            for (int round = 1; round <= rounds; round++) {
                for (String c : clients) {
                    Getter g = getters.get(c.trim());
                    if (g == null) {
                        throw new IllegalArgumentException("--clients: unknown client " + c + " (shm, grpc, uds, dapr)");
                    }
                    Row r = measure(c.trim(), round, g, latencyOps, warmupNanos, tputNanos);
                    rows.add(r);
                    System.out.printf(Locale.ROOT, "round %d %-5s p50 %8.2f us  p99 %8.2f us  p99.9 %8.2f us  1 thread %9.0f ops/s  8 threads %9.0f ops/s%n",
                            r.round, r.client, r.p50, r.p99, r.p999, r.ops1, r.ops8);
                }
            }
            shm.close();
            grpc.close();
            uds.close();
            dapr.close();
            System.out.println();
            System.out.println("| client | round | p50 µs | p99 µs | p99.9 µs | ops/s 1 thread | ops/s 8 threads |");
            System.out.println("|---|---:|---:|---:|---:|---:|---:|");
            for (Row r : rows) {
                System.out.printf(Locale.ROOT, "| %s | %d | %.2f | %.2f | %.2f | %.0f | %.0f |%n", label(r.client), r.round,
                        r.p50, r.p99, r.p999, r.ops1, r.ops8);
            }
            System.out.println();
            for (int round = 1; round <= rounds; round++) {
                Row s = find(rows, "shm", round);
                Row g = find(rows, "grpc", round);
                Row d = find(rows, "dapr", round);
                if (s != null && g != null) {
                    System.out.printf(Locale.ROOT, "round %d: shm p50 is %.1fx faster than sdk-java gRPC%s%n", round,
                            g.p50 / s.p50, d == null ? "" : String.format(Locale.ROOT, " and %.1fx faster than the Dapr SDK", d.p50 / s.p50));
                }
            }
        } finally {
            p.destroy();
            p.waitFor();
        }
    }

    static String label(String c) {
        switch (c) {
            case "shm":
                return "sdk-java, shared memory";
            case "grpc":
                return "sdk-java, gRPC (TCP)";
            case "uds":
                return "sdk-java, gRPC (Unix socket)";
            default:
                return "io.dapr:dapr-sdk 1.16.0, gRPC (TCP)";
        }
    }

    static Row find(List<Row> rows, String c, int round) {
        for (Row r : rows) {
            if (r.client.equals(c) && r.round == round) {
                return r;
            }
        }
        return null;
    }

    static Row measure(String name, int round, Getter g, int latencyOps, long warmupNanos, long tputNanos)
            throws InterruptedException {
        long end = System.nanoTime() + warmupNanos;
        while (System.nanoTime() < end) {
            g.get();
        }
        long[] lat = new long[latencyOps];
        for (int i = 0; i < latencyOps; i++) {
            long t0 = System.nanoTime();
            g.get();
            lat[i] = System.nanoTime() - t0;
        }
        Arrays.sort(lat);
        double p50 = lat[(int) (latencyOps * 0.50)] / 1000.0;
        double p99 = lat[(int) (latencyOps * 0.99)] / 1000.0;
        double p999 = lat[(int) Math.min(latencyOps - 1, latencyOps * 0.999)] / 1000.0;
        return new Row(name, round, p50, p99, p999, throughput(g, 1, tputNanos), throughput(g, 8, tputNanos));
    }

    static double throughput(Getter g, int threads, long nanos) throws InterruptedException {
        LongAdder ops = new LongAdder();
        AtomicBoolean stop = new AtomicBoolean();
        CountDownLatch go = new CountDownLatch(1);
        List<Thread> ts = new ArrayList<>();
        for (int i = 0; i < threads; i++) {
            Thread t = new Thread(() -> {
                try {
                    go.await();
                } catch (InterruptedException e) {
                    return;
                }
                long n = 0;
                while (!stop.get()) {
                    g.get();
                    n++;
                }
                ops.add(n);
            });
            t.start();
            ts.add(t);
        }
        long t0 = System.nanoTime();
        go.countDown();
        Thread.sleep(nanos / 1_000_000);
        stop.set(true);
        for (Thread t : ts) {
            t.join();
        }
        return ops.sum() / ((System.nanoTime() - t0) / 1e9);
    }

    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    static void waitHealthy(int httpPort, Process p) throws Exception {
        HttpClient http = HttpClient.newHttpClient();
        long end = System.nanoTime() + 30_000_000_000L;
        while (System.nanoTime() < end) {
            if (!p.isAlive()) {
                throw new IllegalStateException("weft exited with " + p.exitValue());
            }
            try {
                if (http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + httpPort + "/v1.0/healthz"))
                        .timeout(Duration.ofSeconds(2)).build(), HttpResponse.BodyHandlers.discarding()).statusCode() == 204) {
                    return;
                }
            } catch (IOException e) {
                // not up yet
            }
            Thread.sleep(50);
        }
        throw new IllegalStateException("weft did not become healthy within 30 s");
    }
}
