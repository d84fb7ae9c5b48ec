package client

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"weft.dev/sdk-go/internal/shm"
)

// method names one RPC on both transports.
type method struct {
	name string // for errors: the client method's RPC
	shm  uint32
	grpc string
	// streams
	serverStreams, clientStreams bool
}

const daprSvc = "/dapr.proto.runtime.v1.Dapr/"

var (
	mInvokeService           = method{name: "InvokeService", shm: shm.MethodInvokeService, grpc: daprSvc + "InvokeService"}
	mGetState                = method{name: "GetState", shm: shm.MethodGetState, grpc: daprSvc + "GetState"}
	mGetBulkState            = method{name: "GetBulkState", shm: shm.MethodGetBulkState, grpc: daprSvc + "GetBulkState"}
	mSaveState               = method{name: "SaveState", shm: shm.MethodSaveState, grpc: daprSvc + "SaveState"}
	mDeleteState             = method{name: "DeleteState", shm: shm.MethodDeleteState, grpc: daprSvc + "DeleteState"}
	mDeleteBulkState         = method{name: "DeleteBulkState", shm: shm.MethodDeleteBulkState, grpc: daprSvc + "DeleteBulkState"}
	mExecuteStateTransaction = method{name: "ExecuteStateTransaction", shm: shm.MethodExecuteStateTransaction, grpc: daprSvc + "ExecuteStateTransaction"}
	mPublishEvent            = method{name: "PublishEvent", shm: shm.MethodPublishEvent, grpc: daprSvc + "PublishEvent"}
	mBulkPublishEvent        = method{name: "BulkPublishEvent", shm: shm.MethodBulkPublishEvent, grpc: daprSvc + "BulkPublishEvent"}
	mSubscribeTopicEvents    = method{name: "SubscribeTopicEventsAlpha1", shm: shm.MethodSubscribeTopicEventsAlpha1, grpc: daprSvc + "SubscribeTopicEventsAlpha1", serverStreams: true, clientStreams: true}
	mGetConfiguration        = method{name: "GetConfiguration", shm: shm.MethodGetConfiguration, grpc: daprSvc + "GetConfiguration"}
	mSubscribeConfiguration  = method{name: "SubscribeConfiguration", shm: shm.MethodSubscribeConfiguration, grpc: daprSvc + "SubscribeConfiguration", serverStreams: true}
	mUnsubscribeConfig       = method{name: "UnsubscribeConfiguration", shm: shm.MethodUnsubscribeConfiguration, grpc: daprSvc + "UnsubscribeConfiguration"}
	mGetMetadata             = method{name: "GetMetadata", shm: shm.MethodGetMetadata, grpc: daprSvc + "GetMetadata"}
	mSetMetadata             = method{name: "SetMetadata", shm: shm.MethodSetMetadata, grpc: daprSvc + "SetMetadata"}
	mShutdown                = method{name: "Shutdown", shm: shm.MethodShutdown, grpc: daprSvc + "Shutdown"}
	mServeInvocations        = method{name: "ServeInvocations", shm: shm.MethodServeInvocations, grpc: "/weft.runtime.v1.AppChannel/ServeInvocations", serverStreams: true, clientStreams: true}
)

// transport carries calls to the runtime.
type transport interface {
	// unary sends req; resp is nil for google.protobuf.Empty answers.
	unary(ctx context.Context, m method, req, resp proto.Message) error
	// stream opens a server stream or bidirectional call with first.
	stream(ctx context.Context, m method, first proto.Message) (rawStream, error)
	name() string
	close() error
}

// rawStream is one open stream.
type rawStream interface {
	recv(msg proto.Message) error // io.EOF: ended normally
	send(msg proto.Message) error
	close()
	// lost reports whether err means the connection to the runtime ended
	// (rather than the call failing).
}

// === gRPC ===

type grpcTransport struct {
	conn  *grpc.ClientConn
	token *atomic.Pointer[string]
	where string
}

func (t *grpcTransport) name() string { return "grpc" }

func (t *grpcTransport) close() error { return t.conn.Close() }

func (t *grpcTransport) withToken(ctx context.Context) context.Context {
	if tok := t.token.Load(); tok != nil && *tok != "" {
		return metadata.AppendToOutgoingContext(ctx, "dapr-api-token", *tok)
	}
	return ctx
}

func (t *grpcTransport) unary(ctx context.Context, m method, req, resp proto.Message) error {
	if resp == nil {
		resp = &emptypb.Empty{}
	}
	return t.conn.Invoke(t.withToken(ctx), m.grpc, req, resp)
}

type grpcStream struct {
	cs     grpc.ClientStream
	cancel context.CancelFunc
	sendMu sync.Mutex
}

