package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"weft.dev/sdk-go/internal/fastpb"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
)

// gRPC status codes used by this package.
const (
	codeCancelled          = 1
	codeDeadlineExceeded   = 4
	codeResourceExhausted  = 8
	codeFailedPrecondition = 9
	codeInternal           = 13
	codeUnavailable        = 14
)

// Status is an error answer: a gRPC code and message, with the encoded
// google.rpc.Status details when the runtime sent them (flag CONTEXT).
type Status struct {
	Code    uint32
	Message string
	// Details: the bytes of grpc-status-details-bin, or nil.
	Details []byte
	// SessionLost: the session ended under the call.
	SessionLost bool
	// Retryable: the session ended before the runtime read the request, so
	// it may be sent again on a new session.
	Retryable bool
	// Cause: the context error for a cancelled or timed-out call.
	Cause error
}

func (s *Status) Error() string { return s.Message }

// Unwrap returns the context error of a cancelled or timed-out call.
func (s *Status) Unwrap() error { return s.Cause }

// Options configure a session.
type Options struct {
	// Socket is the runtime's shared-memory socket (--shm-socket).
	Socket string
	// AppID must equal the runtime's --app-id.
	AppID string
	// Token is the runtime's API token, if it has one.
	Token string
	// RequestRing, ResponseRing: ring sizes (0: the runtime's default).
	RequestRing, ResponseRing uint32
	// Spin, Yield: how long a waiting caller busy-polls, then yields,
	// before it sleeps (docs/shm-protocol.md §7.3).
	Spin, Yield time.Duration
	// ConnectTimeout bounds connecting and the handshake.
	ConnectTimeout time.Duration
}

// call is one call in flight: a unary call, or a stream (st != nil).
type call struct {
	done   atomic.Uint32
	parked atomic.Uint32
	ch     chan struct{}
	env    Envelope
	buf    []byte
	err    *Status
	st     *Stream
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan struct{}, 1)} }}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Session is one shared-memory session with a runtime. It is safe for
// concurrent use: any number of goroutines may call at once.
type Session struct {
	opts Options
	conn *net.UnixConn
	raw  syscall.RawConn
	mem  []byte
	hdr  Header

	state *uint32 // header's session state word

	txMu sync.Mutex
	tx   producer

	rxMu sync.Mutex
	rx   consumer
	seen atomic.Uint64 // rx.pos after the last poll

	pendMu  sync.Mutex
	pending map[uint64]*call

	nextCorr atomic.Uint64

	pollMu        sync.Mutex
	pollers       int
	readerPolling int  // 1 while the reader goroutine is among the pollers
	wakeUp        bool // the need-wakeup flag of ring B is raised

	users     atomic.Int32
	dead      atomic.Bool
	deadErr   *Status
	deadOnce  sync.Once
	deadCh    chan struct{}
	unmapOnce sync.Once
}

