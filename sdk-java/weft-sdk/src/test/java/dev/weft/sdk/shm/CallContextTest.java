package dev.weft.sdk.shm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import static java.nio.charset.StandardCharsets.UTF_8;

import com.google.protobuf.ByteString;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.HexFormat;
import org.junit.jupiter.api.Test;
import weft.runtime.v1.Appchannel.Metadata;
import weft.runtime.v1.Shm.CallContext;

/** The context block of flag CONTEXT (docs/shm-protocol.md §5.1). */
class CallContextTest {
    @Test
    void encodesTheSpecLayoutByteForByte() {
        CallContext ctx = CallContext.newBuilder()
                .setTimeoutMicros(1500)
                .addMetadata(Metadata.newBuilder().setKey("traceparent").addValues("00-ab-cd-01"))
                .build();
        byte[] block = CallContextCodec.encode(ctx);
        // u32 length, then the protobuf: field 1 varint 1500 (0xdc 0x0b), field 2 length-delimited Metadata.
        String hex = HexFormat.of().formatHex(block);
        assertEquals("1f000000" + "08dc0b" + "121a" + "0a0b" + HexFormat.of().formatHex("traceparent".getBytes(UTF_8))
                + "120b" + HexFormat.of().formatHex("00-ab-cd-01".getBytes(UTF_8)), hex);

        byte[] body = new byte[] {0x0a, 0x02, 'h', 'i'};
        byte[] whole = new byte[block.length + body.length];
        System.arraycopy(block, 0, whole, 0, block.length);
        System.arraycopy(body, 0, whole, block.length, body.length);
        CallContextCodec.Split s = CallContextCodec.split(whole);
        assertEquals(ctx, s.context());
        assertArrayEquals(body, s.rest());
    }

    @Test
    void anEmptyContextAndStatusDetails() {
        CallContextCodec.Split s = CallContextCodec.split(new byte[] {0, 0, 0, 0, 'x'});
        assertEquals(CallContext.getDefaultInstance(), s.context());
        assertArrayEquals(new byte[] {'x'}, s.rest());
        CallContext withDetails = CallContext.newBuilder().setStatusDetails(ByteString.copyFrom(new byte[] {8, 5})).build();
        assertEquals(withDetails, CallContextCodec.split(CallContextCodec.encode(withDetails)).context());
    }

    @Test
    void refusesALengthBeyondTheBodyOrBadBytes() {
        assertThrows(ProtocolException.class, () -> CallContextCodec.split(new byte[] {9, 0, 0, 0, 1}));
        assertThrows(ProtocolException.class, () -> CallContextCodec.split(new byte[] {1, 0}));
        assertThrows(ProtocolException.class, () -> CallContextCodec.split(new byte[] {2, 0, 0, 0, (byte) 0xff, (byte) 0xff}));
    }

    @Test
    void aRecordWithContextCarriesTheBlockAfterTheEnvelope() {
        ByteBuffer mem = ByteBuffer.allocateDirect(512 + 4096).order(ByteOrder.LITTLE_ENDIAN);
        Ring tx = new Ring(mem, 0, 4096, "a");
        byte[] block = CallContextCodec.encode(CallContext.newBuilder().setTimeoutMicros(7).build());
        tx.tryWrite(2, Protocol.FLAG_CONTEXT, 5, 0, block, new byte[] {1, 2});
        Protocol.Message m = new Ring(mem, 0, 4096, "a").poll();
        assertEquals(Protocol.FLAG_CONTEXT, m.envelope().flags());
        CallContextCodec.Split s = CallContextCodec.split(m.body());
        assertEquals(7, s.context().getTimeoutMicros());
        assertArrayEquals(new byte[] {1, 2}, s.rest());
    }
}
