package dev.weft.sdk.shm;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * One single-producer single-consumer ring of a segment (§3.2, §4): the
 * control block at {@code ctrl} (tail, head, need-wakeup on their own
 * 128-byte lines) and {@code size} data bytes after it. An instance is used
 * either as the producer or as the consumer, never both; callers serialize
 * access to it.
 */
public final class Ring {
    private static final VarHandle LONG = MethodHandles.byteBufferViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle INT = MethodHandles.byteBufferViewVarHandle(int[].class, ByteOrder.LITTLE_ENDIAN);
    private static final byte[] ZEROS = new byte[8];

    private final ByteBuffer buf;
    private final String name;
    private final int ctrl;
    private final int data;
    private final long size;
    private final long mask;
    /** Producer: bytes published so far; consumer: bytes consumed so far. */
    private long pos;
    /** Producer: the consumer's head when last read. */
    private long cachedHead;

    /**
     * @param buf a direct buffer (the mapping) holding the ring
     * @param ctrl offset of the control block
     * @param size data size, a power of two
     * @param name for error messages, e.g. {@code app->runtime}
     */
    public Ring(ByteBuffer buf, int ctrl, long size, String name) {
        if (!buf.isDirect()) {
            throw new IllegalArgumentException("buf: a ring needs a direct buffer for atomic access");
        }
        if (!Protocol.validRingSize(size)) {
            throw new IllegalArgumentException("size: " + size + " is not a power of two from 4096 to 2^28");
        }
        this.buf = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        this.ctrl = ctrl;
        this.data = ctrl + Protocol.RING_CONTROL_LEN;
        this.size = size;
        this.mask = size - 1;
        this.name = name;
        this.pos = (long) LONG.getAcquire(this.buf, ctrl + Protocol.HEAD_OFF);
        this.cachedHead = this.pos;
    }

    public long size() {
        return size;
    }

    /** The largest message record (aligned length) this ring takes: half its size. */
    public long maxRecord() {
        return size / 2;
    }

    /** Bytes a message record with this payload (envelope + body) takes, aligned. */
    public static int recordLength(int payloadLen) {
        return Protocol.align8(Protocol.RECORD_HEADER_LEN + payloadLen);
    }

    // === producer ===

    /**
     * Writes one message record and publishes it (release store of tail).
     * The body is {@code ctx} (a context block, or null) followed by {@code body}.
     *
     * @return false when the ring has no room for it now
     */
    public boolean tryWrite(int method, int flags, long correlation, int status, byte[] ctx, byte[] body) {
        int payload = Protocol.ENVELOPE_LEN + (ctx == null ? 0 : ctx.length) + body.length;
        int length = Protocol.RECORD_HEADER_LEN + payload;
        int aligned = Protocol.align8(length);
        if (aligned > maxRecord()) {
            throw new IllegalArgumentException("record of " + aligned + " bytes exceeds half the ring (" + maxRecord() + ")");
        }
        long idx = pos & mask;
        long toEnd = size - idx;
        long need = aligned <= toEnd ? aligned : toEnd + aligned;
        if (size - (pos - cachedHead) < need) {
            long head = (long) LONG.getAcquire(buf, ctrl + Protocol.HEAD_OFF);
            if (head < cachedHead || head > pos) {
                throw new ProtocolException("ring " + name + ": head counter " + Long.toUnsignedString(head)
                        + " outside " + cachedHead + "..=" + pos);
            }
            cachedHead = head;
            if (size - (pos - head) < need) {
                return false;
            }
        }
        long p = pos;
        if (aligned > toEnd) {
            int at = data + (int) idx;
            buf.putInt(at, (int) toEnd);
            buf.putInt(at + 4, Protocol.TYPE_PADDING);
            p += toEnd;
            idx = 0;
        }
        int at = data + (int) idx;
        buf.putInt(at, length);
        buf.putInt(at + 4, Protocol.TYPE_MESSAGE);
        buf.putInt(at + 8, method);
        buf.putInt(at + 12, flags);
        buf.putLong(at + 16, correlation);
        buf.putInt(at + 24, status);
        buf.putInt(at + 28, 0);
        int off = at + 32;
        if (ctx != null) {
            buf.put(off, ctx);
            off += ctx.length;
        }
        buf.put(off, body);
        off += body.length;
        int pad = aligned - length;
        if (pad > 0) {
            buf.put(off, ZEROS, 0, pad);
        }
        pos = p + aligned;
        LONG.setRelease(buf, ctrl + Protocol.TAIL_OFF, pos);
        return true;
    }

