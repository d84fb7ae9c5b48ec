// Command go-shm is a minimal, standard-library-only client of Weft's
// shared-memory protocol (docs/shm-protocol.md): it checks the test vectors
// of docs/shm-vectors/v1.json, then does the handshake and a SaveState and
// GetState over shared memory against a running weft. It exists to prove
// that the protocol is implementable outside Rust without native code.
//
//	go run . -socket /path/shm.sock -app-id myapp -vectors ../../docs/shm-vectors/v1.json
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

const (
	headerLen       = 512
	ringControlLen  = 512
	tailOff         = 0
	headOff         = 128
	wakeOff         = 256
	sessionStateOff = 128
	typeMessage     = 1
	typePadding     = -1
	envelopeLen     = 24
	flagEnd         = 1
	methodGetState  = 2
	methodSaveState = 4
)

var le = binary.LittleEndian

type envelope struct {
	Method      uint32 `json:"method"`
	Flags       uint32 `json:"flags"`
	Correlation uint64 `json:"correlation"`
	Status      uint32 `json:"status"`
}

func align8(n int) int { return (n + 7) &^ 7 }

// encodeRecord encodes a whole message record, zero-padded to 8 bytes.
func encodeRecord(env envelope, body []byte) []byte {
	length := 8 + envelopeLen + len(body)
	b := make([]byte, align8(length))
	le.PutUint32(b[0:], uint32(int32(length)))
	le.PutUint32(b[4:], uint32(int32(typeMessage)))
	le.PutUint32(b[8:], env.Method)
	le.PutUint32(b[12:], env.Flags)
	le.PutUint64(b[16:], env.Correlation)
	le.PutUint32(b[24:], env.Status)
	copy(b[32:], body)
	return b
}

func encodePadding(length int) []byte {
	b := make([]byte, length)
	le.PutUint32(b[0:], uint32(int32(length)))
	m1 := int32(typePadding)
	le.PutUint32(b[4:], uint32(m1))
	return b
}

func decodeEnvelope(p []byte) (envelope, []byte, error) {
	if len(p) < envelopeLen {
		return envelope{}, nil, fmt.Errorf("payload of %d bytes is shorter than the envelope", len(p))
	}
	env := envelope{le.Uint32(p[0:]), le.Uint32(p[4:]), le.Uint64(p[8:]), le.Uint32(p[16:])}
	if le.Uint32(p[20:]) != 0 || env.Flags&^0x1f != 0 {
		return env, nil, errors.New("bad envelope")
	}
	return env, p[envelopeLen:], nil
}

// === protobuf by hand ===

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendBytesField(b []byte, field int, v []byte) []byte {
	b = appendVarint(b, uint64(field<<3|2))
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// fields returns the length-delimited fields of a message by number.
func fields(b []byte) (map[int][]byte, error) {
	out := map[int][]byte{}
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, errors.New("bad tag")
		}
		b = b[n:]
		switch key & 7 {
		case 0:
			_, n = binary.Uvarint(b)
			if n <= 0 {
				return nil, errors.New("bad varint")
			}
			b = b[n:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return nil, errors.New("bad length")
			}
			out[int(key>>3)] = b[n : n+int(l)]
			b = b[n+int(l):]
		default:
			return nil, fmt.Errorf("unexpected wire type %d", key&7)
		}
	}
	return out, nil
}

// === rings ===

type ring struct {
	mem  []byte
	ctrl int
	data int
	size uint64
	pos  uint64 // our tail (producer) or head (consumer)
}

func (r *ring) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&r.mem[r.ctrl+off])) }
func (r *ring) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.mem[r.ctrl+off])) }

// write publishes one record (already aligned); false when there is no room.
// Go's atomic stores are sequentially consistent, which gives both the
// release ordering and the full fence the spec asks for.
func (r *ring) write(rec []byte) (bool, error) {
	n := uint64(len(rec))
	if n > r.size/2 {
		return false, fmt.Errorf("record of %d bytes exceeds half the ring", n)
	}
	head := atomic.LoadUint64(r.u64(headOff))
	if head > r.pos || r.pos-head > r.size {
		return false, fmt.Errorf("head counter %d out of range", head)
	}
	idx := r.pos & (r.size - 1)
	toEnd := r.size - idx
	need := n
	if n > toEnd {
		need = toEnd + n
	}
	if r.size-(r.pos-head) < need {
		return false, nil
	}
	if n > toEnd {
		copy(r.mem[r.data+int(idx):], encodePadding(int(toEnd))[:8])
		r.pos += toEnd
		idx = 0
	}
	copy(r.mem[r.data+int(idx):], rec)
	r.pos += n
	atomic.StoreUint64(r.u64(tailOff), r.pos)
	return true, nil
}

