package shm

import (
	"encoding/base64"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	weftv1 "weft.dev/sdk-go/proto/weft/runtime/v1"
)

// hopKeys are metadata keys a hop sets itself; §5.1 says the runtime ignores
// them, so the client does not send them.
func hopKey(k string) bool {
	switch k {
	case "content-type", "te", "user-agent", "dapr-api-token", "connection", "host":
		return true
	}
	return strings.HasPrefix(k, "grpc-") || strings.HasPrefix(k, ":")
}

// EncodeCallContext encodes the weft.runtime.v1.CallContext of a request:
// what is left of the deadline (0: none) and the call's metadata (keys are
// lower-cased; hop keys dropped). It returns nil when there is nothing to
// say, so the caller can leave flag CONTEXT off.
func EncodeCallContext(timeout time.Duration, md map[string][]string) []byte {
	cc := &weftv1.CallContext{}
	if timeout > 0 {
		us := uint64(timeout / time.Microsecond)
		if us == 0 {
			us = 1
		}
		cc.TimeoutMicros = us
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lk := strings.ToLower(k)
		if hopKey(lk) {
			continue
		}
		vals := md[k]
		if strings.HasSuffix(lk, "-bin") {
			// Binary values travel base64-encoded, as on the gRPC wire.
			enc := make([]string, len(vals))
			for i, v := range vals {
				enc[i] = base64.RawStdEncoding.EncodeToString([]byte(v))
			}
			vals = enc
		}
		cc.Metadata = append(cc.Metadata, &weftv1.Metadata{Key: lk, Values: vals})
	}
	if cc.TimeoutMicros == 0 && len(cc.Metadata) == 0 {
		return nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cc)
	if err != nil {
		return nil
	}
	return b
}

// DecodeCallContext decodes a context block's CallContext.
func DecodeCallContext(b []byte) (*weftv1.CallContext, error) {
	cc := &weftv1.CallContext{}
	if err := proto.Unmarshal(b, cc); err != nil {
		return nil, err
	}
	return cc, nil
}

// ContextMetadata returns the metadata of an encoded CallContext.
func ContextMetadata(b []byte) map[string][]string {
	cc, err := DecodeCallContext(b)
	if err != nil || len(cc.GetMetadata()) == 0 {
		return nil
	}
	md := make(map[string][]string, len(cc.GetMetadata()))
	for _, m := range cc.GetMetadata() {
		k := strings.ToLower(m.GetKey())
		for _, v := range m.GetValues() {
			if strings.HasSuffix(k, "-bin") {
				if b, err := decodeBin(v); err == nil {
					v = string(b)
				}
			}
			md[k] = append(md[k], v)
		}
	}
	return md
}

func decodeBin(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

func contextDetails(b []byte) []byte {
	cc, err := DecodeCallContext(b)
	if err != nil || len(cc.GetStatusDetails()) == 0 {
		return nil
	}
	return cc.GetStatusDetails()
}
