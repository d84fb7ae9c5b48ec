package dev.weft.sdk.shm;

import com.google.protobuf.InvalidProtocolBufferException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import weft.runtime.v1.Shm.CallContext;

/** The call context block of flag CONTEXT (§5.1): u32 length, then a CallContext. */
public final class CallContextCodec {
    private CallContextCodec() {}

    /** The block (length prefix included) that starts a body. */
    public static byte[] encode(CallContext ctx) {
        byte[] c = ctx.toByteArray();
        ByteBuffer b = ByteBuffer.allocate(4 + c.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(c.length).put(c);
        return b.array();
    }

    /** A body split into its context and the rest. */
    public record Split(CallContext context, byte[] rest) {}

    /** Splits the body of a record that carries flag CONTEXT. */
    public static Split split(byte[] body) {
        if (body.length < 4) {
            throw new ProtocolException("context block: body of " + body.length + " bytes has no length");
        }
        long c = Integer.toUnsignedLong(ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN).getInt(0));
        if (c > body.length - 4) {
            throw new ProtocolException("context block: length " + c + " beyond the body of " + body.length + " bytes");
        }
        CallContext ctx;
        try {
            ctx = CallContext.parseFrom(ByteBuffer.wrap(body, 4, (int) c));
        } catch (InvalidProtocolBufferException e) {
            throw new ProtocolException("context block: not a CallContext: " + e.getMessage());
        }
        byte[] rest = new byte[body.length - 4 - (int) c];
        System.arraycopy(body, 4 + (int) c, rest, 0, rest.length);
        return new Split(ctx, rest);
    }
}
