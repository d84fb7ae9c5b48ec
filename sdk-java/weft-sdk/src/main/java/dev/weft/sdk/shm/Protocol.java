package dev.weft.sdk.shm;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/**
 * Constants and frame codecs of Weft's shared-memory protocol v1
 * (docs/shm-protocol.md). All integers are little-endian.
 */
public final class Protocol {
    private Protocol() {}

    public static final int VERSION = 1;
    public static final byte[] HELLO_MAGIC = ascii("WEFTHELO");
    public static final byte[] WELCOME_MAGIC = ascii("WEFTWLCM");
    public static final byte[] MAPPED = ascii("WEFTMAPD");
    public static final byte[] SEGMENT_MAGIC = ascii("WEFT-SHM");

    public static final int HEADER_LEN = 512;
    public static final int RING_CONTROL_LEN = 512;
    public static final int SESSION_STATE_OFF = 128;
    public static final int FEATURES_OFF = 132;
    /** Feature bit: call context blocks (§5.1). */
    public static final int FEATURE_CONTEXT = 0x1;

    public static final int TAIL_OFF = 0;
    public static final int HEAD_OFF = 128;
    public static final int WAKE_OFF = 256;

    public static final int TYPE_MESSAGE = 1;
    public static final int TYPE_PADDING = -1;
    public static final int ENVELOPE_LEN = 24;
    public static final int RECORD_HEADER_LEN = 8;

    public static final int FLAG_END = 0x1;
    public static final int FLAG_CANCEL = 0x2;
    public static final int FLAG_NO_REPLY = 0x4;
    public static final int FLAG_MORE = 0x8;
    public static final int FLAG_CONTEXT = 0x10;
    public static final int KNOWN_FLAGS = 0x1f;

    public static final byte GOODBYE_BYTE = (byte) 0xFF;
    public static final int MAX_APP_ID = 255;
    public static final int MAX_TOKEN = 4096;
    public static final int MIN_RING = 4096;
    public static final int MAX_RING = 1 << 28;

    static byte[] ascii(String s) {
        return s.getBytes(StandardCharsets.US_ASCII);
    }

    public static int align8(int n) {
        return (n + 7) & ~7;
    }

    public static boolean validRingSize(long n) {
        return n >= MIN_RING && n <= MAX_RING && (n & (n - 1)) == 0;
    }

    static ByteBuffer le(int size) {
        return ByteBuffer.allocate(size).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** The HELLO frame (§2.1). Ring sizes 0 ask for the runtime's default. */
    public static byte[] encodeHello(int version, int ringA, int ringB, String appId, String token) {
        byte[] id = appId.getBytes(StandardCharsets.UTF_8);
        byte[] tok = token == null ? new byte[0] : token.getBytes(StandardCharsets.UTF_8);
        if (id.length > MAX_APP_ID) {
            throw new IllegalArgumentException("appId: " + id.length + " bytes, at most " + MAX_APP_ID);
        }
        if (tok.length > MAX_TOKEN) {
            throw new IllegalArgumentException("apiToken: " + tok.length + " bytes, at most " + MAX_TOKEN);
        }
        ByteBuffer b = le(24 + id.length + tok.length);
        b.put(HELLO_MAGIC).putInt(version).putInt(ringA).putInt(ringB);
        b.putShort((short) id.length).putShort((short) tok.length).put(id).put(tok);
        return b.array();
    }

    /** A WELCOME frame (§2.2): status 0 and the segment path, or an error code and message. */
    public record Welcome(int version, int status, String text) {}

    /** The fixed 20-byte start of a WELCOME; returns the text length it announces. */
    public static int welcomeTextLength(byte[] head20) {
        ByteBuffer b = ByteBuffer.wrap(head20).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < 8; i++) {
            if (head20[i] != WELCOME_MAGIC[i]) {
                throw new ProtocolException("welcome: bad magic");
            }
        }
        int len = b.getInt(16);
        if (len < 0 || len > 65536) {
            throw new ProtocolException("welcome: text length " + Integer.toUnsignedString(len) + " exceeds 65536");
        }
        return len;
    }

