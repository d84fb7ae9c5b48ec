package dev.weft.test;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.logging.Level;
import java.util.logging.Logger;

import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.ReferenceConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;
import org.apache.dubbo.rpc.RpcException;

/**
 * Calls {@link Greeter} either at a direct URL (--url dubbo://127.0.0.1:PORT,
 * e.g. a local runtime's outbound listener) or through the providers a
 * ZooKeeper registry lists (--registry zookeeper://127.0.0.1:PORT), with
 * hessian2 and no retries. Prints "READY", then reads one call per line from
 * standard input and prints one line per call:
 *
 * <pre>
 * greet NAME | slow MILLIS | fail MESSAGE | describe DEPTH | quit
 * OK &lt;micros&gt; &lt;value&gt;
 * ERR &lt;micros&gt; code=&lt;RpcException code or -&gt; &lt;exception class&gt;: &lt;message&gt;
 * </pre>
 *
 * Options: --group, --version, --timeout MILLIS (default 3000),
 * --heartbeat MILLIS (direct mode), --migration (service-discovery
 * migration step, ZooKeeper mode; Dubbo's default when absent).
 */
public final class Consumer {
    public static void main(String[] argv) throws Exception {
        Args args = new Args(argv);
        Loopback.pin();
        Logger.getLogger("").setLevel(Level.WARNING);
        String migration = args.get("migration", "");
        if (!migration.isEmpty()) {
            System.setProperty("dubbo.application.service-discovery.migration", migration);
        }

        ApplicationConfig app = new ApplicationConfig("weft-test-consumer");
        app.setQosEnable(false);
        app.setLogger("jdk");

        ReferenceConfig<Greeter> reference = new ReferenceConfig<>();
        reference.setInterface(Greeter.class);
        reference.setTimeout(args.integer("timeout", 3000));
        reference.setRetries(0);
        reference.setCheck(false);
        String group = args.get("group", "");
        if (!group.isEmpty()) {
            reference.setGroup(group);
        }
        String version = args.get("version", "");
        if (!version.isEmpty()) {
            reference.setVersion(version);
        }
        Map<String, String> params = new HashMap<>();
        params.put("serialization", "hessian2");
        params.put("prefer.serialization", "hessian2");
        reference.setParameters(params);

        DubboBootstrap bootstrap = DubboBootstrap.newInstance();
        bootstrap.application(app);
        String url = args.get("url", "");
        if (!url.isEmpty()) {
            String heartbeat = args.get("heartbeat", "");
            reference.setUrl(heartbeat.isEmpty() ? url : url + "?heartbeat=" + heartbeat);
            bootstrap.registry(new RegistryConfig(RegistryConfig.NO_AVAILABLE));
        } else {
            bootstrap.registry(new RegistryConfig(args.required("registry")));
        }
        bootstrap.reference(reference).start();
        Greeter greeter = reference.get();
        System.out.println("READY");
        System.out.flush();

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.isEmpty()) {
                continue;
            }
            if (line.equals("quit")) {
                break;
            }
            String[] parts = line.split(" ", 2);
            String arg = parts.length > 1 ? parts[1] : "";
            long start = System.nanoTime();
            String out;
            try {
                Object value = call(greeter, parts[0], arg);
                out = "OK " + micros(start) + " " + oneLine(String.valueOf(value));
            } catch (Throwable t) {
                String code = t instanceof RpcException ? String.valueOf(((RpcException) t).getCode()) : "-";
                out = "ERR " + micros(start) + " code=" + code + " " + t.getClass().getName() + ": "
                        + oneLine(String.valueOf(t.getMessage()));
            }
            System.out.println(out);
            System.out.flush();
        }
        bootstrap.stop();
        System.exit(0);
    }

    private static Object call(Greeter greeter, String method, String arg) {
        switch (method) {
            case "greet":
                return greeter.greet(arg);
            case "slow":
                return greeter.slow(Integer.parseInt(arg));
            case "fail":
                return greeter.fail(arg);
            case "describe": {
                List<Long> ids = Arrays.asList(1L, 1L << 40, -5L);
                Map<String, Object> extra = new LinkedHashMap<>();
                extra.put("k", "v");
                extra.put("n", 42);
                extra.put("list", Arrays.asList(1, 2));
                return greeter.describe(Payload.sample(Integer.parseInt(arg)), ids, extra);
            }
            default:
                throw new IllegalArgumentException("unknown call '" + method + "'");
        }
    }

    private static long micros(long start) {
        return (System.nanoTime() - start) / 1000;
    }

    private static String oneLine(String s) {
        return s.replace('\n', ' ').replace('\r', ' ');
    }
}
