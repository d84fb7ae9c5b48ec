package dev.weft.sdk;

/**
 * Answers invocations of this app. Throw a {@link WeftException} to answer
 * with its code and message; any other exception answers UNKNOWN with its
 * message. Called on the client's handler threads, possibly concurrently.
 */
@FunctionalInterface
public interface InvocationHandler {
    InvokeMethodResponse onInvoke(Invocation invocation) throws Exception;
}
