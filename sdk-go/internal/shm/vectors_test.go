package shm

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	weftv1 "weft.dev/sdk-go/proto/weft/runtime/v1"
)

type vector struct {
	Name     string          `json:"name"`
	Kind     string          `json:"kind"`
	Hex      string          `json:"hex"`
	BodyHex  string          `json:"body_hex"`
	Envelope Envelope        `json:"envelope"`
	Length   int             `json:"length"`
	Fields   json.RawMessage `json:"fields"`
}

func vectorsPath(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "docs", "shm-vectors", "v1.json")
}

// TestVectors reproduces and parses every vector of docs/shm-vectors/v1.json.
func TestVectors(t *testing.T) {
	raw, err := os.ReadFile(vectorsPath(t))
	if err != nil {
		t.Fatalf("the spec's test vectors: %v", err)
	}
	var file struct {
		Version int      `json:"protocol_version"`
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if file.Version != Version {
		t.Fatalf("vectors are for version %d, this client speaks %d", file.Version, Version)
	}
	kinds := map[string]int{}
	for _, v := range file.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			want, err := hex.DecodeString(v.Hex)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			switch v.Kind {
			case "segment_header":
				var h Header
				mustJSON(t, v.Fields, &h)
				got = EncodeHeader(h)
				full := append(append([]byte{}, want...), make([]byte, HeaderLen-len(want))...)
				back, err := ParseHeader(full, h.TotalLen)
				if err != nil || back != h {
					t.Fatalf("parsed %+v (%v), want %+v", back, err, h)
				}
				if _, err := ParseHeader(full, h.TotalLen+8); err == nil {
					t.Fatal("a wrong file length was accepted")
				}
			case "record":
				body, _ := hex.DecodeString(v.BodyHex)
				got = EncodeRecord(v.Envelope, body)
				c := consumerWith(t, want, 1<<12)
				var payloads [][]byte
				if _, err := c.poll(func(p []byte) { payloads = append(payloads, append([]byte(nil), p...)) }); err != nil {
					t.Fatal(err)
				}
				if len(payloads) != 1 {
					t.Fatalf("read %d records", len(payloads))
				}
				env, b, err := DecodeEnvelope(payloads[0])
				if err != nil || env != v.Envelope || !bytes.Equal(b, body) {
					t.Fatalf("decoded %+v %x (%v)", env, b, err)
				}
				if env.Flags&FlagContext != 0 {
					checkContextVector(t, v.Name, env, b)
				}
			case "padding":
				got = EncodePadding(v.Length)
			case "hello":
				var h Hello
				mustJSON(t, v.Fields, &h)
				got, err = h.Encode()
				if err != nil {
					t.Fatal(err)
				}
			case "welcome":
				var w Welcome
				mustJSON(t, v.Fields, &w)
				got = w.Encode()
				ver, st, n, err := ParseWelcomeHead(want)
				if err != nil || ver != w.Version || st != w.Status || int(n) != len(w.Text) || string(want[WelcomeHeadLen:]) != w.Text {
					t.Fatalf("parsed %d %d %d (%v)", ver, st, n, err)
				}
			case "mapped":
				got = MappedFrame()
			case "goodbye":
				var g Goodbye
				mustJSON(t, v.Fields, &g)
				got = g.Encode()
				back, ok, err := ParseGoodbye(want)
				if err != nil || !ok || back != g {
					t.Fatalf("parsed %+v %v (%v)", back, ok, err)
				}
				if _, ok, _ := ParseGoodbye(want[:len(want)-1]); ok {
					t.Fatal("a cut goodbye parsed")
				}
			default:
				t.Fatalf("unknown vector kind %q", v.Kind)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encoded\n%x\nspec says\n%x", got, want)
			}
		})
		kinds[v.Kind]++
	}
	if contexts := countContextRecords(file.Vectors); contexts < 2 {
		t.Errorf("expected the context_request and context_error_response vectors, found %d records with CONTEXT", contexts)
	}
	for _, k := range []string{"segment_header", "record", "padding", "hello", "welcome", "mapped", "goodbye"} {
		if kinds[k] == 0 {
			t.Errorf("no vector of kind %q was checked", k)
		}
	}
}

