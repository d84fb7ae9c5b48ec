package shm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"

	"weft.dev/sdk-go/internal/weftest"
)

func dial(t *testing.T, w *weftest.Weft) *Session {
	t.Helper()
	s, err := Dial(context.Background(), Options{Socket: w.Shm, AppID: w.Opts.AppID, Spin: 50 * time.Microsecond, Yield: 50 * time.Microsecond})
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, w.Logs())
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSessionAgainstRuntime: state calls over a real runtime's shared
// memory from many goroutines at once, an error answer, a call whose
// context ends, and a session whose runtime dies.
func TestSessionAgainstRuntime(t *testing.T) {
	w := weftest.Start(t, weftest.Options{AppID: "shm-session"})
	s := dial(t, w)
	ctx := context.Background()
	_, err := s.Unary(ctx, MethodSaveState, nil, &runtimev1.SaveStateRequest{StoreName: "statestore", States: []*commonv1.StateItem{{Key: "k", Value: []byte("v")}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				resp := &runtimev1.GetStateResponse{}
				if _, err := s.Unary(ctx, MethodGetState, nil, &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}, resp); err != nil {
					errs <- err
					return
				}
				if string(resp.Data) != "v" {
					errs <- fmt.Errorf("got %q", resp.Data)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	_, err = s.Unary(ctx, MethodGetState, nil, &runtimev1.GetStateRequest{StoreName: "nope", Key: "k"}, &runtimev1.GetStateResponse{})
	var st *Status
	if !errors.As(err, &st) || st.Code != 3 {
		t.Fatalf("missing store: %v", err)
	}
	// A context that is already over: the call is cancelled.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.Unary(cctx, MethodGetState, nil, &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}, &runtimev1.GetStateResponse{})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	// The session still works.
	if _, err := s.Unary(ctx, MethodGetState, nil, &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}, &runtimev1.GetStateResponse{}); err != nil {
		t.Fatal(err)
	}
	w.Kill()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not notice the runtime's death")
	}
	_, err = s.Unary(ctx, MethodGetState, nil, &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}, &runtimev1.GetStateResponse{})
	if !errors.As(err, &st) || st.Code != 14 || !st.SessionLost {
		t.Fatalf("after the runtime died: %#v", err)
	}
}
