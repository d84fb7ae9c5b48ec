// Package client is Weft's Go client: one type, *Client, for every building
// block the runtime serves (state, configuration, pub/sub with ordered
// subscriptions, service invocation, metadata, shutdown), over shared
// memory when the runtime offers it and gRPC (Unix socket or TCP)
// otherwise. Method names and shapes follow the official Dapr Go SDK
// (github.com/dapr/go-sdk/client), so moving an app is mostly an import
// change; sdk-go/README.md lists the differences.
//
// A Client is safe for concurrent use by any number of goroutines; an app
// shares one.
package client

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"

	"weft.dev/sdk-go/internal/shm"
)

// Transport selects how the client reaches the runtime.
type Transport string

const (
	// TransportAuto: shared memory when the runtime offers it, else gRPC
	// (with one log line saying why). The default.
	TransportAuto Transport = "auto"
	// TransportShm: shared memory only; New fails when it cannot connect.
	TransportShm Transport = "shm"
	// TransportGRPC: gRPC only.
	TransportGRPC Transport = "grpc"
)

// Environment variables the client reads (options win over them).
const (
	EnvTransport    = "WEFT_TRANSPORT"     // shm | grpc | auto
	EnvShmSocket    = "WEFT_SHM_SOCKET"    // the runtime's --shm-socket
	EnvAppID        = "WEFT_APP_ID"        // the runtime's --app-id (also APP_ID)
	EnvDataDir      = "WEFT_DATA_DIR"      // the runtime's --data-dir (finds shm.sock)
	EnvUDS          = "WEFT_UDS"           // the runtime's --uds: gRPC over this Unix socket
	EnvGRPCEndpoint = "DAPR_GRPC_ENDPOINT" // host:port or unix:///path
	EnvGRPCPort     = "DAPR_GRPC_PORT"     // default 50001
	EnvAPIToken     = "DAPR_API_TOKEN"     // also WEFT_API_TOKEN
)

var (
	loggerMu sync.Mutex
	logger   = log.New(os.Stderr, "weft: ", log.LstdFlags)
)