func (t *grpcTransport) stream(ctx context.Context, m method, first proto.Message) (rawStream, error) {
	sctx, cancel := context.WithCancel(t.withToken(ctx))
	desc := &grpc.StreamDesc{StreamName: m.name, ServerStreams: m.serverStreams, ClientStreams: m.clientStreams}
	cs, err := t.conn.NewStream(sctx, desc, m.grpc)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := cs.SendMsg(first); err != nil {
		cancel()
		if errors.Is(err, io.EOF) {
			// The server ended the stream: RecvMsg has its status.
			err = cs.RecvMsg(&emptypb.Empty{})
			if err == nil || errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "the stream ended before it opened")
			}
		}
		return nil, err
	}
	if !m.clientStreams {
		_ = cs.CloseSend()
	}
	return &grpcStream{cs: cs, cancel: cancel}, nil
}

func (s *grpcStream) recv(msg proto.Message) error { return s.cs.RecvMsg(msg) }

func (s *grpcStream) send(msg proto.Message) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.cs.SendMsg(msg)
}

func (s *grpcStream) close() { s.cancel() }

// === shared memory ===

type shmTransport struct {
	opts    shm.Options
	token   *atomic.Pointer[string]
	mu      sync.Mutex
	cur     atomic.Pointer[shm.Session]
	closed  atomic.Bool
	useCtx  bool // send deadlines and metadata when the runtime serves CONTEXT
	lastErr error
}

func (t *shmTransport) name() string { return "shm" }

func (t *shmTransport) close() error {
	t.closed.Store(true)
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.cur.Load(); s != nil {
		_ = s.Close()
	}
	return nil
}

// session returns the open session, connecting again when the last one
// ended (the runtime restarted).
func (t *shmTransport) session(ctx context.Context) (*shm.Session, error) {
	if s := t.cur.Load(); s != nil && s.Err() == nil {
		return s, nil
	}
	if t.closed.Load() {
		return nil, &shm.Status{Code: uint32(codes.Canceled), Message: "the client is closed", Cause: ErrClosed}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.cur.Load(); s != nil && s.Err() == nil {
		return s, nil
	}
	o := t.opts
	if tok := t.token.Load(); tok != nil {
		o.Token = *tok
	}
	// Fail fast while the runtime is down: a call does not wait for it.
	o.ConnectTimeout = 2 * time.Second
	s, err := shm.Dial(ctx, o)
	if err != nil {
		t.lastErr = err
		return nil, err
	}
	if old := t.cur.Swap(s); old != nil {
		_ = old.Close()
	}
	return s, nil
}

// callContext encodes the call context of ctx (deadline, outgoing
// metadata) when the session serves flag CONTEXT and there is one.
func callContext(ctx context.Context, s *shm.Session) []byte {
	if !s.HasFeature(shm.FeatureContext) {
		return nil
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			timeout = time.Microsecond
		}
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	if timeout == 0 && len(md) == 0 {
		return nil
	}
	return shm.EncodeCallContext(timeout, md)
}

func (t *shmTransport) unary(ctx context.Context, m method, req, resp proto.Message) error {
	for attempt := 0; ; attempt++ {
		s, err := t.session(ctx)
		if err != nil {
			return err
		}
		_, err = s.Unary(ctx, m.shm, callContext(ctx, s), req, resp)
		var st *shm.Status
		if attempt == 0 && errors.As(err, &st) && st.SessionLost && st.Retryable && !t.closed.Load() {
			// The runtime never read the request: safe to send it again on
			// a new session.
			continue
		}
		return err
	}
}

type shmStream struct {
	st  *shm.Stream
	ctx context.Context
}

func (t *shmTransport) stream(ctx context.Context, m method, first proto.Message) (rawStream, error) {
	s, err := t.session(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.OpenStream(ctx, m.shm, callContext(ctx, s), first)
	if err != nil {
		return nil, err
	}
	return &shmStream{st: st, ctx: ctx}, nil
}

func (s *shmStream) recv(msg proto.Message) error {
	b, err := s.st.Recv(s.ctx)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		return &shm.Status{Code: uint32(codes.Internal), Message: "cannot decode a stream message: " + err.Error()}
	}
	return nil
}

func (s *shmStream) send(msg proto.Message) error { return s.st.Send(s.ctx, msg) }

func (s *shmStream) close() { s.st.Close() }

// retryableStreamErr reports whether a stream error means the connection
// to the runtime went away (so re-opening the stream may work).
func retryableStreamErr(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, io.EOF) {
		return true
	}
	var st *shm.Status
	if errors.As(err, &st) {
		return st.SessionLost || st.Code == uint32(codes.Unavailable)
	}
	if s, ok := status.FromError(err); ok {
		return s.Code() == codes.Unavailable
	}
	return false
}
