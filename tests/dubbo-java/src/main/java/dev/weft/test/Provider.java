package dev.weft.test;

import java.io.InputStream;
import java.util.logging.Level;
import java.util.logging.Logger;

import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.ProtocolConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.ServiceConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;

/**
 * Exports {@link Greeter} over the dubbo protocol with hessian2 on
 * 127.0.0.1:--port, registered nowhere (registry N/A): whoever wants it
 * registered publishes its URL. Prints "READY <port>" once listening and
 * runs until its standard input closes.
 *
 * <pre>
 * java -cp target/classes:target/lib/* dev.weft.test.Provider --port 20880 --name p1 [--group g] [--version v]
 * </pre>
 */
public final class Provider {
    public static void main(String[] argv) throws Exception {
        Args args = new Args(argv);
        Loopback.pin();
        int port = Integer.parseInt(args.required("port"));
        String name = args.get("name", "provider");
        Logger.getLogger("").setLevel(Level.WARNING);

        ApplicationConfig app = new ApplicationConfig("weft-test-provider");
        app.setQosEnable(false);
        app.setLogger("jdk");

        ProtocolConfig protocol = new ProtocolConfig("dubbo", port);
        protocol.setHost(args.get("host", "127.0.0.1"));
        protocol.setSerialization("hessian2");
        protocol.setPreferSerialization("hessian2");

        ServiceConfig<Greeter> service = new ServiceConfig<>();
        service.setInterface(Greeter.class);
        service.setRef(new GreeterImpl(name));
        String group = args.get("group", "");
        if (!group.isEmpty()) {
            service.setGroup(group);
        }
        String version = args.get("version", "");
        if (!version.isEmpty()) {
            service.setVersion(version);
        }

        DubboBootstrap bootstrap = DubboBootstrap.newInstance();
        bootstrap.application(app)
                .registry(new RegistryConfig(RegistryConfig.NO_AVAILABLE))
                .protocol(protocol)
                .service(service)
                .start();
        System.out.println("READY " + port);
        System.out.flush();

        InputStream in = System.in;
        while (in.read() >= 0) {
            // Runs until standard input closes.
        }
        bootstrap.stop();
        System.exit(0);
    }
}
