package dev.weft.sdk;

/** One operation of {@link WeftClient#executeStateTransaction}: an upsert or a delete of a state item. */
public final class TransactionalStateOperation {
    public enum OperationType {
        UPSERT("upsert"), DELETE("delete");

        final String wire;

        OperationType(String wire) {
            this.wire = wire;
        }
    }

    private final OperationType operation;
    private final State request;

    public TransactionalStateOperation(OperationType operation, State request) {
        Args.notNull(operation, "operation");
        Args.notNull(request, "request");
        this.operation = operation;
        this.request = request;
    }

    public static TransactionalStateOperation upsert(State s) {
        return new TransactionalStateOperation(OperationType.UPSERT, s);
    }

    public static TransactionalStateOperation delete(String key) {
        return new TransactionalStateOperation(OperationType.DELETE, new State(key, (byte[]) null));
    }

    public OperationType getOperation() {
        return operation;
    }

    public State getRequest() {
        return request;
    }
}
