// Package dubbo lets a Dubbo app (dubbo-go, or any other) publish and
// subscribe its services through its local weft runtime instead of talking
// to the registry itself: the runtime's registry proxy (MOSN's HTTP API,
// POST /pub /unpub /sub /unsub) writes Dubbo's ZooKeeper layout on the
// app's behalf, advertising the runtime's own inbound Dubbo listener, and
// carries the app's Dubbo calls through the mesh.
//
// A provider app publishes what it serves on its Dubbo port:
//
//	r := dubbo.NewRegistryProxy("")  // the runtime on 127.0.0.1:$DAPR_HTTP_PORT
//	err := r.Publish(ctx, dubbo.ZooKeeper("127.0.0.1:2181"), dubbo.Service{
//		Interface: "com.example.UserProvider",
//		Methods:   []string{"GetUser"},
//		Port:      20000, // where the app serves it (default: the runtime's --dubbo-app-port)
//	})
//
// A consumer app subscribes, then points its Dubbo reference at the
// runtime's outbound listener (dubbo://127.0.0.1:<--dubbo-port>).
// See docs/dubbo.md in the repository.
package dubbo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

// Registry is the registry the runtime registers in on the app's behalf.
type Registry struct {
	// Type of the registry; the runtime proxies "zookeeper".
	Type string `json:"type"`
	// Addr is the ensemble, host:port[,host:port...].
	Addr string `json:"addr"`
	// Username and Password, both or neither (ZooKeeper digest).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Group is the registry's root node (Dubbo's registry group); empty
	// for Dubbo's default, "dubbo".
	Group string `json:"group,omitempty"`
}

// ZooKeeper is a ZooKeeper registry at addr.
func ZooKeeper(addr string) Registry { return Registry{Type: "zookeeper", Addr: addr} }

// Service is a Dubbo service.
type Service struct {
	Interface string   `json:"interface"`
	Methods   []string `json:"methods"`
	Group     string   `json:"group,omitempty"`
	// Version of a published service; on Subscribe, empty means any.
	Version string `json:"version,omitempty"`
	// Port is the app's Dubbo port for a published service; 0 leaves the
	// runtime's --dubbo-app-port.
	Port int `json:"port,omitempty"`
	// Params are more URL parameters for the registry node.
	Params map[string]string `json:"params,omitempty"`
}

// Error is the runtime's refusal: its err_msg names what was wrong.
type Error struct {
	// Op is the route: /pub, /unpub, /sub or /unsub.
	Op string
	// Status is the HTTP status (200 for a refusal in the body).
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("weft registry proxy %s: %s", e.Op, e.Message)
}

// RegistryProxy calls a runtime's registry proxy.
type RegistryProxy struct {
	base  string
	token string
	http  *http.Client
}

// Option configures a RegistryProxy.
type Option func(*RegistryProxy)

// WithAPIToken sends the runtime's API token (dapr-api-token). By default
// it is read from DAPR_API_TOKEN.
func WithAPIToken(token string) Option { return func(r *RegistryProxy) { r.token = token } }

// WithHTTPClient uses c for the calls (default: a client with a 30 s timeout).
func WithHTTPClient(c *http.Client) Option { return func(r *RegistryProxy) { r.http = c } }

// NewRegistryProxy addresses the runtime's HTTP port at addr ("host:port");
// "" means 127.0.0.1 and $DAPR_HTTP_PORT (else 3500, Dapr's default).
func NewRegistryProxy(addr string, opts ...Option) *RegistryProxy {
	if addr == "" {
		port := 3500
		if p, err := strconv.Atoi(os.Getenv("DAPR_HTTP_PORT")); err == nil && p > 0 {
			port = p
		}
		addr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	r := &RegistryProxy{
		base:  "http://" + addr,
		token: os.Getenv("DAPR_API_TOKEN"),
		http:  &http.Client{Timeout: 30 * time.Second},
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Publish registers the app as a provider of svc.
func (r *RegistryProxy) Publish(ctx context.Context, reg Registry, svc Service) error {
	return r.call(ctx, "/pub", reg, svc)
}

// Unpublish withdraws a service Publish registered.
func (r *RegistryProxy) Unpublish(ctx context.Context, reg Registry, svc Service) error {
	return r.call(ctx, "/unpub", reg, svc)
}

// Subscribe makes the runtime route the app's calls of svc (by interface,
// group and, when set, version) to its providers.
func (r *RegistryProxy) Subscribe(ctx context.Context, reg Registry, svc Service) error {
	return r.call(ctx, "/sub", reg, svc)
}

// Unsubscribe ends a subscription: the app's calls of svc then get Dubbo
// status 60 (service not found).
func (r *RegistryProxy) Unsubscribe(ctx context.Context, reg Registry, svc Service) error {
	return r.call(ctx, "/unsub", reg, svc)
}

func (r *RegistryProxy) call(ctx context.Context, op string, reg Registry, svc Service) error {
	body, err := json.Marshal(struct {
		Registry Registry `json:"registry"`
		Service  Service  `json:"service"`
	}{reg, svc})
	if err != nil {
		return fmt.Errorf("weft registry proxy %s: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+op, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("weft registry proxy %s: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if r.token != "" {
		req.Header.Set("dapr-api-token", r.token)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("weft registry proxy %s: %w", op, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("weft registry proxy %s: reading the answer: %w", op, err)
	}
	var answer struct {
		ErrNo  *int   `json:"err_no"`
		ErrMsg string `json:"err_msg"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil || answer.ErrNo == nil {
		return &Error{Op: op, Status: resp.StatusCode, Message: fmt.Sprintf("unexpected answer (HTTP %d): %.200s", resp.StatusCode, raw)}
	}
	if *answer.ErrNo != 0 || resp.StatusCode != http.StatusOK {
		return &Error{Op: op, Status: resp.StatusCode, Message: answer.ErrMsg}
	}
	return nil
}
