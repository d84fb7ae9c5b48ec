package dev.weft.sdk.shm;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** The segment header (§3.1), as read from the mapped file. */
public record SegmentHeader(
        long runtimePid,
        long appPid,
        long sessionId,
        long a2rOffset,
        long a2rCapacity,
        long r2aOffset,
        long r2aCapacity,
        int features) {

    /** Checks and reads the header of a segment of {@code fileLen} bytes. */
    public static SegmentHeader parse(ByteBuffer segment, long fileLen) {
        ByteBuffer b = segment.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        if (fileLen < Protocol.HEADER_LEN || b.limit() < 64) {
            throw new ProtocolException("segment of " + fileLen + " bytes is shorter than its header");
        }
        for (int i = 0; i < 8; i++) {
            if (b.get(i) != Protocol.SEGMENT_MAGIC[i]) {
                throw new ProtocolException("segment header: bad magic");
            }
        }
        int version = b.getInt(8);
        if (version != Protocol.VERSION) {
            throw new ProtocolException("segment header: version " + version + ", this client speaks " + Protocol.VERSION);
        }
        int headerLen = b.getInt(12);
        if (headerLen != Protocol.HEADER_LEN) {
            throw new ProtocolException("segment header: header length " + headerLen + ", expected 512");
        }
        SegmentHeader h = new SegmentHeader(
                Integer.toUnsignedLong(b.getInt(16)),
                Integer.toUnsignedLong(b.getInt(20)),
                b.getLong(24),
                b.getLong(32),
                b.getLong(40),
                b.getLong(48),
                b.getLong(56),
                b.limit() >= Protocol.FEATURES_OFF + 4 ? b.getInt(Protocol.FEATURES_OFF) : 0);
        if (!Protocol.validRingSize(h.a2rCapacity) || !Protocol.validRingSize(h.r2aCapacity)) {
            throw new ProtocolException("segment header: ring sizes " + h.a2rCapacity + " and " + h.r2aCapacity
                    + " must be powers of two from 4096 to 2^28");
        }
        if (h.a2rOffset != Protocol.HEADER_LEN
                || h.r2aOffset != Protocol.HEADER_LEN + Protocol.RING_CONTROL_LEN + h.a2rCapacity) {
            throw new ProtocolException("segment header: ring offsets " + h.a2rOffset + " and " + h.r2aOffset
                    + " do not follow the layout");
        }
        if (fileLen != h.r2aOffset + Protocol.RING_CONTROL_LEN + h.r2aCapacity) {
            throw new ProtocolException("segment header: file length " + fileLen + ", the layout needs "
                    + (h.r2aOffset + Protocol.RING_CONTROL_LEN + h.r2aCapacity));
        }
        return h;
    }

    /** The first 64 bytes of a header with these fields (the rest is zero). */
    public byte[] encodeFirst64() {
        ByteBuffer b = ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN);
        b.put(Protocol.SEGMENT_MAGIC).putInt(Protocol.VERSION).putInt(Protocol.HEADER_LEN);
        b.putInt((int) runtimePid).putInt((int) appPid).putLong(sessionId);
        b.putLong(a2rOffset).putLong(a2rCapacity).putLong(r2aOffset).putLong(r2aCapacity);
        return b.array();
    }

    /** Total file length of the layout. */
    public long totalLength() {
        return r2aOffset + Protocol.RING_CONTROL_LEN + r2aCapacity;
    }
}
