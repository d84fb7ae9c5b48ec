package dev.weft.sdk;

/** The HTTP verb and query string a service invocation carries (what access policies match). */
public final class HttpExtension {
    public enum Verb { NONE, GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH }

    public static final HttpExtension NONE = new HttpExtension(Verb.NONE, "");
    public static final HttpExtension GET = new HttpExtension(Verb.GET, "");
    public static final HttpExtension POST = new HttpExtension(Verb.POST, "");
    public static final HttpExtension PUT = new HttpExtension(Verb.PUT, "");
    public static final HttpExtension DELETE = new HttpExtension(Verb.DELETE, "");
    public static final HttpExtension PATCH = new HttpExtension(Verb.PATCH, "");

    private final Verb method;
    private final String querystring;

    public HttpExtension(Verb method, String querystring) {
        Args.notNull(method, "method");
        this.method = method;
        this.querystring = querystring == null ? "" : querystring;
    }

    public Verb getMethod() {
        return method;
    }

    public String getQueryString() {
        return querystring;
    }
}