// Dial connects to the runtime, does the handshake and maps the segment.
func Dial(ctx context.Context, opts Options) (*Session, error) {
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	unavailable := func(what string, err error) error {
		return &Status{Code: codeUnavailable, Message: fmt.Sprintf("weft shared-memory socket %s: %s: %v", opts.Socket, what, err)}
	}
	hello, err := Hello{Version: Version, RequestRing: opts.RequestRing, ResponseRing: opts.ResponseRing, AppID: opts.AppID, Token: opts.Token}.Encode()
	if err != nil {
		return nil, &Status{Code: 3, Message: "weft shared memory: " + err.Error()}
	}
	d := net.Dialer{Timeout: opts.ConnectTimeout}
	c, err := d.DialContext(ctx, "unix", opts.Socket)
	if err != nil {
		return nil, unavailable("cannot connect", err)
	}
	conn := c.(*net.UnixConn)
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close()
		}
	}()
	deadline := time.Now().Add(opts.ConnectTimeout)
	if dl, has := ctx.Deadline(); has && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(hello); err != nil {
		return nil, unavailable("cannot send the hello", err)
	}
	head := make([]byte, WelcomeHeadLen)
	if _, err := io.ReadFull(conn, head); err != nil {
		return nil, unavailable("no welcome", err)
	}
	_, status, n, err := ParseWelcomeHead(head)
	if err != nil {
		return nil, unavailable("bad welcome", err)
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(conn, text); err != nil {
		return nil, unavailable("welcome cut short", err)
	}
	if status != 0 {
		return nil, &Status{Code: status, Message: fmt.Sprintf("weft shared-memory socket %s refused the session: %s", opts.Socket, text)}
	}
	mem, hdr, err := mapSegment(string(text))
	if err != nil {
		return nil, &Status{Code: codeInternal, Message: fmt.Sprintf("weft shared-memory segment %s: %v", text, err)}
	}
	if hdr.AppPid != uint64(os.Getpid()) {
		_ = syscall.Munmap(mem)
		return nil, &Status{Code: codeFailedPrecondition, Message: fmt.Sprintf("weft shared-memory segment %s was made for pid %d, this process is %d", text, hdr.AppPid, os.Getpid())}
	}
	if _, err := conn.Write(MappedFrame()); err != nil {
		_ = syscall.Munmap(mem)
		return nil, unavailable("cannot acknowledge the mapping", err)
	}
	_ = conn.SetDeadline(time.Time{})
	raw, err := conn.SyscallConn()
	if err != nil {
		_ = syscall.Munmap(mem)
		return nil, unavailable("no raw socket", err)
	}
	s := &Session{
		opts:    opts,
		conn:    conn,
		raw:     raw,
		mem:     mem,
		hdr:     hdr,
		state:   (*uint32)(unsafe.Pointer(&mem[sessionStateOff])),
		tx:      producer{ring: newRing(mem, hdr.A2rOffset, hdr.A2rCapacity, "app->runtime")},
		rx:      consumer{ring: newRing(mem, hdr.R2aOffset, hdr.R2aCapacity, "runtime->app")},
		pending: make(map[uint64]*call),
		deadCh:  make(chan struct{}),
	}
	// Nobody polls yet: the reader goroutine sleeps on the socket.
	s.rx.setWake(true)
	s.wakeUp = true
	s.users.Add(1)
	go s.reader()
	ok = true
	return s, nil
}

func mapSegment(path string) ([]byte, Header, error) {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, Header{}, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, Header{}, err
	}
	if !info.Mode().IsRegular() {
		return nil, Header{}, errors.New("not a regular file")
	}
	size := info.Size()
	if size < HeaderLen+2*(RingControlLen+MinRing) || size > HeaderLen+2*(RingControlLen+MaxRing) {
		return nil, Header{}, fmt.Errorf("file of %d bytes cannot be a segment", size)
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, Header{}, fmt.Errorf("mmap: %w", err)
	}
	hdr, err := ParseHeader(mem[:HeaderLen], uint64(size))
	if err != nil {
		_ = syscall.Munmap(mem)
		return nil, Header{}, err
	}
	return mem, hdr, nil
}

// Header returns the segment header.
func (s *Session) Header() Header { return s.hdr }

// HasFeature reports whether the runtime serves a feature bit (§3.1).
func (s *Session) HasFeature(bit uint32) bool { return s.hdr.Features&bit != 0 }

// MaxBody is the largest request body (context block included) a record
// can carry on this session.
func (s *Session) MaxBody() int { return s.tx.maxRecord() - recordHdrLen - EnvelopeLen }

// Err returns why the session ended, or nil while it is open.
func (s *Session) Err() error {
	if !s.dead.Load() {
		return nil
	}
	return s.deadErr
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.deadCh }

// Close ends the session.
func (s *Session) Close() error {
	s.fail(&Status{Code: codeUnavailable, Message: "weft shared-memory session closed by the app", SessionLost: true})
	return nil
}

// === lifetime ===

func (s *Session) acquire() bool {
	s.users.Add(1)
	if s.dead.Load() {
		s.release()
		return false
	}
	return true
}

func (s *Session) release() {
	if s.users.Add(-1) == 0 && s.dead.Load() {
		s.unmap()
	}
}

func (s *Session) unmap() {
	s.unmapOnce.Do(func() { _ = syscall.Munmap(s.mem) })
}

