package dev.weft.test;

import java.io.Serializable;
import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** An argument with one field of each kind hessian2 encodes differently. */
public class Payload implements Serializable {
    private static final long serialVersionUID = 1L;

    public enum Color { RED, GREEN, BLUE }

    public String name;
    public String longText;
    public int small;
    public int medium;
    public int large;
    public long big;
    public long tinyLong;
    public double ratio;
    public double wholeDouble;
    public float single;
    public boolean flag;
    public char letter;
    public short shortValue;
    public byte byteValue;
    public Date when;
    public byte[] blob;
    public int[] numbers;
    public String[] words;
    public List<String> tags = new ArrayList<>();
    public Map<String, Integer> scores = new LinkedHashMap<>();
    public BigDecimal amount;
    public Color color;
    public Payload child;
    public Object nothing;

    /** A payload exercising every field; {@code depth} nested children. */
    public static Payload sample(int depth) {
        Payload p = new Payload();
        p.name = "payload-" + depth + " \u00e9\u4e2d\ud83d\ude00";
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 3000; i++) {
            sb.append((char) ('a' + i % 26));
            if (i % 500 == 0) {
                sb.append('\u00fc').append('\u4e16').append("\ud83c\udf0d");
            }
        }
        p.longText = sb.toString();
        p.small = -7;
        p.medium = 1500;
        p.large = 2_000_000_000;
        p.big = 9_000_000_000_000L;
        p.tinyLong = 3;
        p.ratio = 3.14159;
        p.wholeDouble = 12.0;
        p.single = 1.5f;
        p.flag = true;
        p.letter = 'Z';
        p.shortValue = (short) -300;
        p.byteValue = (byte) 100;
        p.when = new Date(1_700_000_000_123L);
        p.blob = new byte[5000];
        for (int i = 0; i < p.blob.length; i++) {
            p.blob[i] = (byte) (i * 31);
        }
        p.numbers = new int[] {1, -1, 300, 70000, Integer.MIN_VALUE};
        p.words = new String[] {"alpha", "", "gamma"};
        p.tags.add("t1");
        p.tags.add("t2");
        p.scores.put("x", 1);
        p.scores.put("y", -100000);
        p.amount = new BigDecimal("12345.678");
        p.color = Color.GREEN;
        p.child = depth > 0 ? sample(depth - 1) : null;
        return p;
    }

    /** A deterministic text form of every field. */
    public String summary() {
        long blobSum = 0;
        if (blob != null) {
            for (byte b : blob) {
                blobSum = blobSum * 31 + (b & 0xff);
            }
        }
        return "name=" + name
                + ";text=" + (longText == null ? "null" : longText.length() + ":" + longText.hashCode())
                + ";ints=" + small + "," + medium + "," + large
                + ";longs=" + big + "," + tinyLong
                + ";doubles=" + ratio + "," + wholeDouble + "," + single
                + ";flag=" + flag + ";letter=" + letter + ";short=" + shortValue + ";byte=" + byteValue
                + ";when=" + (when == null ? "null" : when.getTime())
                + ";blob=" + (blob == null ? "null" : blob.length + ":" + blobSum)
                + ";numbers=" + Arrays.toString(numbers)
                + ";words=" + Arrays.toString(words)
                + ";tags=" + tags + ";scores=" + scores
                + ";amount=" + amount + ";color=" + color
                + ";nothing=" + nothing
                + ";child=" + (child == null ? "null" : "{" + child.summary() + "}");
    }
}
