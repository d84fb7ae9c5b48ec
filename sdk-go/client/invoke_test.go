package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/weftest"
	"weft.dev/sdk-go/service/common"
	daprgrpc "weft.dev/sdk-go/service/grpc"
	"weft.dev/sdk-go/service/stream"
)

// mesh starts two runtimes that can call each other: the same development
// CA, a private registry directory, distinct data dirs.
func mesh(t *testing.T, callee weftest.Options) (caller, called *weftest.Weft) {
	t.Helper()
	shared, err := os.MkdirTemp("", "weft-mesh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	env := []string{"WEFT_LOCAL_REGISTRY_DIR=" + shared + "/registry"}
	ca := []string{"--dev-ca-dir", shared + "/ca"}
	callee.Env = append(callee.Env, env...)
	callee.Args = append(callee.Args, ca...)
	called = weftest.Start(t, callee)
	caller = weftest.Start(t, weftest.Options{AppID: "go-caller", Env: env, Args: ca})
	return caller, called
}

// place is the called app's handler: it echoes, fails, or sleeps.
func place(ctx context.Context, in *common.InvocationEvent) (*common.Content, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	switch string(in.Data) {
	case "missing":
		return nil, status.Error(codes.NotFound, "no order missing")
	case "details":
		st, _ := status.New(codes.FailedPrecondition, "out of stock").WithDetails(&errdetails.ErrorInfo{Reason: "OUT_OF_STOCK", Domain: "checkout"})
		return nil, st.Err()
	case "slow":
		select {
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
		}
		return &common.Content{Data: []byte("late")}, nil
	case "deadline":
		dl, ok := ctx.Deadline()
		return &common.Content{Data: []byte(strconv.FormatBool(ok && time.Until(dl) < 10*time.Second))}, nil
	}
	out := fmt.Sprintf("placed %s by %s via %s %s custom=%s", in.Data, first(md["dapr-caller-app-id"]), in.Verb, in.QueryString, first(md["x-custom"]))
	return &common.Content{Data: []byte(out), ContentType: "text/plain"}, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func TestInvokeBetweenApps(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			caller, called := mesh(t, weftest.Options{AppID: "go-callee"})
			cc := connect(t, called, tr)
			svc := stream.NewService(cc)
			if err := svc.AddInvocationHandler("place", place); err != nil {
				t.Fatal(err)
			}
			if err := svc.AddInvocationHandler("place", place); err == nil {
				t.Fatal("a second handler for one method was accepted")
			}
			errc := make(chan error, 1)
			go func() { errc <- svc.Start() }()
			select {
			case <-svc.Ready():
			case err := <-errc:
				t.Fatalf("service: %v", err)
			}
			defer svc.Stop()
			if err := svc.AddInvocationHandler("late", place); err == nil {
				t.Fatal("a handler added after Start was accepted")
			}
			c := connect(t, caller, tr)
			checkInvocations(t, c, tr)
		})
	}
}

// TestInvokeAppWithPort: the called app serves AppCallback on a port.
func TestInvokeAppWithPort(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := daprgrpc.NewServiceWithListener(lis)
	if err := srv.AddServiceInvocationHandler("place", place); err != nil {
		t.Fatal(err)
	}
	events := make(chan *common.TopicEvent, 16)
	err = srv.AddTopicEventHandler(&common.Subscription{PubsubName: pubsub, Topic: "port-topic", Route: "/events"}, func(ctx context.Context, e *common.TopicEvent) (bool, error) {
		events <- e
		if e.Attempt == 0 && string(e.RawData) == "again" {
			return true, errors.New("not yet")
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	defer srv.Stop()
	port := lis.Addr().(*net.TCPAddr).Port
	caller, called := mesh(t, weftest.Options{AppID: "go-callee", Args: []string{"--app-port", strconv.Itoa(port)}})
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			checkInvocations(t, connect(t, caller, tr), tr)
		})
	}
	// Topic events reach the app's OnTopicEvent; an error with retry=true
	// is a RETRY (delivered again, attempt 1).
	pc := connect(t, called, client.TransportShm)
	ctx := ctxT(t)
	if err := pc.PublishEvent(ctx, pubsub, "port-topic", "again", client.PublishEventWithRawPayload()); err != nil {
		t.Fatal(err)
	}
	var got []int
	for len(got) < 2 {
		select {
		case e := <-events:
			if string(e.RawData) != "again" || e.Topic != "port-topic" {
				t.Fatalf("event %+v", e)
			}
			got = append(got, e.Attempt)
		case <-time.After(20 * time.Second):
			t.Fatalf("topic events over the app port: got attempts %v", got)
		}
	}
	if got[0] != 0 || got[1] != 1 {
		t.Fatalf("attempts %v", got)
	}
}

