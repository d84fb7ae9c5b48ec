package dev.weft.sdk;

import java.util.Collection;

/** Argument checks: IllegalArgumentException naming the argument. */
final class Args {
    private Args() {}

    static void notNull(Object v, String name) {
        if (v == null) {
            throw new IllegalArgumentException(name + " must not be null");
        }
    }

    static void notEmpty(String v, String name) {
        if (v == null) {
            throw new IllegalArgumentException(name + " must not be null");
        }
        if (v.isBlank()) {
            throw new IllegalArgumentException(name + " must not be empty");
        }
    }

    static void notEmpty(Collection<?> v, String name) {
        if (v == null) {
            throw new IllegalArgumentException(name + " must not be null");
        }
        if (v.isEmpty()) {
            throw new IllegalArgumentException(name + " must not be empty");
        }
        int i = 0;
        for (Object o : v) {
            if (o == null) {
                throw new IllegalArgumentException(name + "[" + i + "] must not be null");
            }
            i++;
        }
    }
}
