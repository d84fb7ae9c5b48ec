package dev.weft.sdk;

/** Concurrency and consistency of a state operation (Dapr's StateOptions). */
public final class StateOptions {
    /** FIRST_WRITE: a write must carry the current etag (none for a new key); LAST_WRITE: the last write wins. */
    public enum Concurrency { FIRST_WRITE, LAST_WRITE }

    public enum Consistency { EVENTUAL, STRONG }

    private final Consistency consistency;
    private final Concurrency concurrency;

    public StateOptions(Consistency consistency, Concurrency concurrency) {
        this.consistency = consistency;
        this.concurrency = concurrency;
    }

    public static StateOptions firstWrite() {
        return new StateOptions(null, Concurrency.FIRST_WRITE);
    }

    public static StateOptions lastWrite() {
        return new StateOptions(null, Concurrency.LAST_WRITE);
    }

    public Consistency getConsistency() {
        return consistency;
    }

    public Concurrency getConcurrency() {
        return concurrency;
    }
}
