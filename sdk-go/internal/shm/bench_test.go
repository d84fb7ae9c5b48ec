package shm

import (
	"context"
	"testing"

	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"

	"weft.dev/sdk-go/internal/weftest"
)

// BenchmarkGetState: one GetState round trip of a 64-byte value over a
// session (run with WEFT_BIN pointing at a release weft; the figures that
// count come from sdk-go/bench).
func BenchmarkGetState(b *testing.B) {
	w := weftest.Start(b, weftest.Options{AppID: "shm-bench"})
	s, err := Dial(context.Background(), Options{Socket: w.Shm, AppID: "shm-bench", Spin: 50e3, Yield: 50e3})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	val := make([]byte, 64)
	if _, err := s.Unary(ctx, MethodSaveState, nil, &runtimev1.SaveStateRequest{StoreName: "statestore", States: []*commonv1.StateItem{{Key: "k", Value: val}}}, nil); err != nil {
		b.Fatal(err)
	}
	req := &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp := &runtimev1.GetStateResponse{}
		if _, err := s.Unary(ctx, MethodGetState, nil, req, resp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEcho: a 64-byte weft.Echo round trip.
func BenchmarkEcho(b *testing.B) {
	w := weftest.Start(b, weftest.Options{AppID: "shm-echo"})
	s, err := Dial(context.Background(), Options{Socket: w.Shm, AppID: "shm-echo", Spin: 50e3, Yield: 50e3})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := make([]byte, 64)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, err := s.Echo(context.Background(), body)
		if err != nil || len(out) != 64 {
			b.Fatal(len(out), err)
		}
	}
}
