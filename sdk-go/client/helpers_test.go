package client_test

import (
	"context"
	"testing"
	"time"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/weftest"
)

// transports are the ways a test runs: shared memory, and gRPC over the
// runtime's Unix socket.
var transports = []client.Transport{client.TransportShm, client.TransportGRPC}

// eachTransport runs fn once per transport, each with its own runtime.
func eachTransport(t *testing.T, app string, fn func(t *testing.T, w *weftest.Weft, c *client.Client)) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			w := weftest.Start(t, weftest.Options{AppID: app})
			c := connect(t, w, tr)
			fn(t, w, c)
		})
	}
}

// connect opens a client of w on transport tr.
func connect(t *testing.T, w *weftest.Weft, tr client.Transport, more ...client.Option) *client.Client {
	t.Helper()
	opts := []client.Option{client.WithTransport(tr), client.WithSocket(w.UDS)}
	if tr == client.TransportShm {
		opts = append(opts, client.WithShmSocket(w.Shm), client.WithAppID(w.Opts.AppID))
	}
	c, err := client.New(context.Background(), append(opts, more...)...)
	if err != nil {
		t.Fatalf("connect over %s: %v\nweft:\n%s", tr, err, w.Logs())
	}
	if c.Transport() != string(tr) {
		t.Fatalf("asked for %s, got %s", tr, c.Transport())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond (at most 20 s).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
