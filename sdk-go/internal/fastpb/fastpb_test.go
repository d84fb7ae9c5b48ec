package fastpb

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
)

func TestGetStateRequestMatchesProto(t *testing.T) {
	cases := []*runtimev1.GetStateRequest{
		{},
		{StoreName: "statestore", Key: "order-1"},
		{StoreName: "s", Key: "k", Consistency: commonv1.StateOptions_CONSISTENCY_STRONG},
		{StoreName: "s", Key: "ключ", Metadata: map[string]string{"a": "1", "": "", "partitionKey": "x"}},
	}
	for i, m := range cases {
		back := &runtimev1.GetStateRequest{}
		if err := proto.Unmarshal(AppendGetStateRequest(nil, m), back); err != nil || !proto.Equal(back, m) {
			t.Errorf("case %d: %v %v", i, back, err)
		}
	}
}

func TestGetStateResponseMatchesProto(t *testing.T) {
	cases := []*runtimev1.GetStateResponse{
		{},
		{Data: []byte("hi"), Etag: "1"},
		{Data: make([]byte, 4096), Etag: "e", Metadata: map[string]string{"ttlExpireTime": "2026-01-01T00:00:00Z", "": "v"}},
		{Data: []byte{}},
	}
	for i, m := range cases {
		b, _ := proto.Marshal(m)
		// Unknown fields are skipped, as proto does.
		b = append(b, 0xA8, 0x1F, 0x05)
		got, want := &runtimev1.GetStateResponse{}, &runtimev1.GetStateResponse{}
		if err := proto.Unmarshal(b, want); err != nil {
			t.Fatal(err)
		}
		if err := UnmarshalGetStateResponse(b, got); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if fmt.Sprint(got.Data, got.Etag, got.Metadata) != fmt.Sprint(want.Data, want.Etag, want.Metadata) {
			t.Errorf("case %d: got %v want %v", i, got, want)
		}
	}
	for _, bad := range [][]byte{{0x0a, 0x05, 1}, {0x12, 0x02, 0xff, 0xfe}, {0x1a, 0x03, 0x0a, 0x01, 0xff}, {0xff}} {
		if err := UnmarshalGetStateResponse(bad, &runtimev1.GetStateResponse{}); err == nil {
			t.Errorf("%x: accepted", bad)
		}
		if err := proto.Unmarshal(bad, &runtimev1.GetStateResponse{}); err == nil {
			t.Errorf("%x: proto accepts it, the fast path should too", bad)
		}
	}
}

func BenchmarkFast(b *testing.B) {
	req := &runtimev1.GetStateRequest{StoreName: "statestore", Key: "k"}
	respB, _ := proto.Marshal(&runtimev1.GetStateResponse{Data: make([]byte, 64), Etag: "596645ce0d784e149084f544c276edfa"})
	buf := make([]byte, 0, 256)
	for i := 0; i < b.N; i++ {
		buf = AppendGetStateRequest(buf[:0], req)
		r := &runtimev1.GetStateResponse{}
		_ = UnmarshalGetStateResponse(respB, r)
	}
}