    public static Welcome decodeWelcome(byte[] frame) {
        if (frame.length < 20) {
            throw new ProtocolException("welcome: " + frame.length + " bytes, shorter than 20");
        }
        int len = welcomeTextLength(frame);
        if (frame.length != 20 + len) {
            throw new ProtocolException("welcome: " + frame.length + " bytes, expected " + (20 + len));
        }
        ByteBuffer b = ByteBuffer.wrap(frame).order(ByteOrder.LITTLE_ENDIAN);
        return new Welcome(b.getInt(8), b.getInt(12), new String(frame, 20, len, StandardCharsets.UTF_8));
    }

    public static byte[] encodeWelcome(int version, int status, String text) {
        byte[] t = text.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = le(20 + t.length);
        b.put(WELCOME_MAGIC).putInt(version).putInt(status).putInt(t.length).put(t);
        return b.array();
    }

    /** The runtime's GOODBYE (§2.4). */
    public record Goodbye(int code, String message) {}

    public static byte[] encodeGoodbye(int code, String message) {
        byte[] m = message.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = le(9 + m.length);
        b.put(GOODBYE_BYTE).putInt(code).putInt(m.length).put(m);
        return b.array();
    }

    /**
     * Decodes a GOODBYE starting at {@code off}; null when the bytes so far
     * do not hold all of it.
     */
    public static Goodbye decodeGoodbye(byte[] buf, int off, int len) {
        if (len < 9) {
            return null;
        }
        ByteBuffer b = ByteBuffer.wrap(buf, off, len).order(ByteOrder.LITTLE_ENDIAN);
        if (buf[off] != GOODBYE_BYTE) {
            throw new ProtocolException("goodbye: does not start with 0xFF");
        }
        int code = b.getInt(off + 1);
        int mlen = b.getInt(off + 5);
        if (mlen < 0 || mlen > 1 << 20) {
            throw new ProtocolException("goodbye: message length " + Integer.toUnsignedString(mlen));
        }
        if (len < 9 + mlen) {
            return null;
        }
        return new Goodbye(code, new String(buf, off + 9, mlen, StandardCharsets.UTF_8));
    }

    /** The message envelope (§5): method id, flags, correlation id, status. */
    public record Envelope(int method, int flags, long correlation, int status) {}

    /** A whole message record as it sits in a ring, zero-padded to 8 bytes. */
    public static byte[] encodeRecord(Envelope env, byte[] body) {
        int length = RECORD_HEADER_LEN + ENVELOPE_LEN + body.length;
        ByteBuffer b = le(align8(length));
        b.putInt(length).putInt(TYPE_MESSAGE);
        b.putInt(env.method()).putInt(env.flags()).putLong(env.correlation()).putInt(env.status()).putInt(0);
        b.put(body);
        return b.array();
    }

    /** A padding record of exactly {@code length} bytes. */
    public static byte[] encodePadding(int length) {
        ByteBuffer b = le(length);
        b.putInt(length).putInt(TYPE_PADDING);
        return b.array();
    }

    /** A decoded message: its envelope and body (a copy out of the ring). */
    public record Message(Envelope envelope, byte[] body) {}

    /** Decodes a message record's payload (envelope + body). */
    public static Message decodePayload(byte[] payload) {
        if (payload.length < ENVELOPE_LEN) {
            throw new ProtocolException("record payload of " + payload.length + " bytes is shorter than the envelope");
        }
        ByteBuffer b = ByteBuffer.wrap(payload).order(ByteOrder.LITTLE_ENDIAN);
        Envelope env = new Envelope(b.getInt(0), b.getInt(4), b.getLong(8), b.getInt(16));
        if (b.getInt(20) != 0) {
            throw new ProtocolException("envelope reserved field is not zero");
        }
        if ((env.flags() & ~KNOWN_FLAGS) != 0) {
            throw new ProtocolException("envelope has unknown flags 0x" + Integer.toHexString(env.flags()));
        }
        byte[] body = new byte[payload.length - ENVELOPE_LEN];
        System.arraycopy(payload, ENVELOPE_LEN, body, 0, body.length);
        return new Message(env, body);
    }
}
