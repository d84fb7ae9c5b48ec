package dev.weft.sdk.shm;

import java.io.IOException;
import java.lang.invoke.VarHandle;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.locks.LockSupport;
import java.util.function.Function;

/**
 * The runtime's side of docs/shm-protocol.md, scripted, for unit tests of
 * what the real runtime cannot show yet (a feature word with CONTEXT, error
 * details, a goodbye): it accepts sessions on a Unix socket, creates and
 * maps the segment, and answers each request with what the test's
 * function returns. Not a substitute for the real runtime, which the
 * end-to-end tests use.
 */
public final class ScriptedPeer implements AutoCloseable {
    /** One request as the peer read it off ring A. */
    public record Request(Protocol.Envelope envelope, byte[] body) {}

    /** An answer: flags (END, CONTEXT…), status and body (context block included when CONTEXT). */
    public record Answer(int flags, int status, byte[] body) {}

    public final Path socket;
    public final BlockingQueue<Request> requests = new LinkedBlockingQueue<>();
    private final Path dir;
    private final int features;
    private final Function<Request, Answer> script;
    private final ServerSocketChannel server;
    private final Thread acceptor;
    private volatile boolean closed;
    private volatile SocketChannel current;

    public ScriptedPeer(Path dir, int features, Function<Request, Answer> script) throws IOException {
        this.dir = dir;
        this.features = features;
        this.script = script;
        this.socket = dir.resolve("peer.sock");
        this.server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        server.bind(UnixDomainSocketAddress.of(socket));
        this.acceptor = new Thread(this::acceptLoop, "scripted-peer");
        acceptor.setDaemon(true);
        acceptor.start();
    }

    private void acceptLoop() {
        int session = 0;
        while (!closed) {
            try (SocketChannel s = server.accept()) {
                current = s;
                serve(s, ++session);
            } catch (IOException | RuntimeException e) {
                if (closed) {
                    return;
                }
            }
        }
    }

    private static byte[] read(SocketChannel s, int n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        while (b.hasRemaining()) {
            if (s.read(b) < 0) {
                throw new IOException("peer closed");
            }
        }
        return b.array();
    }

    private void serve(SocketChannel s, int session) throws IOException {
        ByteBuffer hello = ByteBuffer.wrap(read(s, 24)).order(ByteOrder.LITTLE_ENDIAN);
        int idLen = hello.getShort(20);
        int tokLen = hello.getShort(22);
        read(s, idLen + tokLen);
        int ring = 65536;
        long total = 1536L + 2L * ring;
        Path seg = dir.resolve("segment-" + session);
        MappedByteBuffer m;
        try (FileChannel fc = FileChannel.open(seg, StandardOpenOption.CREATE_NEW, StandardOpenOption.READ,
                StandardOpenOption.WRITE)) {
            fc.truncate(total);
            fc.write(ByteBuffer.allocate(1), total - 1);
            m = fc.map(FileChannel.MapMode.READ_WRITE, 0, total);
        }
        m.order(ByteOrder.LITTLE_ENDIAN);
        long pid = ProcessHandle.current().pid();
        m.put(0, new SegmentHeader(pid, pid, session, 512, ring, 1024 + ring, ring, 0).encodeFirst64());
        m.putInt(Protocol.FEATURES_OFF, features);
        s.write(ByteBuffer.wrap(Protocol.encodeWelcome(1, 0, seg.toString())));
        read(s, 8); // MAPPED
        Files.delete(seg);
        Ring in = new Ring(m, 512, ring, "app->runtime");
        Ring out = new Ring(m, 1024 + ring, ring, "runtime->app");
        s.configureBlocking(false);
        ByteBuffer scratch = ByteBuffer.allocate(64);
        while (!closed) {
            scratch.clear();
            if (s.read(scratch) < 0) {
                return;
            }
            Protocol.Message msg = in.poll();
            if (msg == null) {
                LockSupport.parkNanos(20_000);
                continue;
            }
            Request r = new Request(msg.envelope(), msg.body());
            requests.add(r);
            if ((msg.envelope().flags() & Protocol.FLAG_CANCEL) != 0) {
                continue;
            }
            Answer a = script.apply(r);
            if (a == null) {
                continue;
            }
            if (a.status() < 0) {
                // A goodbye: session state 1, the frame, then close.
                m.putInt(Protocol.SESSION_STATE_OFF, 1);
                s.write(ByteBuffer.wrap(Protocol.encodeGoodbye(-a.status(), new String(a.body(), StandardCharsets.UTF_8))));
                return;
            }
            out.tryWrite(msg.envelope().method(), a.flags(), msg.envelope().correlation(), a.status(), null, a.body());
            VarHandle.fullFence();
            if (out.needWakeup()) {
                s.write(ByteBuffer.wrap(new byte[] {1}));
            }
        }
    }

    /** Closes the current session's socket, as a crashing runtime would. */
    public void dropSession() throws IOException {
        SocketChannel s = current;
        if (s != null) {
            s.close();
        }
    }

    @Override
    public void close() throws IOException {
        closed = true;
        server.close();
        dropSession();
    }
}