// fail ends the session once: every call in flight fails with st.
func (s *Session) fail(st *Status) {
	s.deadOnce.Do(func() {
		st.SessionLost = true
		s.deadErr = st
		s.pendMu.Lock()
		s.dead.Store(true)
		calls := s.pending
		s.pending = make(map[uint64]*call)
		s.pendMu.Unlock()
		close(s.deadCh)
		_ = s.conn.Close()
		for _, c := range calls {
			if c.st != nil {
				c.st.push(Envelope{Flags: FlagEnd, Status: st.Code}, nil, st)
				continue
			}
			c.err = st
			c.complete()
		}
		if s.users.Load() == 0 {
			s.unmap()
		}
	})
}

func (s *Session) deadStatus() *Status {
	d := *s.deadErr
	return &d
}

// === receiving ===

func (c *call) complete() {
	c.done.Store(1)
	if c.parked.Load() != 0 {
		select {
		case c.ch <- struct{}{}:
		default:
		}
	}
}

// pollLocked drains ring B; the caller holds rxMu.
func (s *Session) pollLocked() {
	if s.dead.Load() {
		return
	}
	_, err := s.rx.poll(s.dispatch)
	s.seen.Store(s.rx.pos)
	if err != nil {
		s.fail(&Status{Code: codeUnavailable, Message: "weft shared-memory session failed: " + err.Error()})
	}
}

func (s *Session) dispatch(p []byte) {
	env, body, err := DecodeEnvelope(p)
	if err != nil {
		go s.fail(&Status{Code: codeUnavailable, Message: "weft shared-memory session failed: protocol error: ring runtime->app: " + err.Error()})
		return
	}
	s.pendMu.Lock()
	c := s.pending[env.Correlation]
	if c == nil {
		s.pendMu.Unlock()
		return // a call we gave up on
	}
	end := env.Flags&FlagEnd != 0
	if c.st == nil || end {
		delete(s.pending, env.Correlation)
	}
	s.pendMu.Unlock()
	if c.st != nil {
		c.st.push(env, append([]byte(nil), body...), nil)
		return
	}
	c.env = env
	c.buf = append(c.buf[:0], body...)
	c.complete()
}

func (s *Session) rxPending() bool { return atomic.LoadUint64(s.rx.tail) != s.seen.Load() }

// enterPolling: a goroutine is about to poll ring B; the runtime need not
// wake us while one does.
func (s *Session) enterPolling() {
	s.pollMu.Lock()
	s.pollers++
	if s.pollers == 1 && s.wakeUp {
		s.rx.setWake(false)
		s.wakeUp = false
	}
	s.pollMu.Unlock()
}

// leavePolling: the last poller leaving raises need-wakeup, then looks at
// the ring once more (§7.1), so a record published meanwhile is not left
// for a wake-up that never comes. When no call or stream is registered
// nothing can arrive, so the flag may stay down: a caller making call after
// call then costs the runtime no flag reads of a changed cache line. Every
// registration is followed by enterPolling/leavePolling, which raises it
// then if nobody polls.
func (s *Session) leavePolling() {
	s.pollMu.Lock()
	s.pollers--
	raise := false
	if s.pollers == 0 && !s.wakeUp {
		s.pendMu.Lock()
		idle := len(s.pending) == 0
		s.pendMu.Unlock()
		if !idle {
			s.rx.setWake(true)
			s.wakeUp, raise = true, true
		}
	}
	s.pollMu.Unlock()
	if raise {
		s.rxMu.Lock()
		s.pollLocked()
		s.rxMu.Unlock()
	}
}

// reader sleeps on the socket while nobody polls; a wake-up byte makes it
// drain the ring. It also notices the runtime going away (EOF, goodbye).
func (s *Session) reader() {
	defer s.release()
	buf := make([]byte, 512)
	for {
		n, err := s.conn.Read(buf)
		if n > 0 {
			for i := 0; i < n; i++ {
				if buf[i] == GoodbyeByte {
					s.fail(s.readGoodbye(append([]byte(nil), buf[i:n]...)))
					return
				}
			}
		}
		if err != nil {
			if s.dead.Load() {
				return
			}
			msg := "weft runtime closed the shared-memory session"
			if !errors.Is(err, io.EOF) {
				msg += ": " + err.Error()
			}
			if atomic.LoadUint32(s.state) != 0 {
				msg += " (session state: closed)"
			}
			s.fail(&Status{Code: codeUnavailable, Message: msg})
			return
		}
		s.rxMu.Lock()
		s.pollLocked()
		s.rxMu.Unlock()
		s.spinAfterWake()
	}
}