// SetLogger replaces the logger of the client's few log lines (transport
// choice, subscription and stream reconnects). nil silences them.
func SetLogger(l *log.Logger) {
	loggerMu.Lock()
	defer loggerMu.Unlock()
	if l == nil {
		l = log.New(discard{}, "", 0)
	}
	logger = l
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func logf(format string, args ...any) {
	loggerMu.Lock()
	l := logger
	loggerMu.Unlock()
	l.Printf(format, args...)
}

// config is what the options set.
type config struct {
	transport    Transport
	transportSet bool
	address      string // gRPC target: host:port or unix:///path
	shmSocket    string
	appID        string
	token        string
	tokenSet     bool
	spin, yield  time.Duration
	ringSize     uint32
	timeout      time.Duration
}

// Option configures New.
type Option func(*config)

// WithTransport picks the transport (default: $WEFT_TRANSPORT, else auto).
func WithTransport(t Transport) Option {
	return func(c *config) { c.transport, c.transportSet = t, true }
}

// WithAddress sets the gRPC target: "host:port", or "unix:///path" for the
// runtime's --uds socket.
func WithAddress(addr string) Option { return func(c *config) { c.address = addr } }

// WithSocket sets gRPC over the runtime's Unix socket (its --uds path).
func WithSocket(path string) Option { return func(c *config) { c.address = "unix://" + path } }

// WithShmSocket sets the runtime's shared-memory socket (its --shm-socket).
func WithShmSocket(path string) Option { return func(c *config) { c.shmSocket = path } }

// WithAppID sets the app id (the runtime's --app-id), needed for shared
// memory; by default $WEFT_APP_ID or $APP_ID, else asked of the runtime.
func WithAppID(id string) Option { return func(c *config) { c.appID = id } }

// WithAPIToken sets the runtime's API token (default $DAPR_API_TOKEN or
// $WEFT_API_TOKEN).
func WithAPIToken(token string) Option {
	return func(c *config) { c.token, c.tokenSet = token, true }
}

// WithShmIdle sets how long a waiting call spins on the shared-memory ring,
// then yields, before it sleeps (default 50 µs each, as the runtime's
// --shm-spin-micros/--shm-yield-micros). Spinning costs CPU and buys the
// sub-microsecond round trip.
func WithShmIdle(spin, yield time.Duration) Option {
	return func(c *config) { c.spin, c.yield = spin, yield }
}

// WithShmRingSize asks for rings of this size (a power of two from 4 KiB to
// 256 MiB; 0: the runtime's default, 1 MiB). A message may use half a ring.
func WithShmRingSize(size uint32) Option { return func(c *config) { c.ringSize = size } }

// WithConnectTimeout bounds how long New waits for the runtime (default 5 s,
// or $DAPR_CLIENT_TIMEOUT_SECONDS).
func WithConnectTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// Client talks to one Weft runtime. Safe for concurrent use.
type Client struct {
	t      transport
	token  atomic.Pointer[string]
	closed atomic.Bool
	appID  string
}

// NewClient connects with the defaults: $WEFT_TRANSPORT (auto), shared
// memory found through $WEFT_SHM_SOCKET or the app id, gRPC on
// $DAPR_GRPC_ENDPOINT, $WEFT_UDS or 127.0.0.1:$DAPR_GRPC_PORT (50001).
// Unlike Dapr's NewClient it returns a new client on every call.
func NewClient() (*Client, error) { return New(context.Background()) }

// NewClientWithPort connects to gRPC on 127.0.0.1:port (and shared memory
// when the environment names it).
func NewClientWithPort(port string) (*Client, error) {
	if port == "" {
		return nil, argErr("NewClientWithPort", "port", "is required and was empty")
	}
	return New(context.Background(), WithAddress(net.JoinHostPort("127.0.0.1", port)))
}

// NewClientWithAddress connects to gRPC on address (host:port or
// unix:///path).
func NewClientWithAddress(address string) (*Client, error) {
	if address == "" {
		return nil, argErr("NewClientWithAddress", "address", "is required and was empty")
	}
	return New(context.Background(), WithAddress(address))
}

// NewClientWithSocket connects to gRPC over the runtime's Unix socket.
func NewClientWithSocket(socket string) (*Client, error) {
	if socket == "" {
		return nil, argErr("NewClientWithSocket", "socket", "is required and was empty")
	}
	return New(context.Background(), WithSocket(socket))
}

// New connects to the runtime with opts (see the Option functions and the
// Env* variables).
func New(ctx context.Context, opts ...Option) (*Client, error) {
	cfg, err := configure(opts)
	if err != nil {
		return nil, err
	}
	c := &Client{appID: cfg.appID}
	tok := cfg.token
	c.token.Store(&tok)

	if cfg.transport == TransportGRPC {
		t, err := dialGRPC(ctx, cfg, &c.token)
		if err != nil {
			return nil, err
		}
		c.t = t
		return c, nil
	}

	// Shared memory (shm or auto).
	why := ""
	if cfg.shmSocket == "" && cfg.appID == "" && cfg.transport == TransportAuto {
		// Ask the runtime its app id over gRPC, to find its socket.
		if g, err := dialGRPC(ctx, cfg, &c.token); err == nil {
			md := &runtimev1.GetMetadataResponse{}
			if err := g.unary(ctx, mGetMetadata, &runtimev1.GetMetadataRequest{}, md); err == nil {
				cfg.appID = md.GetId()
			}
			_ = g.close()
		}
	}
	socket := cfg.shmSocket
	if socket == "" {
		socket = defaultShmSocket(cfg.appID)
	}
	if socket == "" {
		why = "the app id is unknown (set " + EnvAppID + " or WithAppID, or " + EnvShmSocket + ")"
	} else if cfg.appID == "" {
		why = "the app id is unknown (set " + EnvAppID + " or WithAppID)"
	}
	if why == "" {
		st := &shmTransport{
			opts: shm.Options{
				Socket: socket, AppID: cfg.appID,
				RequestRing: cfg.ringSize, ResponseRing: cfg.ringSize,
				Spin: cfg.spin, Yield: cfg.yield,
			},
			token: &c.token,
		}
		dctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		_, err := st.session(dctx)
		cancel()
		if err == nil {
			c.t = st
			return c, nil
		}
		why = err.Error()
	}
	if cfg.transport == TransportShm {
		return nil, &Error{Op: "New", Transport: "shm", Code: 14, Message: "shared memory requested (" + EnvTransport + "=shm or WithTransport) but not usable: " + why}
	}
	g, err := dialGRPC(ctx, cfg, &c.token)
	if err != nil {
		return nil, err
	}
	logf("using gRPC on %s, not shared memory: %s", g.where, why)
	c.t = g
	return c, nil
}

func configure(opts []Option) (config, error) {
	cfg := config{spin: 50 * time.Microsecond, yield: 50 * time.Microsecond, timeout: 5 * time.Second}
	if v := os.Getenv("DAPR_CLIENT_TIMEOUT_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return cfg, argErr("New", "DAPR_CLIENT_TIMEOUT_SECONDS", fmt.Sprintf("%q is not a positive number of seconds", v))
		}
		cfg.timeout = time.Duration(n) * time.Second
	}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.transportSet {
		cfg.transport = Transport(strings.ToLower(strings.TrimSpace(os.Getenv(EnvTransport))))
		if cfg.transport == "" {
			cfg.transport = TransportAuto
		}
	}
	switch cfg.transport {
	case TransportAuto, TransportShm, TransportGRPC:
	default:
		arg := EnvTransport
		if cfg.transportSet {
			arg = "WithTransport"
		}
		return cfg, argErr("New", arg, fmt.Sprintf("%q is not one of shm, grpc, auto", cfg.transport))
	}
	if cfg.ringSize != 0 && (cfg.ringSize < shm.MinRing || cfg.ringSize > shm.MaxRing || cfg.ringSize&(cfg.ringSize-1) != 0) {
		return cfg, argErr("New", "WithShmRingSize", fmt.Sprintf("%d is not a power of two from %d to %d", cfg.ringSize, shm.MinRing, shm.MaxRing))
	}
	if cfg.spin < 0 || cfg.yield < 0 {
		return cfg, argErr("New", "WithShmIdle", "durations must not be negative")
	}
	if cfg.timeout <= 0 {
		return cfg, argErr("New", "WithConnectTimeout", "must be positive")
	}
	if cfg.shmSocket == "" {
		cfg.shmSocket = os.Getenv(EnvShmSocket)
	}
	if cfg.appID == "" {
		cfg.appID = os.Getenv(EnvAppID)
	}
	if cfg.appID == "" {
		cfg.appID = os.Getenv("APP_ID")
	}
	if !cfg.tokenSet {
		cfg.token = os.Getenv(EnvAPIToken)
		if cfg.token == "" {
			cfg.token = os.Getenv("WEFT_API_TOKEN")
		}
	}
	if cfg.address == "" {
		switch {
		case os.Getenv(EnvGRPCEndpoint) != "":
			cfg.address = os.Getenv(EnvGRPCEndpoint)
		case os.Getenv(EnvUDS) != "":
			cfg.address = "unix://" + os.Getenv(EnvUDS)
		default:
			port := os.Getenv(EnvGRPCPort)
			if port == "" {
				port = "50001"
			}
			cfg.address = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return cfg, nil
}

// defaultShmSocket is where a runtime with default flags listens:
// <data-dir>/shm.sock, the data dir being $WEFT_DATA_DIR, else
// $XDG_DATA_HOME/weft/<app-id>, else ~/.local/share/weft/<app-id>.
func defaultShmSocket(appID string) string {
	if d := os.Getenv(EnvDataDir); d != "" {
		return filepath.Join(d, "shm.sock")
	}
	if appID == "" {
		return ""
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "weft", appID, "shm.sock")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".local", "share", "weft", appID, "shm.sock")
}

func dialGRPC(ctx context.Context, cfg config, token *atomic.Pointer[string]) (*grpcTransport, error) {
	target := cfg.address
	switch {
	case strings.HasPrefix(target, "unix://"), strings.HasPrefix(target, "unix:"):
	case strings.Contains(target, "://"):
		// dns:///, passthrough:/// …: as given.
	default:
		if _, _, err := net.SplitHostPort(target); err != nil {
			return nil, argErr("New", "address", fmt.Sprintf("%q is neither host:port nor unix:///path: %v", target, err))
		}
		target = "passthrough:///" + target
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			// Reconnect quickly after a runtime restart.
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
	)
	if err != nil {
		return nil, &Error{Op: "New", Transport: "grpc", Code: 3, Message: fmt.Sprintf("gRPC target %q: %v", cfg.address, err)}
	}
	// Wait until the runtime answers, as Dapr's client does.
	wctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			break
		}
		if !conn.WaitForStateChange(wctx, s) {
			_ = conn.Close()
			return nil, &Error{Op: "New", Transport: "grpc", Code: 14, Message: fmt.Sprintf("the runtime's gRPC endpoint %s did not answer within %v (last state %s)", cfg.address, cfg.timeout, s)}
		}
	}
	return &grpcTransport{conn: conn, token: token, where: cfg.address}, nil
}

