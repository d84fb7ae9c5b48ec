package dev.weft.sdk.shm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.weft.sdk.testing.Json;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The spec's test vectors (docs/shm-vectors/v1.json): each one encoded and parsed. */
class VectorsTest {
    static final HexFormat HEX = HexFormat.of();

    static Path repoRoot() {
        String p = System.getProperty("weft.repo.root");
        return p != null ? Path.of(p) : Path.of("../..");
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> vectors() throws IOException {
        Path file = repoRoot().resolve("docs/shm-vectors/v1.json");
        Map<String, Object> root = (Map<String, Object>) Json.parse(Files.readString(file));
        assertEquals(1L, root.get("protocol_version"));
        return (List<Map<String, Object>>) root.get("vectors");
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> fields(Map<String, Object> v) {
        return (Map<String, Object>) v.get("fields");
    }

    static long num(Map<String, Object> m, String k) {
        return (Long) m.get(k);
    }

    @Test
    @SuppressWarnings("unchecked")
    void everyVectorIsReproducedAndParsed() throws IOException {
        List<Map<String, Object>> all = vectors();
        assertTrue(all.size() >= 11, "vectors: " + all.size());
        int checked = 0;
        int contexts = 0;
        for (Map<String, Object> v : all) {
            String name = (String) v.get("name");
            byte[] want = HEX.parseHex((String) v.get("hex"));
            byte[] got;
            switch ((String) v.get("kind")) {
                case "segment_header": {
                    Map<String, Object> f = fields(v);
                    SegmentHeader h = new SegmentHeader(num(f, "runtime_pid"), num(f, "app_pid"), num(f, "session_id"),
                            num(f, "a2r_offset"), num(f, "a2r_capacity"), num(f, "r2a_offset"), num(f, "r2a_capacity"), 0);
                    got = h.encodeFirst64();
                    ByteBuffer seg = ByteBuffer.allocate(512);
                    seg.put(want);
                    SegmentHeader back = SegmentHeader.parse(seg.clear(), num(f, "total_len"));
                    assertEquals(h, back, name);
                    assertEquals(num(f, "total_len"), back.totalLength(), name);
                    break;
                }
                case "record": {
                    Map<String, Object> e = (Map<String, Object>) v.get("envelope");
                    byte[] body = HEX.parseHex((String) v.get("body_hex"));
                    Protocol.Envelope env = new Protocol.Envelope((int) num(e, "method"), (int) num(e, "flags"),
                            num(e, "correlation"), (int) num(e, "status"));
                    got = Protocol.encodeRecord(env, body);
                    // The ring writes the same bytes, and reads them back.
                    ByteBuffer mem = ByteBuffer.allocateDirect(512 + 4096).order(ByteOrder.LITTLE_ENDIAN);
                    Ring tx = new Ring(mem, 0, 4096, "test");
                    assertTrue(tx.tryWrite(env.method(), env.flags(), env.correlation(), env.status(), null, body));
                    byte[] inRing = new byte[want.length];
                    mem.get(512, inRing);
                    assertArrayEquals(want, inRing, name + " as written by the ring");
                    assertEquals(want.length, tx.tail(), name);
                    Ring rx = new Ring(mem, 0, 4096, "test");
                    Protocol.Message m = rx.poll();
                    assertNotNull(m, name);
                    assertEquals(env, m.envelope(), name);
                    assertArrayEquals(body, m.body(), name);
                    assertNull(rx.poll());
                    if ((env.flags() & Protocol.FLAG_CONTEXT) != 0) {
                        // The context block parses and encodes back to the same bytes.
                        CallContextCodec.Split split = CallContextCodec.split(body);
                        byte[] block = CallContextCodec.encode(split.context());
                        byte[] again = new byte[block.length + split.rest().length];
                        System.arraycopy(block, 0, again, 0, block.length);
                        System.arraycopy(split.rest(), 0, again, block.length, split.rest().length);
                        assertArrayEquals(body, again, name + ": context block");
                        contexts++;
                    }
                    break;
                }
                case "padding":
                    got = Protocol.encodePadding((int) num(v, "length"));
                    break;
                case "hello": {
                    Map<String, Object> f = fields(v);
                    got = Protocol.encodeHello((int) num(f, "version"), (int) num(f, "a2r_capacity"),
                            (int) num(f, "r2a_capacity"), (String) f.get("app_id"), (String) f.get("token"));
                    break;
                }
                case "welcome": {
                    Map<String, Object> f = fields(v);
                    got = Protocol.encodeWelcome((int) num(f, "version"), (int) num(f, "status"), (String) f.get("text"));
                    Protocol.Welcome w = Protocol.decodeWelcome(want);
                    assertEquals(new Protocol.Welcome((int) num(f, "version"), (int) num(f, "status"),
                            (String) f.get("text")), w, name);
                    break;
                }
                case "mapped":
                    got = Protocol.MAPPED.clone();
                    break;
                case "goodbye": {
                    Map<String, Object> f = fields(v);
                    got = Protocol.encodeGoodbye((int) num(f, "code"), (String) f.get("message"));
                    Protocol.Goodbye g = Protocol.decodeGoodbye(want, 0, want.length);
                    assertEquals(new Protocol.Goodbye((int) num(f, "code"), (String) f.get("message")), g, name);
                    assertNull(Protocol.decodeGoodbye(want, 0, want.length - 1), "a partial goodbye is not decoded");
                    break;
                }
                default:
                    throw new AssertionError("unknown vector kind " + v.get("kind"));
            }
            assertEquals(HEX.formatHex(want), HEX.formatHex(got), "vector " + name);
            checked++;
        }
        assertEquals(all.size(), checked);
        assertTrue(contexts >= 2, "vectors with a context block: " + contexts);
    }

    @Test
    void theClientEncodesTheSpecsContextRequest() throws IOException {
        Map<String, Object> v = vectors().stream().filter(x -> "context_request".equals(x.get("name"))).findFirst()
                .orElseThrow();
        weft.runtime.v1.Shm.CallContext ctx = weft.runtime.v1.Shm.CallContext.newBuilder().setTimeoutMicros(250000)
                .addMetadata(weft.runtime.v1.Appchannel.Metadata.newBuilder().setKey("traceparent")
                        .addValues("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
                .build();
        byte[] req = dev.weft.proto.runtime.v1.Invoke.InvokeServiceRequest.newBuilder().setId("orders")
                .setMessage(dev.weft.proto.common.v1.Common.InvokeRequest.newBuilder().setMethod("place")).build()
                .toByteArray();
        ByteBuffer mem = ByteBuffer.allocateDirect(512 + 4096).order(ByteOrder.LITTLE_ENDIAN);
        new Ring(mem, 0, 4096, "a").tryWrite(1, Protocol.FLAG_CONTEXT, 10, 0, CallContextCodec.encode(ctx), req);
        byte[] want = HEX.parseHex((String) v.get("hex"));
        byte[] got = new byte[want.length];
        mem.get(512, got);
        assertEquals(HEX.formatHex(want), HEX.formatHex(got));
    }

    @Test
    void paddingAtWrapAroundAndBadCounters() {
        ByteBuffer mem = ByteBuffer.allocateDirect(512 + 4096).order(ByteOrder.LITTLE_ENDIAN);
        Ring tx = new Ring(mem, 0, 4096, "a");
        Ring rx = new Ring(mem, 0, 4096, "a");
        byte[] body = new byte[1000];
        int written = 0;
        int read = 0;
        for (int round = 0; round < 40; round++) {
            body[0] = (byte) round;
            while (!tx.tryWrite(2, 0, round, 0, null, body)) {
                Protocol.Message m = rx.poll();
                assertNotNull(m, "a full ring has something to read");
                assertEquals(read, m.envelope().correlation());
                assertEquals((byte) read, m.body()[0]);
                read++;
            }
            written++;
        }
        Protocol.Message m;
        while ((m = rx.poll()) != null) {
            assertEquals(read, m.envelope().correlation());
            read++;
        }
        assertEquals(written, read);
        // Tail moved backwards: the consumer refuses it.
        tx.publishTail(8);
        assertThrows(ProtocolException.class, rx::poll);
        // A record too big for half the ring is refused locally.
        assertThrows(IllegalArgumentException.class, () -> tx.tryWrite(2, 0, 1, 0, null, new byte[2048]));
    }

    @Test
    void badHeadersAndFramesAreRefused() {
        ByteBuffer seg = ByteBuffer.allocate(512);
        assertThrows(ProtocolException.class, () -> SegmentHeader.parse(seg, 512 * 4));
        byte[] welcome = Protocol.encodeWelcome(1, 0, "/dev/shm/x");
        welcome[0] = 'X';
        assertThrows(ProtocolException.class, () -> Protocol.decodeWelcome(welcome));
        byte[] env = new byte[24];
        env[20] = 1;
        assertThrows(ProtocolException.class, () -> Protocol.decodePayload(env));
        assertThrows(ProtocolException.class, () -> Protocol.decodePayload(new byte[10]));
        assertThrows(IllegalArgumentException.class, () -> Protocol.encodeHello(1, 0, 0, "x".repeat(256), ""));
        assertFalse(Protocol.validRingSize(4097));
    }
}
