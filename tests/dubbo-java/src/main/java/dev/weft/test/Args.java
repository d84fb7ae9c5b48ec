package dev.weft.test;

import java.util.HashMap;
import java.util.Map;

/** `--key value` command-line options. */
final class Args {
    private final Map<String, String> values = new HashMap<>();

    Args(String[] argv) {
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (!a.startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("expected --name value pairs, got '" + a + "'");
            }
            values.put(a.substring(2), argv[++i]);
        }
    }

    String get(String key, String fallback) {
        return values.getOrDefault(key, fallback);
    }

    String required(String key) {
        String v = values.get(key);
        if (v == null) {
            throw new IllegalArgumentException("missing --" + key);
        }
        return v;
    }

    int integer(String key, int fallback) {
        String v = values.get(key);
        return v == null ? fallback : Integer.parseInt(v);
    }
}