// spinAfterWake keeps polling for a while after a wake-up: streams deliver
// in bursts, and a record found while polling costs the runtime no wake-up.
//
// It does not spin while a caller polls: that caller hands the records over,
// and a second spinning thread would take the CPU the runtime needs.
func (s *Session) spinAfterWake() {
	if s.opts.Spin <= 0 || s.callersPolling() {
		return
	}
	s.enterPolling()
	s.pollMu.Lock()
	s.readerPolling = 1
	s.pollMu.Unlock()
	start := time.Now()
	for i := 1; !s.dead.Load(); i++ {
		if s.rxPending() && s.rxMu.TryLock() {
			s.pollLocked()
			s.rxMu.Unlock()
			start = time.Now()
		}
		if i&15 == 0 {
			if time.Since(start) > s.opts.Spin || s.callersPolling() {
				break
			}
			runtime.Gosched()
		}
	}
	s.pollMu.Lock()
	s.readerPolling = 0
	s.pollMu.Unlock()
	s.leavePolling()
}

// callersPolling reports whether a goroutine other than the reader polls.
func (s *Session) callersPolling() bool {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	return s.pollers-s.readerPolling > 0
}

func (s *Session) readGoodbye(b []byte) *Status {
	_ = s.conn.SetReadDeadline(time.Now().Add(time.Second))
	tmp := make([]byte, 512)
	for {
		g, ok, err := ParseGoodbye(b)
		if err != nil {
			return &Status{Code: codeUnavailable, Message: "weft runtime ended the shared-memory session with a malformed goodbye: " + err.Error()}
		}
		if ok {
			return &Status{Code: codeUnavailable, Message: fmt.Sprintf("weft runtime ended the shared-memory session (code %d): %s", g.Code, g.Message)}
		}
		n, err := s.conn.Read(tmp)
		b = append(b, tmp[:n]...)
		if err != nil {
			return &Status{Code: codeUnavailable, Message: "weft runtime ended the shared-memory session (goodbye cut short)"}
		}
	}
}

// === sending ===

// wakePeer writes one wake-up byte without blocking (EAGAIN means the
// socket already holds one).
func (s *Session) wakePeer() {
	one := [1]byte{1}
	_ = s.raw.Write(func(fd uintptr) bool {
		_, _ = syscall.Write(int(fd), one[:])
		return true
	})
}

