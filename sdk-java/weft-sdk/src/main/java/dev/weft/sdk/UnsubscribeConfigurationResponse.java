package dev.weft.sdk;

/** The answer to {@link WeftClient#unsubscribeConfiguration}. */
public final class UnsubscribeConfigurationResponse {
    private final boolean unsubscribed;
    private final String message;

    public UnsubscribeConfigurationResponse(boolean unsubscribed, String message) {
        this.unsubscribed = unsubscribed;
        this.message = message;
    }

    public boolean getIsUnsubscribed() {
        return unsubscribed;
    }

    public String getMessage() {
        return message;
    }
}
