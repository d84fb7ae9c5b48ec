package shm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// cpuTicks is this process's user+system time in clock ticks.
func cpuTicks(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc/self/stat")
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// TestIdleSessionUsesNoCPU: after its calls, a session stops spinning and
// sleeps on the socket (docs/shm-protocol.md §7.3).
func TestIdleSessionUsesNoCPU(t *testing.T) {
	w := weftest.Start(t, weftest.Options{AppID: "shm-idle"})
	s := dial(t, w)
	for i := 0; i < 1000; i++ {
		if _, err := s.Unary(context.Background(), MethodGetState, nil, &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}, &runtimev1.GetStateResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	before := cpuTicks(t)
	time.Sleep(time.Second)
	if used := cpuTicks(t) - before; used > 10 {
		t.Fatalf("an idle session used %d clock ticks in 1 s", used)
	}
}