// send writes one record: envelope e, then ctxBlock (when e has flag
// CONTEXT), then the encoded msg (or raw when msg is nil). It returns the
// ring position the record starts at.
func (s *Session) send(ctx context.Context, e Envelope, ctxBlock []byte, msg proto.Message, raw []byte) (uint64, *Status) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	b := append((*bp)[:0], make([]byte, recordHdrLen+EnvelopeLen)...)
	if e.Flags&FlagContext != 0 {
		b = AppendContextBlock(b, ctxBlock)
	}
	if m, ok := msg.(*runtimev1.GetStateRequest); ok {
		b = fastpb.AppendGetStateRequest(b, m)
	} else if msg != nil {
		var err error
		b, err = proto.MarshalOptions{}.MarshalAppend(b, msg)
		if err != nil {
			return 0, &Status{Code: codeInternal, Message: fmt.Sprintf("cannot encode the request: %v", err)}
		}
	} else {
		b = append(b, raw...)
	}
	*bp = b
	length := len(b)
	aligned := Align8(length)
	if aligned > s.tx.maxRecord() {
		return 0, &Status{Code: codeResourceExhausted, Message: fmt.Sprintf(
			"a request body of %d bytes exceeds the largest shared-memory message on this session (%d bytes, half the request ring of %d bytes); ask for a larger ring (WithShmRingSize) or use gRPC",
			length-recordHdrLen-EnvelopeLen, s.MaxBody(), s.tx.size)}
	}
	le.PutUint32(b[0:], uint32(int32(length)))
	le.PutUint32(b[4:], uint32(int32(typeMessage)))
	PutEnvelope(b[recordHdrLen:], e)
	for spins := 0; ; spins++ {
		if s.dead.Load() {
			return 0, s.deadStatus()
		}
		s.txMu.Lock()
		dst, start, err := s.tx.reserve(aligned)
		if err != nil {
			s.txMu.Unlock()
			s.fail(&Status{Code: codeUnavailable, Message: "weft shared-memory session failed: " + err.Error()})
			return 0, s.deadStatus()
		}
		if dst != nil {
			n := copy(dst, b)
			clear(dst[n:])
			wake := s.tx.publish(aligned)
			s.txMu.Unlock()
			if wake {
				s.wakePeer()
			}
			return start, nil
		}
		s.txMu.Unlock()
		// Full: the runtime may be waiting for room in ring B.
		if s.rxMu.TryLock() {
			s.pollLocked()
			s.rxMu.Unlock()
		}
		if atomic.LoadUint32(s.tx.wake) != 0 {
			s.wakePeer()
		}
		if err := ctx.Err(); err != nil {
			return 0, ctxStatus(err, "while waiting for room in the request ring")
		}
		if spins < 64 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

func ctxStatus(err error, when string) *Status {
	code := uint32(codeCancelled)
	if errors.Is(err, context.DeadlineExceeded) {
		code = codeDeadlineExceeded
	}
	return &Status{Code: code, Message: fmt.Sprintf("%v %s", err, when), Cause: err}
}

func (s *Session) register(c *call) (uint64, *Status) {
	corr := s.nextCorr.Add(1)
	s.pendMu.Lock()
	if s.dead.Load() {
		s.pendMu.Unlock()
		return 0, s.deadStatus()
	}
	s.pending[corr] = c
	s.pendMu.Unlock()
	return corr, nil
}

func (s *Session) unregister(corr uint64) (wasPending bool) {
	s.pendMu.Lock()
	_, wasPending = s.pending[corr]
	delete(s.pending, corr)
	s.pendMu.Unlock()
	return wasPending
}

func (s *Session) cancel(corr uint64) {
	if s.dead.Load() {
		return
	}
	_, _ = s.send(context.Background(), Envelope{Flags: FlagCancel, Correlation: corr}, nil, nil, nil)
}

// Reply is a unary call's answer.
type Reply struct {
	// Context: the encoded CallContext of the answer (flag CONTEXT), or nil.
	Context []byte
}

// Unary sends req with method id and decodes the answer into resp (nil for
// google.protobuf.Empty answers). ctxBlock, when not nil, is the encoded
// CallContext sent with flag CONTEXT; the caller checks the feature bit.
func (s *Session) Unary(ctx context.Context, method uint32, ctxBlock []byte, req, resp proto.Message) (*Reply, error) {
	return s.unary(ctx, method, ctxBlock, req, nil, resp, nil)
}

// Echo sends body with weft.Echo (method 0x10001) and returns what came
// back: the protocol's round trip without protobuf or a building block.
func (s *Session) Echo(ctx context.Context, body []byte) ([]byte, error) {
	var out []byte
	_, err := s.unary(ctx, MethodEcho, nil, nil, body, nil, &out)
	return out, err
}

func (s *Session) unary(ctx context.Context, method uint32, ctxBlock []byte, req proto.Message, raw []byte, resp proto.Message, rawOut *[]byte) (*Reply, error) {
	if !s.acquire() {
		st := s.deadStatus()
		st.Retryable = true
		return nil, st
	}
	defer s.release()
	c := callPool.Get().(*call)
	c.done.Store(0)
	c.parked.Store(0)
	c.err = nil
	select {
	case <-c.ch:
	default:
	}
	corr, st := s.register(c)
	if st != nil {
		callPool.Put(c)
		st.Retryable = true
		return nil, st
	}
	e := Envelope{Method: method, Correlation: corr}
	if ctxBlock != nil {
		e.Flags = FlagContext
	}
	// Poll from before the request is out: the answer can come back within
	// a microsecond, and while we poll the runtime need not wake us.
	s.enterPolling()
	start, st := s.send(ctx, e, ctxBlock, req, raw)
	if st != nil {
		s.leavePolling()
		if s.unregister(corr) {
			callPool.Put(c)
		}
		if st.SessionLost {
			st.Retryable = !s.tx.consumed(start)
		}
		return nil, st
	}
	if st := s.await(ctx, c, corr); st != nil {
		if st.SessionLost {
			st.Retryable = !s.tx.consumed(start)
		}
		return nil, st
	}
	defer callPool.Put(c)
	if c.err != nil {
		st := *c.err
		st.Retryable = !s.tx.consumed(start)
		return nil, &st
	}
	if rawOut != nil && c.env.Status == 0 && c.env.Flags&FlagContext == 0 {
		*rawOut = append([]byte(nil), c.buf...)
		return &Reply{}, nil
	}
	return decodeReply(c.env, c.buf, resp)
}

// decodeReply turns an END record into the answer or its error.
func decodeReply(env Envelope, body []byte, resp proto.Message) (*Reply, error) {
	r := &Reply{}
	if env.Flags&FlagContext != 0 {
		cb, rest, err := SplitContextBlock(body)
		if err != nil {
			return nil, &Status{Code: codeInternal, Message: "weft shared memory: bad context block in the answer: " + err.Error()}
		}
		r.Context = append([]byte(nil), cb...)
		body = rest
	}
	if env.Status != 0 {
		st := &Status{Code: env.Status, Message: string(body)}
		if r.Context != nil {
			st.Details = contextDetails(r.Context)
		}
		return r, st
	}
	if m, ok := resp.(*runtimev1.GetStateResponse); ok {
		if err := fastpb.UnmarshalGetStateResponse(body, m); err != nil {
			return nil, &Status{Code: codeInternal, Message: fmt.Sprintf("weft shared memory: cannot decode the answer: %v", err)}
		}
	} else if resp != nil {
		if err := proto.Unmarshal(body, resp); err != nil {
			return nil, &Status{Code: codeInternal, Message: fmt.Sprintf("weft shared memory: cannot decode the answer: %v", err)}
		}
	}
	return r, nil
}

// await waits for a unary call's answer with the idle strategy: spin on the
// ring (polling it ourselves), then yield, then sleep until the reader
// goroutine hands the answer over. The caller has entered polling; await
// leaves it.
func (s *Session) await(ctx context.Context, c *call, corr uint64) *Status {
	done := ctx.Done()
	var start time.Time
	for i := uint32(1); ; i++ {
		if s.rxPending() && s.rxMu.TryLock() {
			s.pollLocked()
			s.rxMu.Unlock()
		}
		if c.done.Load() != 0 {
			s.leavePolling()
			return nil
		}
		// Most answers come within a few hundred polls: look at the context
		// and the clock only now and then (reading the clock costs more
		// than a poll on these VMs).
		if i&255 != 0 {
			continue
		}
		if done != nil {
			select {
			case <-done:
				s.leavePolling()
				return s.abandon(ctx, c, corr)
			default:
			}
		}
		if i&4095 == 0 && atomic.LoadUint32(s.state) != 0 {
			s.leavePolling()
			s.fail(&Status{Code: codeUnavailable, Message: "weft runtime closed the shared-memory session"})
			return s.deadStatus()
		}
		if start.IsZero() {
			start = time.Now()
			continue
		}
		idle := time.Since(start)
		switch {
		case idle < s.opts.Spin:
			if s.users.Load() > 2 {
				runtime.Gosched()
			}
		case idle < s.opts.Spin+s.opts.Yield:
			runtime.Gosched()
			osYield()
		default:
			return s.park(ctx, c, corr)
		}
	}
}

func (s *Session) park(ctx context.Context, c *call, corr uint64) *Status {
	c.parked.Store(1)
	s.leavePolling()
	if c.done.Load() != 0 {
		return nil
	}
	select {
	case <-c.ch:
		return nil
	case <-ctx.Done():
		return s.abandon(ctx, c, corr)
	}
}

// abandon gives up a call whose context ended: CANCEL it (unless its
// answer won the race).
func (s *Session) abandon(ctx context.Context, c *call, corr uint64) *Status {
	if !s.unregister(corr) {
		// Answered (or failed) meanwhile.
		for c.done.Load() == 0 {
			runtime.Gosched()
		}
		return nil
	}
	s.cancel(corr)
	return ctxStatus(ctx.Err(), "before the runtime answered over shared memory")
}

func osYield() { _, _, _ = syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0) }