// Transport reports the transport in use: "shm" or "grpc".
func (c *Client) Transport() string { return c.t.name() }

// WithAuthToken sets the API token for the calls (and shared-memory
// sessions) from now on.
func (c *Client) WithAuthToken(token string) { c.token.Store(&token) }

// Close releases the connection to the runtime.
func (c *Client) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	return c.t.close()
}

func (c *Client) call(ctx context.Context, op string, m method, req, resp proto.Message) error {
	if ctx == nil {
		return argErr(op, "ctx", "is nil")
	}
	if c.closed.Load() {
		return &Error{Op: op, Transport: c.t.name(), Code: 1, Message: "the client is closed", cause: ErrClosed}
	}
	if err := ctx.Err(); err != nil {
		return wrapErr(op, c.t.name(), err)
	}
	return wrapErr(op, c.t.name(), c.t.unary(ctx, m, req, resp))
}

// Shutdown asks the runtime to shut down.
func (c *Client) Shutdown(ctx context.Context) error {
	err := c.call(ctx, "Shutdown", mShutdown, &runtimev1.ShutdownRequest{}, nil)
	var e *Error
	if errors.As(err, &e) && e.SessionLost && e.Code == codes.Unavailable {
		// The runtime read the request and ended the session while
		// shutting down, before its answer was written: the outcome asked
		// for.
		return nil
	}
	return err
}

// Logf writes one line to the client's logger (SetLogger); the service
// packages log through it too.
func Logf(format string, args ...any) { logf(format, args...) }