func checkInvocations(t *testing.T, c *client.Client, tr client.Transport) {
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-custom", "yes")
	var out []byte
	var err error
	// The called app's stream may take a moment to be registered.
	eventually(t, "the first invocation", func() bool {
		out, err = c.InvokeMethodWithContent(ctx, "go-callee", "place?fast=1", "post", &client.DataContent{Data: []byte("o-1"), ContentType: "text/plain"})
		return err == nil
	})
	if tr == client.TransportShm {
		t.Logf("the runtime serves shared-memory call contexts: %v", client.ShmContextServed(c))
	}
	custom := "yes"
	if tr == client.TransportShm && !client.ShmContextServed(c) {
		// Without the CONTEXT feature shared memory carries no metadata.
		custom = ""
	}
	want := "placed o-1 by go-caller via POST fast=1 custom=" + custom
	if string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	if _, err := c.InvokeMethod(ctx, "go-callee", "place", "get"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.InvokeMethodWithCustomContent(ctx, "go-callee", "place", "put", "application/json", map[string]int{"n": 1}); err != nil || !strings.Contains(string(out), `{"n":1}`) {
		t.Fatalf("custom content: %q %v", out, err)
	}

	// The called app's error reaches the caller with its code.
	_, err = c.InvokeMethodWithContent(ctx, "go-callee", "place", "post", &client.DataContent{Data: []byte("missing")})
	if !errors.Is(err, client.ErrNotFound) || !strings.Contains(err.Error(), "no order missing") {
		t.Fatalf("app error: %v", err)
	}
	// Its status details too (gRPC always; shared memory with CONTEXT).
	_, err = c.InvokeMethodWithContent(ctx, "go-callee", "place", "post", &client.DataContent{Data: []byte("details")})
	var ce *client.Error
	if !errors.Is(err, client.ErrFailedPrecondition) || !errors.As(err, &ce) {
		t.Fatalf("app error with details: %v", err)
	}
	if tr == client.TransportGRPC || client.ShmContextServed(c) {
		found := false
		for _, d := range ce.Details() {
			if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Reason == "OUT_OF_STOCK" {
				found = true
			}
		}
		if !found {
			t.Fatalf("the ErrorInfo did not reach the caller: %v", ce.Details())
		}
	}
	_, err = c.InvokeMethod(ctx, "go-callee", "no-such-method", "post")
	if !errors.Is(err, client.ErrUnimplemented) || !strings.Contains(err.Error(), "no-such-method") {
		t.Fatalf("unknown method: %v", err)
	}
	_, err = c.InvokeMethod(ctx, "no-such-app", "place", "post")
	if !errors.Is(err, client.ErrNotFound) || !strings.Contains(err.Error(), "no-such-app") {
		t.Fatalf("unknown app: %v", err)
	}

	// The caller's deadline: the call ends when it passes.
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	_, err = c.InvokeMethodWithContent(dctx, "go-callee", "place", "post", &client.DataContent{Data: []byte("slow")})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow call: %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("a 300 ms deadline returned after %v", el)
	}
	// The deadline reaches the called app (gRPC always; shared memory when
	// the runtime serves CONTEXT).
	dctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	out, err = c.InvokeMethodWithContent(dctx, "go-callee", "place", "post", &client.DataContent{Data: []byte("deadline")})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if tr == client.TransportGRPC || client.ShmContextServed(c) {
		if string(out) != "true" {
			t.Fatalf("the called app saw no deadline of under 10 s")
		}
	}

	// Bad arguments.
	var ae *client.ArgumentError
	if _, err := c.InvokeMethod(ctx, "", "place", "post"); !errors.As(err, &ae) || ae.Arg != "appID" {
		t.Fatalf("no app id: %v", err)
	}
	if _, err := c.InvokeMethod(ctx, "go-callee", "", "post"); !errors.As(err, &ae) || ae.Arg != "methodName" {
		t.Fatalf("no method: %v", err)
	}
	if _, err := c.InvokeMethod(ctx, "go-callee", "place", "FETCH"); !errors.As(err, &ae) || ae.Arg != "verb" {
		t.Fatalf("bad verb: %v", err)
	}
	if _, err := c.InvokeMethodWithContent(ctx, "go-callee", "place", "post", nil); !errors.As(err, &ae) || ae.Arg != "content" {
		t.Fatalf("nil content: %v", err)
	}
}