// === streams ===

// Stream is a server stream or a bidirectional call (§5).
type Stream struct {
	s      *Session
	corr   uint64
	method uint32

	mu     sync.Mutex
	items  [][]byte
	ended  bool
	endErr error // io.EOF for a clean end
	endCtx []byte
	notify chan struct{}
}

// OpenStream starts a stream with first as its opening message.
func (s *Session) OpenStream(ctx context.Context, method uint32, ctxBlock []byte, first proto.Message) (*Stream, error) {
	if !s.acquire() {
		return nil, s.deadStatus()
	}
	defer s.release()
	st := &Stream{s: s, method: method, notify: make(chan struct{}, 1)}
	c := &call{st: st}
	corr, err := s.register(c)
	if err != nil {
		return nil, err
	}
	st.corr = corr
	e := Envelope{Method: method, Correlation: corr}
	if ctxBlock != nil {
		e.Flags = FlagContext
	}
	if _, err := s.send(ctx, e, ctxBlock, first, nil); err != nil {
		s.unregister(corr)
		return nil, err
	}
	// Its records come at any time: make sure someone is woken for them.
	s.enterPolling()
	s.leavePolling()
	return st, nil
}

func (st *Stream) push(env Envelope, body []byte, failure *Status) {
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		return
	}
	switch {
	case failure != nil:
		st.ended, st.endErr = true, failure
	case env.Flags&FlagEnd != 0:
		st.ended = true
		if env.Flags&FlagContext != 0 {
			if cb, rest, err := SplitContextBlock(body); err == nil {
				st.endCtx, body = cb, rest
			}
		}
		if env.Status == 0 {
			st.endErr = io.EOF
		} else {
			e := &Status{Code: env.Status, Message: string(body)}
			if st.endCtx != nil {
				e.Details = contextDetails(st.endCtx)
			}
			st.endErr = e
		}
	default:
		st.items = append(st.items, body)
	}
	st.mu.Unlock()
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