func mustJSON(t *testing.T, raw json.RawMessage, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

// consumerWith returns a consumer over a ring of size bytes holding recs
// at position 0, published.
func consumerWith(t *testing.T, recs []byte, size int) *consumer {
	t.Helper()
	mem := make([]byte, RingControlLen+size)
	copy(mem[RingControlLen:], recs)
	c := &consumer{ring: newRing(mem, 0, uint64(size), "test")}
	atomic.StoreUint64(c.tail, uint64(len(recs)))
	return c
}

func newTestRing(size int) (*producer, *consumer) {
	mem := make([]byte, RingControlLen+size)
	r := newRing(mem, 0, uint64(size), "test")
	return &producer{ring: r}, &consumer{ring: r}
}

func write(t *testing.T, p *producer, rec []byte) bool {
	t.Helper()
	n := Align8(len(rec))
	dst, _, err := p.reserve(n)
	if err != nil {
		t.Fatal(err)
	}
	if dst == nil {
		return false
	}
	copy(dst, rec)
	p.publish(n)
	return true
}

// TestRingWrapsWithPadding writes records across the end of the ring: a
// padding record fills the rest, the record starts at index 0 (§4).
func TestRingWrapsWithPadding(t *testing.T) {
	p, c := newTestRing(4096)
	body := bytes.Repeat([]byte{0xAB}, 1000)
	seen := 0
	for i := 0; i < 40; i++ {
		rec := EncodeRecord(Envelope{Method: 2, Correlation: uint64(i)}, body)
		if !write(t, p, rec) {
			t.Fatalf("ring full at record %d", i)
		}
		_, err := c.poll(func(pl []byte) {
			env, b, err := DecodeEnvelope(pl)
			if err != nil || env.Correlation != uint64(seen) || !bytes.Equal(b, body) {
				t.Fatalf("record %d: %+v (%v)", seen, env, err)
			}
			seen++
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if seen != 40 {
		t.Fatalf("read %d records", seen)
	}
	// Full ring: the producer says so instead of overwriting.
	for write(t, p, EncodeRecord(Envelope{}, body)) {
	}
	if _, err := c.poll(func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	if !write(t, p, EncodeRecord(Envelope{}, body)) {
		t.Fatal("no room after the consumer caught up")
	}
}

// TestConsumerRejectsBadRecords checks the consumer's checks of §4.
func TestConsumerRejectsBadRecords(t *testing.T) {
	bad := map[string][]byte{
		"short length":  {4, 0, 0, 0, 1, 0, 0, 0},
		"unknown type":  {8, 0, 0, 0, 7, 0, 0, 0},
		"short padding": EncodePadding(16),
		"too long":      {0, 0x10, 0, 0, 1, 0, 0, 0},
	}
	for name, rec := range bad {
		c := consumerWith(t, rec, 4096)
		if _, err := c.poll(func([]byte) {}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c := consumerWith(t, nil, 4096)
	atomic.StoreUint64(c.tail, 8192)
	if _, err := c.poll(func([]byte) {}); err == nil {
		t.Error("a tail more than the ring size ahead was accepted")
	}
	if _, _, err := DecodeEnvelope(make([]byte, 10)); err == nil {
		t.Error("a short envelope was accepted")
	}
	e := make([]byte, EnvelopeLen)
	PutEnvelope(e, Envelope{Flags: 0x100})
	if _, _, err := DecodeEnvelope(e); err == nil {
		t.Error("unknown flags were accepted")
	}
}

// TestContextBlock checks the call context block of §5.1 byte for byte:
// u32 length, then the protobuf CallContext, then the body.
func TestContextBlock(t *testing.T) {
	cc := EncodeCallContext(1500*time.Millisecond, map[string][]string{
		"Traceparent":    {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"x-b":            {"1", "2"},
		"x-id-bin":       {"\x01\x02\xff"},
		"grpc-timeout":   {"1S"},
		"dapr-api-token": {"secret"},
	})
	// Field 1 (varint) 1 500 000 µs; then field 2 entries sorted by key,
	// lower-cased, hop keys dropped.
	want := []byte{0x08}
	want = appendVarint(want, 1500000)
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	m1 := appendBytes(appendBytes(nil, 1, []byte("traceparent")), 2, []byte(tp))
	m2 := appendBytes(appendBytes(appendBytes(nil, 1, []byte("x-b")), 2, []byte("1")), 2, []byte("2"))
	m3 := appendBytes(appendBytes(nil, 1, []byte("x-id-bin")), 2, []byte("AQL/"))
	want = appendBytes(want, 2, m1)
	want = appendBytes(want, 2, m2)
	want = appendBytes(want, 2, m3)
	if !bytes.Equal(cc, want) {
		t.Fatalf("CallContext\n%x\nwant\n%x", cc, want)
	}
	body := []byte{0x0a, 0x01, 'x'}
	block := append(AppendContextBlock(nil, cc), body...)
	if le.Uint32(block) != uint32(len(cc)) || !bytes.Equal(block[4:4+len(cc)], cc) {
		t.Fatalf("block %x", block)
	}
	gotCtx, rest, err := SplitContextBlock(block)
	if err != nil || !bytes.Equal(gotCtx, cc) || !bytes.Equal(rest, body) {
		t.Fatalf("split: %x %x %v", gotCtx, rest, err)
	}
	// An empty context (C = 0) is allowed.
	if c, r, err := SplitContextBlock([]byte{0, 0, 0, 0, 9}); err != nil || len(c) != 0 || !bytes.Equal(r, []byte{9}) {
		t.Fatalf("empty context: %x %x %v", c, r, err)
	}
	for _, b := range [][]byte{{1, 0}, {5, 0, 0, 0, 1}} {
		if _, _, err := SplitContextBlock(b); err == nil {
			t.Errorf("%x: accepted", b)
		}
	}
	if EncodeCallContext(0, map[string][]string{"grpc-timeout": {"1S"}}) != nil {
		t.Error("a context with nothing to say was encoded")
	}

	// An END record with CONTEXT carrying status details, as a runtime
	// would send it, decodes into the error with its details.
	details := []byte{0x08, 0x05, 0x12, 0x02, 'n', 'o'}
	respCtx, _ := proto.Marshal(&weftv1.CallContext{
		Metadata:      []*weftv1.Metadata{{Key: "x-answer", Values: []string{"42"}}, {Key: "x-raw-bin", Values: []string{"AQL/"}}},
		StatusDetails: details,
	})
	endBody := append(AppendContextBlock(nil, respCtx), []byte("no such thing")...)
	rec := EncodeRecord(Envelope{Method: 1, Flags: FlagEnd | FlagContext, Correlation: 3, Status: 5}, endBody)
	c := consumerWith(t, rec, 4096)
	var env Envelope
	var got []byte
	if _, err := c.poll(func(p []byte) {
		var b []byte
		env, b, _ = DecodeEnvelope(p)
		got = append([]byte(nil), b...)
	}); err != nil {
		t.Fatal(err)
	}
	r, err := decodeReply(env, got, nil)
	st, ok := err.(*Status)
	if !ok || st.Code != 5 || st.Message != "no such thing" || !bytes.Equal(st.Details, details) {
		t.Fatalf("decoded %#v", err)
	}
	if md := ContextMetadata(r.Context); md["x-answer"][0] != "42" || md["x-raw-bin"][0] != "\x01\x02\xff" {
		t.Fatalf("response metadata %v", md)
	}
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendBytes(b []byte, field int, v []byte) []byte {
	b = appendVarint(b, uint64(field<<3|2))
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// checkContextVector checks a record with flag CONTEXT (§5.1): its context
// block decodes, a request's block is what this client would encode for the
// same deadline and metadata, and an error answer yields its code, message
// and details.
func checkContextVector(t *testing.T, name string, env Envelope, body []byte) {
	t.Helper()
	cb, rest, err := SplitContextBlock(body)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	cc, err := DecodeCallContext(cb)
	if err != nil {
		t.Fatalf("%s: CallContext: %v", name, err)
	}
	if env.Flags&FlagEnd == 0 {
		md := map[string][]string{}
		for _, m := range cc.GetMetadata() {
			md[m.GetKey()] = m.GetValues()
		}
		mine := EncodeCallContext(time.Duration(cc.GetTimeoutMicros())*time.Microsecond, md)
		if !bytes.Equal(mine, cb) {
			t.Fatalf("%s: this client encodes the context as\n%x\nthe spec says\n%x", name, mine, cb)
		}
		if len(rest) == 0 {
			t.Fatalf("%s: no request after the context", name)
		}
		return
	}
	_, err = decodeReply(env, body, nil)
	st, ok := err.(*Status)
	if !ok || st.Code != env.Status || st.Message != string(rest) || len(st.Details) == 0 {
		t.Fatalf("%s: decoded %#v", name, err)
	}
	p := &spb.Status{}
	if err := proto.Unmarshal(st.Details, p); err != nil || p.GetCode() != int32(env.Status) {
		t.Fatalf("%s: details %v (%v)", name, p, err)
	}
}

func countContextRecords(vs []vector) int {
	n := 0
	for _, v := range vs {
		if v.Kind == "record" && v.Envelope.Flags&FlagContext != 0 {
			n++
		}
	}
	return n
}