// read returns the next message payload (a copy), or nil when empty.
func (r *ring) read() ([]byte, error) {
	for {
		tail := atomic.LoadUint64(r.u64(tailOff))
		if tail < r.pos || tail-r.pos > r.size {
			return nil, fmt.Errorf("tail counter %d out of range", tail)
		}
		if tail == r.pos {
			return nil, nil
		}
		idx := r.pos & (r.size - 1)
		toEnd := r.size - idx
		at := r.data + int(idx)
		length := int32(le.Uint32(r.mem[at:]))
		typ := int32(le.Uint32(r.mem[at+4:]))
		if length < 8 || uint64(length) > toEnd || uint64(length) > tail-r.pos {
			return nil, fmt.Errorf("bad record length %d", length)
		}
		switch typ {
		case typePadding:
			if uint64(length) != toEnd {
				return nil, errors.New("bad padding")
			}
			r.pos += toEnd
		case typeMessage:
			p := make([]byte, length-8)
			copy(p, r.mem[at+8:at+int(length)])
			r.pos += uint64(align8(int(length)))
			atomic.StoreUint64(r.u64(headOff), r.pos)
			return p, nil
		default:
			return nil, fmt.Errorf("bad record type %d", typ)
		}
		atomic.StoreUint64(r.u64(headOff), r.pos)
	}
}

// === session ===

type session struct {
	sock    *net.UnixConn
	mem     []byte
	tx, rx  *ring
	nextCor uint64
}

