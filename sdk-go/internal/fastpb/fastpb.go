// Package fastpb encodes and decodes the messages of the hottest calls
// (GetState) by hand with protowire: the reflection-driven codec costs
// more than the shared-memory round trip itself (≈0.65 µs against ≈0.6 µs
// on the 2-vCPU test machines). The output is valid protobuf, and the
// tests check it against proto.Marshal / proto.Unmarshal.
package fastpb

import (
	"errors"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
)

// AppendGetStateRequest appends the encoding of m to b.
func AppendGetStateRequest(b []byte, m *runtimev1.GetStateRequest) []byte {
	if m.StoreName != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, m.StoreName)
	}
	if m.Key != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, m.Key)
	}
	if m.Consistency != 0 {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.Consistency))
	}
	for k, v := range m.Metadata {
		n := protowire.SizeTag(1) + protowire.SizeBytes(len(k)) + protowire.SizeTag(2) + protowire.SizeBytes(len(v))
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(n))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, v)
	}
	return b
}

var (
	errBad  = errors.New("fastpb: malformed GetStateResponse")
	errUTF8 = errors.New("fastpb: GetStateResponse holds a string that is not valid UTF-8")
)

// UnmarshalGetStateResponse decodes b into m, replacing what it held.
func UnmarshalGetStateResponse(b []byte, m *runtimev1.GetStateResponse) error {
	m.Data, m.Etag, m.Metadata = nil, "", nil
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBad
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errBad
			}
			m.Data = append(m.Data[:0:0], v...)
			if m.Data == nil {
				m.Data = []byte{}
			}
			b = b[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errBad
			}
			if !utf8.Valid(v) {
				return errUTF8
			}
			m.Etag = string(v)
			b = b[n:]
		case num == 3 && typ == protowire.BytesType:
			e, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errBad
			}
			b = b[n:]
			var k, v string
			for len(e) > 0 {
				en, et, n := protowire.ConsumeTag(e)
				if n < 0 {
					return errBad
				}
				e = e[n:]
				if (en == 1 || en == 2) && et == protowire.BytesType {
					s, n := protowire.ConsumeBytes(e)
					if n < 0 {
						return errBad
					}
					if !utf8.Valid(s) {
						return errUTF8
					}
					if en == 1 {
						k = string(s)
					} else {
						v = string(s)
					}
					e = e[n:]
					continue
				}
				n = protowire.ConsumeFieldValue(en, et, e)
				if n < 0 {
					return errBad
				}
				e = e[n:]
			}
			if m.Metadata == nil {
				m.Metadata = map[string]string{}
			}
			m.Metadata[k] = v
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errBad
			}
			b = b[n:]
		}
	}
	return nil
}