// Recv returns the next message body of the stream; io.EOF once it ended
// normally, a *Status when it failed or the session ended.
func (st *Stream) Recv(ctx context.Context) ([]byte, error) {
	for {
		st.mu.Lock()
		if len(st.items) > 0 {
			b := st.items[0]
			st.items[0] = nil
			st.items = st.items[1:]
			st.mu.Unlock()
			return b, nil
		}
		if st.ended {
			err := st.endErr
			st.mu.Unlock()
			return nil, err
		}
		st.mu.Unlock()
		select {
		case <-st.notify:
		case <-ctx.Done():
			return nil, ctxStatus(ctx.Err(), "while waiting for the stream")
		}
	}
}

// Send writes a further message of a bidirectional call (flag MORE).
func (st *Stream) Send(ctx context.Context, msg proto.Message) error {
	if !st.s.acquire() {
		return st.s.deadStatus()
	}
	defer st.s.release()
	st.mu.Lock()
	ended := st.ended
	st.mu.Unlock()
	if ended {
		return &Status{Code: codeUnavailable, Message: "the stream has ended", SessionLost: st.s.dead.Load()}
	}
	_, err := st.s.send(ctx, Envelope{Method: st.method, Flags: FlagMore, Correlation: st.corr}, nil, msg, nil)
	if err != nil {
		return err
	}
	return nil
}

// Close cancels the stream if it is still open.
func (st *Stream) Close() {
	st.mu.Lock()
	ended := st.ended
	if !ended {
		st.ended, st.endErr = true, &Status{Code: codeCancelled, Message: "the stream was closed by the app"}
	}
	st.mu.Unlock()
	if !ended && st.s.unregister(st.corr) {
		if st.s.acquire() {
			st.s.cancel(st.corr)
			st.s.release()
		}
	}
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

// Session returns the stream's session.
func (st *Stream) Session() *Session { return st.s }