func connect(path, appID string) (*session, error) {
	sock, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	hello := []byte("WEFTHELO")
	hello = le.AppendUint32(hello, 1)
	hello = le.AppendUint32(hello, 1<<16)
	hello = le.AppendUint32(hello, 1<<16)
	hello = le.AppendUint16(hello, uint16(len(appID)))
	hello = le.AppendUint16(hello, 0)
	hello = append(hello, appID...)
	if _, err := sock.Write(hello); err != nil {
		return nil, err
	}
	_ = sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	w := make([]byte, 20)
	if _, err := io.ReadFull(sock, w); err != nil {
		return nil, fmt.Errorf("welcome: %w", err)
	}
	if string(w[:8]) != "WEFTWLCM" {
		return nil, errors.New("bad welcome magic")
	}
	text := make([]byte, le.Uint32(w[16:]))
	if _, err := io.ReadFull(sock, text); err != nil {
		return nil, err
	}
	if st := le.Uint32(w[12:]); st != 0 {
		return nil, fmt.Errorf("refused with status %d: %s", st, text)
	}
	f, err := os.OpenFile(string(text), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(info.Size()), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	h, err := parseHeader(mem[:64], uint64(info.Size()))
	if err != nil {
		return nil, err
	}
	if h.AppPid != uint64(os.Getpid()) {
		return nil, fmt.Errorf("segment is for pid %d, not %d", h.AppPid, os.Getpid())
	}
	if _, err := sock.Write([]byte("WEFTMAPD")); err != nil {
		return nil, err
	}
	return &session{
		sock:    sock,
		mem:     mem,
		tx:      &ring{mem: mem, ctrl: int(h.A2rOffset), data: int(h.A2rOffset) + ringControlLen, size: h.A2rCapacity},
		rx:      &ring{mem: mem, ctrl: int(h.R2aOffset), data: int(h.R2aOffset) + ringControlLen, size: h.R2aCapacity},
		nextCor: 1,
	}, nil
}

type header struct {
	RuntimePid  uint64 `json:"runtime_pid"`
	AppPid      uint64 `json:"app_pid"`
	SessionID   uint64 `json:"session_id"`
	A2rOffset   uint64 `json:"a2r_offset"`
	A2rCapacity uint64 `json:"a2r_capacity"`
	R2aOffset   uint64 `json:"r2a_offset"`
	R2aCapacity uint64 `json:"r2a_capacity"`
	TotalLen    uint64 `json:"total_len"`
}

func encodeHeader(h header) []byte {
	b := []byte("WEFT-SHM")
	b = le.AppendUint32(b, 1)
	b = le.AppendUint32(b, headerLen)
	b = le.AppendUint32(b, uint32(h.RuntimePid))
	b = le.AppendUint32(b, uint32(h.AppPid))
	b = le.AppendUint64(b, h.SessionID)
	b = le.AppendUint64(b, h.A2rOffset)
	b = le.AppendUint64(b, h.A2rCapacity)
	b = le.AppendUint64(b, h.R2aOffset)
	return le.AppendUint64(b, h.R2aCapacity)
}

func parseHeader(b []byte, fileLen uint64) (header, error) {
	if string(b[:8]) != "WEFT-SHM" || le.Uint32(b[8:]) != 1 || le.Uint32(b[12:]) != headerLen {
		return header{}, errors.New("bad segment header")
	}
	h := header{uint64(le.Uint32(b[16:])), uint64(le.Uint32(b[20:])), le.Uint64(b[24:]),
		le.Uint64(b[32:]), le.Uint64(b[40:]), le.Uint64(b[48:]), le.Uint64(b[56:]), fileLen}
	pow2 := func(x uint64) bool { return x >= 4096 && x <= 1<<28 && x&(x-1) == 0 }
	if !pow2(h.A2rCapacity) || !pow2(h.R2aCapacity) || h.A2rOffset != headerLen ||
		h.R2aOffset != headerLen+ringControlLen+h.A2rCapacity ||
		fileLen != h.R2aOffset+ringControlLen+h.R2aCapacity {
		return header{}, errors.New("bad segment layout")
	}
	return h, nil
}

// call sends one request and waits for its END record.
func (s *session) call(method uint32, body []byte) (envelope, []byte, error) {
	cor := s.nextCor
	s.nextCor++
	rec := encodeRecord(envelope{Method: method, Correlation: cor}, body)
	for {
		ok, err := s.tx.write(rec)
		if err != nil {
			return envelope{}, nil, err
		}
		if ok {
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	if atomic.LoadUint32(s.tx.u32(wakeOff)) != 0 {
		if _, err := s.sock.Write([]byte{1}); err != nil {
			return envelope{}, nil, err
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	spins := 0
	buf := make([]byte, 256)
	for {
		p, err := s.rx.read()
		if err != nil {
			return envelope{}, nil, err
		}
		if p != nil {
			env, body, err := decodeEnvelope(p)
			if err != nil {
				return env, nil, err
			}
			if env.Correlation == cor && env.Flags&flagEnd != 0 {
				return env, body, nil
			}
			continue
		}
		if spins++; spins < 20000 {
			continue
		}
		// Sleep: flag, fence (the atomic store), re-check, block on the socket.
		atomic.StoreUint32(s.rx.u32(wakeOff), 1)
		if atomic.LoadUint64(s.rx.u64(tailOff)) != s.rx.pos {
			atomic.StoreUint32(s.rx.u32(wakeOff), 0)
			continue
		}
		if atomic.LoadUint32((*uint32)(unsafe.Pointer(&s.mem[sessionStateOff]))) != 0 {
			return envelope{}, nil, errors.New("runtime closed the session")
		}
		_ = s.sock.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := s.sock.Read(buf)
		atomic.StoreUint32(s.rx.u32(wakeOff), 0)
		if i := bytes.IndexByte(buf[:n], 0xFF); i >= 0 {
			return envelope{}, nil, fmt.Errorf("goodbye from runtime: % x", buf[i:n])
		}
		if err == io.EOF {
			return envelope{}, nil, errors.New("runtime closed the socket")
		}
		if time.Now().After(deadline) {
			return envelope{}, nil, errors.New("timed out")
		}
		spins = 0
	}
}

// === test vectors ===

type vector struct {
	Name     string          `json:"name"`
	Kind     string          `json:"kind"`
	Hex      string          `json:"hex"`
	BodyHex  string          `json:"body_hex"`
	Envelope envelope        `json:"envelope"`
	Length   int             `json:"length"`
	Fields   json.RawMessage `json:"fields"`
}

func checkVectors(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var file struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		return err
	}
	for _, v := range file.Vectors {
		var got []byte
		switch v.Kind {
		case "segment_header":
			var h header
			if err := json.Unmarshal(v.Fields, &h); err != nil {
				return err
			}
			got = encodeHeader(h)
			want, _ := hex.DecodeString(v.Hex)
			back, err := parseHeader(want, h.TotalLen)
			if err != nil || back != h {
				return fmt.Errorf("%s: parsed %+v (%v)", v.Name, back, err)
			}
		case "record":
			body, _ := hex.DecodeString(v.BodyHex)
			got = encodeRecord(v.Envelope, body)
			r := &ring{mem: append(make([]byte, 512), got...), ctrl: 0, data: 512, size: 1 << 12}
			r.mem = append(r.mem, make([]byte, 1<<12)...)
			atomic.StoreUint64(r.u64(tailOff), uint64(len(got)))
			p, err := r.read()
			if err != nil {
				return fmt.Errorf("%s: %w", v.Name, err)
			}
			env, b, err := decodeEnvelope(p)
			if err != nil || env != v.Envelope || !bytes.Equal(b, body) {
				return fmt.Errorf("%s: decoded %+v %x (%v)", v.Name, env, b, err)
			}
		case "padding":
			got = encodePadding(v.Length)
		case "hello":
			var f struct {
				Version uint32 `json:"version"`
				A2r     uint32 `json:"a2r_capacity"`
				R2a     uint32 `json:"r2a_capacity"`
				AppID   string `json:"app_id"`
				Token   string `json:"token"`
			}
			_ = json.Unmarshal(v.Fields, &f)
			got = le.AppendUint32([]byte("WEFTHELO"), f.Version)
			got = le.AppendUint32(got, f.A2r)
			got = le.AppendUint32(got, f.R2a)
			got = le.AppendUint16(got, uint16(len(f.AppID)))
			got = le.AppendUint16(got, uint16(len(f.Token)))
			got = append(append(got, f.AppID...), f.Token...)
		case "welcome":
			var f struct {
				Version uint32 `json:"version"`
				Status  uint32 `json:"status"`
				Text    string `json:"text"`
			}
			_ = json.Unmarshal(v.Fields, &f)
			got = le.AppendUint32([]byte("WEFTWLCM"), f.Version)
			got = le.AppendUint32(got, f.Status)
			got = le.AppendUint32(got, uint32(len(f.Text)))
			got = append(got, f.Text...)
		case "mapped":
			got = []byte("WEFTMAPD")
		case "goodbye":
			var f struct {
				Code    uint32 `json:"code"`
				Message string `json:"message"`
			}
			_ = json.Unmarshal(v.Fields, &f)
			got = le.AppendUint32([]byte{0xFF}, f.Code)
			got = le.AppendUint32(got, uint32(len(f.Message)))
			got = append(got, f.Message...)
		default:
			return fmt.Errorf("unknown vector kind %q", v.Kind)
		}
		if hex.EncodeToString(got) != v.Hex {
			return fmt.Errorf("vector %s: encoded %x, spec says %s", v.Name, got, v.Hex)
		}
		fmt.Printf("vector %s ok\n", v.Name)
	}
	return nil
}

func run() error {
	socket := flag.String("socket", "", "the runtime's shared-memory socket")
	appID := flag.String("app-id", "", "the runtime's app id")
	vectors := flag.String("vectors", "", "path of docs/shm-vectors/v1.json")
	flag.Parse()
	if *vectors != "" {
		if err := checkVectors(*vectors); err != nil {
			return err
		}
	}
	if *socket == "" {
		return nil
	}
	s, err := connect(*socket, *appID)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	item := appendBytesField(appendBytesField(nil, 1, []byte("go-key")), 2, []byte("written by Go"))
	save := appendBytesField(appendBytesField(nil, 1, []byte("statestore")), 2, item)
	env, body, err := s.call(methodSaveState, save)
	if err != nil || env.Status != 0 {
		return fmt.Errorf("SaveState: status %d %s %v", env.Status, body, err)
	}
	get := appendBytesField(appendBytesField(nil, 1, []byte("statestore")), 2, []byte("go-key"))
	env, body, err = s.call(methodGetState, get)
	if err != nil || env.Status != 0 {
		return fmt.Errorf("GetState: status %d %s %v", env.Status, body, err)
	}
	f, err := fields(body)
	if err != nil {
		return err
	}
	if string(f[1]) != "written by Go" || len(f[2]) == 0 {
		return fmt.Errorf("GetState returned data %q etag %q", f[1], f[2])
	}
	bad := appendBytesField(appendBytesField(nil, 1, []byte("nope")), 2, []byte("k"))
	env, body, err = s.call(methodGetState, bad)
	if err != nil || env.Status != 3 {
		return fmt.Errorf("GetState on a missing store: status %d %s %v", env.Status, body, err)
	}
	fmt.Printf("GetState over shared memory: data %q etag %q\n", f[1], f[2])
	fmt.Printf("error over shared memory: status %d %q\n", env.Status, body)
	fmt.Println("GO-SHM OK")
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "go-shm:", err)
		os.Exit(1)
	}
}