    // === consumer ===

    /** Whether a record was published past what this consumer has read. */
    public boolean hasData() {
        return (long) LONG.getAcquire(buf, ctrl + Protocol.TAIL_OFF) != pos;
    }

    /**
     * Reads the next message record (padding is skipped), copies its payload
     * out and releases its bytes; null when the ring is empty.
     */
    public Protocol.Message poll() {
        while (true) {
            long tail = (long) LONG.getAcquire(buf, ctrl + Protocol.TAIL_OFF);
            if (tail == pos) {
                return null;
            }
            if (tail < pos || tail - pos > size) {
                throw new ProtocolException("ring " + name + ": tail counter " + Long.toUnsignedString(tail)
                        + " outside " + pos + "..=" + (pos + size));
            }
            long idx = pos & mask;
            long toEnd = size - idx;
            int at = data + (int) idx;
            int length = buf.getInt(at);
            int type = buf.getInt(at + 4);
            if (length < Protocol.RECORD_HEADER_LEN || length > toEnd || length > tail - pos) {
                throw new ProtocolException("ring " + name + ": record at position " + pos + " has length " + length
                        + ", outside 8..=" + Math.min(toEnd, tail - pos));
            }
            if (type == Protocol.TYPE_PADDING) {
                if (length != toEnd) {
                    throw new ProtocolException("ring " + name + ": padding at position " + pos + " has length "
                            + length + ", not the " + toEnd + " bytes to the end");
                }
                pos += toEnd;
                LONG.setRelease(buf, ctrl + Protocol.HEAD_OFF, pos);
                continue;
            }
            if (type != Protocol.TYPE_MESSAGE) {
                throw new ProtocolException("ring " + name + ": record at position " + pos + " has type " + type);
            }
            int aligned = Protocol.align8(length);
            if (aligned > maxRecord()) {
                throw new ProtocolException("ring " + name + ": record at position " + pos + " of " + aligned
                        + " bytes exceeds half the ring");
            }
            int payloadLen = length - Protocol.RECORD_HEADER_LEN;
            if (payloadLen < Protocol.ENVELOPE_LEN) {
                throw new ProtocolException("ring " + name + ": record at position " + pos + " has a payload of "
                        + payloadLen + " bytes, shorter than the envelope");
            }
            int e = at + Protocol.RECORD_HEADER_LEN;
            Protocol.Envelope env = new Protocol.Envelope(buf.getInt(e), buf.getInt(e + 4), buf.getLong(e + 8),
                    buf.getInt(e + 16));
            if (buf.getInt(e + 20) != 0) {
                throw new ProtocolException("ring " + name + ": record at position " + pos
                        + ": envelope reserved field is not zero");
            }
            if ((env.flags() & ~Protocol.KNOWN_FLAGS) != 0) {
                throw new ProtocolException("ring " + name + ": record at position " + pos + ": unknown flags 0x"
                        + Integer.toHexString(env.flags()));
            }
            // Copied out before it is decoded: the peer could still be writing it.
            byte[] body = new byte[payloadLen - Protocol.ENVELOPE_LEN];
            buf.get(e + Protocol.ENVELOPE_LEN, body);
            pos += aligned;
            LONG.setRelease(buf, ctrl + Protocol.HEAD_OFF, pos);
            return new Protocol.Message(env, body);
        }
    }

    /**
     * A hint for a thread that does not own this consumer: whether the
     * tail moved past the last position it knows of (racy, never trusted).
     */
    public boolean hasDataHint() {
        return (long) LONG.getAcquire(buf, ctrl + Protocol.TAIL_OFF) != pos;
    }

    // === wake-up flag ===

    public void setNeedWakeup(boolean on) {
        INT.setVolatile(buf, ctrl + Protocol.WAKE_OFF, on ? 1 : 0);
    }

    public boolean needWakeup() {
        return (int) INT.getVolatile(buf, ctrl + Protocol.WAKE_OFF) != 0;
    }

    /** The session state word of the segment this ring lives in (§3.1): 1 = closed by the runtime. */
    public static boolean sessionClosed(ByteBuffer segment) {
        return (int) INT.getVolatile(segment, Protocol.SESSION_STATE_OFF) != 0;
    }

    /** For tests: the raw tail counter. */
    long tail() {
        return (long) LONG.getVolatile(buf, ctrl + Protocol.TAIL_OFF);
    }

    /** For tests: stores the tail counter (as a peer producer would). */
    void publishTail(long tail) {
        LONG.setRelease(buf, ctrl + Protocol.TAIL_OFF, tail);
    }
}
