package dev.weft.sdk;

/** Which transport a client uses: {@code WEFT_TRANSPORT=shm|grpc|auto}. */
public enum TransportKind {
    /** Shared memory only: building the client fails if the runtime does not offer it. */
    SHM,
    /** gRPC over TCP only. */
    GRPC,
    /** Shared memory when the runtime offers it, else gRPC (logged once, with the reason). The default. */
    AUTO;

    static TransportKind parse(String s, String source) {
        switch (s.trim().toLowerCase(java.util.Locale.ROOT)) {
            case "shm":
                return SHM;
            case "grpc":
                return GRPC;
            case "auto":
            case "":
                return AUTO;
            default:
                throw new IllegalArgumentException(source + ": '" + s + "' is not one of shm, grpc, auto");
        }
    }
}
