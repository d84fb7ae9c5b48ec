// Package shm implements the client side of Weft's shared-memory protocol
// (docs/shm-protocol.md, version 1) with the standard library only:
// syscall.Mmap for the segment, sync/atomic for the ring counters, a Unix
// socket for the handshake and wake-ups. No cgo.
//
// This file holds the byte layouts: handshake frames, segment header,
// records, envelopes and the call context block (§2–5).
package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol constants (docs/shm-protocol.md).
const (
	Version = 1

	HeaderLen      = 512
	RingControlLen = 512
	EnvelopeLen    = 24
	recordHdrLen   = 8

	typeMessage = 1
	typePadding = -1

	// Ring control block offsets (§3.2).
	tailOff = 0
	headOff = 128
	wakeOff = 256

	// Header offsets (§3.1).
	sessionStateOff = 128
	featuresOff     = 132

	// MinRing and MaxRing bound ring sizes (powers of two).
	MinRing = 4096
	MaxRing = 1 << 28

	// GoodbyeByte starts the runtime's goodbye frame on the socket.
	GoodbyeByte = 0xFF
)

// Envelope flags (§5).
const (
	FlagEnd     = 0x1
	FlagCancel  = 0x2
	FlagNoReply = 0x4
	FlagMore    = 0x8
	FlagContext = 0x10

	knownFlags = FlagEnd | FlagCancel | FlagNoReply | FlagMore | FlagContext
)

// FeatureContext is the segment header's feature bit for flag CONTEXT (§3.1).
const FeatureContext = 0x1

// Method ids (§6).
const (
	MethodInvokeService               = 1
	MethodGetState                    = 2
	MethodGetBulkState                = 3
	MethodSaveState                   = 4
	MethodQueryStateAlpha1            = 5
	MethodDeleteState                 = 6
	MethodDeleteBulkState             = 7
	MethodExecuteStateTransaction     = 8
	MethodPublishEvent                = 9
	MethodBulkPublishEventAlpha1      = 10
	MethodBulkPublishEvent            = 11
	MethodSubscribeTopicEventsAlpha1  = 12
	MethodInvokeBinding               = 13
	MethodGetSecret                   = 14
	MethodGetBulkSecret               = 15
	MethodGetConfigurationAlpha1      = 16
	MethodGetConfiguration            = 17
	MethodSubscribeConfigurationAlpha = 18
	MethodSubscribeConfiguration      = 19
	MethodUnsubscribeConfigAlpha1     = 20
	MethodUnsubscribeConfiguration    = 21
	MethodTryLockAlpha1               = 22
	MethodUnlockAlpha1                = 23
	MethodGetMetadata                 = 24
	MethodSetMetadata                 = 25
	MethodShutdown                    = 26
	MethodEcho                        = 0x10001
	MethodServeInvocations            = 0x10002
)

var le = binary.LittleEndian

var (
	helloMagic   = []byte("WEFTHELO")
	welcomeMagic = []byte("WEFTWLCM")
	mappedMagic  = []byte("WEFTMAPD")
	headerMagic  = []byte("WEFT-SHM")
)

// Align8 rounds n up to a multiple of 8.
func Align8(n int) int { return (n + 7) &^ 7 }

// Envelope is the 24-byte head of a message payload (§5).
type Envelope struct {
	Method      uint32 `json:"method"`
	Flags       uint32 `json:"flags"`
	Correlation uint64 `json:"correlation"`
	Status      uint32 `json:"status"`
}

// PutEnvelope writes e into b[0:24].
func PutEnvelope(b []byte, e Envelope) {
	le.PutUint32(b[0:], e.Method)
	le.PutUint32(b[4:], e.Flags)
	le.PutUint64(b[8:], e.Correlation)
	le.PutUint32(b[16:], e.Status)
	le.PutUint32(b[20:], 0)
}

// DecodeEnvelope splits a message payload into its envelope and body,
// checking what a response may carry.
func DecodeEnvelope(p []byte) (Envelope, []byte, error) {
	if len(p) < EnvelopeLen {
		return Envelope{}, nil, fmt.Errorf("message payload of %d bytes is shorter than the %d-byte envelope", len(p), EnvelopeLen)
	}
	e := Envelope{
		Method:      le.Uint32(p[0:]),
		Flags:       le.Uint32(p[4:]),
		Correlation: le.Uint64(p[8:]),
		Status:      le.Uint32(p[16:]),
	}
	if r := le.Uint32(p[20:]); r != 0 {
		return e, nil, fmt.Errorf("envelope reserved field is %d, must be 0", r)
	}
	if e.Flags&^knownFlags != 0 {
		return e, nil, fmt.Errorf("envelope has unknown flags %#x", e.Flags&^knownFlags)
	}
	return e, p[EnvelopeLen:], nil
}

// EncodeRecord returns a whole message record (record header, envelope,
// body) zero-padded to 8 bytes, as it sits in a ring.
func EncodeRecord(e Envelope, body []byte) []byte {
	length := recordHdrLen + EnvelopeLen + len(body)
	b := make([]byte, Align8(length))
	le.PutUint32(b[0:], uint32(int32(length)))
	le.PutUint32(b[4:], uint32(int32(typeMessage)))
	PutEnvelope(b[8:], e)
	copy(b[32:], body)
	return b
}

// EncodePadding returns a padding record of exactly length bytes.
func EncodePadding(length int) []byte {
	b := make([]byte, length)
	le.PutUint32(b[0:], uint32(int32(length)))
	pad := int32(typePadding)
	le.PutUint32(b[4:], uint32(pad))
	return b
}

// Hello is the app's first frame (§2.1).
type Hello struct {
	Version      uint32 `json:"version"`
	RequestRing  uint32 `json:"a2r_capacity"`
	ResponseRing uint32 `json:"r2a_capacity"`
	AppID        string `json:"app_id"`
	Token        string `json:"token"`
}

// Encode returns the hello frame.
func (h Hello) Encode() ([]byte, error) {
	if len(h.AppID) > 255 {
		return nil, fmt.Errorf("app id is %d bytes long, at most 255 are allowed", len(h.AppID))
	}
	if len(h.Token) > 4096 {
		return nil, fmt.Errorf("API token is %d bytes long, at most 4096 are allowed", len(h.Token))
	}
	b := append([]byte{}, helloMagic...)
	b = le.AppendUint32(b, h.Version)
	b = le.AppendUint32(b, h.RequestRing)
	b = le.AppendUint32(b, h.ResponseRing)
	b = le.AppendUint16(b, uint16(len(h.AppID)))
	b = le.AppendUint16(b, uint16(len(h.Token)))
	b = append(b, h.AppID...)
	return append(b, h.Token...), nil
}

// Welcome is the runtime's answer to the hello (§2.2).
type Welcome struct {
	Version uint32 `json:"version"`
	Status  uint32 `json:"status"`
	Text    string `json:"text"`
}

// WelcomeHeadLen is the fixed part of a welcome frame.
const WelcomeHeadLen = 20

// MaxWelcomeText bounds the welcome's text.
const MaxWelcomeText = 65536

// Encode returns the welcome frame.
func (w Welcome) Encode() []byte {
	b := append([]byte{}, welcomeMagic...)
	b = le.AppendUint32(b, w.Version)
	b = le.AppendUint32(b, w.Status)
	b = le.AppendUint32(b, uint32(len(w.Text)))
	return append(b, w.Text...)
}

// ParseWelcomeHead checks the fixed part of a welcome and returns its
// version, status and text length.
func ParseWelcomeHead(b []byte) (version, status, textLen uint32, err error) {
	if len(b) < WelcomeHeadLen {
		return 0, 0, 0, fmt.Errorf("welcome of %d bytes is shorter than %d", len(b), WelcomeHeadLen)
	}
	if string(b[:8]) != string(welcomeMagic) {
		return 0, 0, 0, fmt.Errorf("welcome starts with %q, not %q", b[:8], welcomeMagic)
	}
	version, status, textLen = le.Uint32(b[8:]), le.Uint32(b[12:]), le.Uint32(b[16:])
	if textLen > MaxWelcomeText {
		return 0, 0, 0, fmt.Errorf("welcome text length %d exceeds %d", textLen, MaxWelcomeText)
	}
	return version, status, textLen, nil
}

// MappedFrame is the app's acknowledgement that it mapped the segment.
func MappedFrame() []byte { return append([]byte{}, mappedMagic...) }

// Goodbye is the runtime's last frame on the socket (§2.4).
type Goodbye struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

// Encode returns the goodbye frame.
func (g Goodbye) Encode() []byte {
	b := le.AppendUint32([]byte{GoodbyeByte}, g.Code)
	b = le.AppendUint32(b, uint32(len(g.Message)))
	return append(b, g.Message...)
}

// ParseGoodbye decodes a goodbye frame (starting with 0xFF). It returns
// ok=false when b does not hold the whole frame yet.
func ParseGoodbye(b []byte) (g Goodbye, ok bool, err error) {
	if len(b) == 0 || b[0] != GoodbyeByte {
		return g, false, errors.New("goodbye frame does not start with 0xFF")
	}
	if len(b) < 9 {
		return g, false, nil
	}
	n := le.Uint32(b[5:])
	if n > MaxWelcomeText {
		return g, false, fmt.Errorf("goodbye message length %d exceeds %d", n, MaxWelcomeText)
	}
	if uint32(len(b)-9) < n {
		return g, false, nil
	}
	return Goodbye{Code: le.Uint32(b[1:]), Message: string(b[9 : 9+n])}, true, nil
}

// Header is the segment header (§3.1).
type Header struct {
	RuntimePid  uint64 `json:"runtime_pid"`
	AppPid      uint64 `json:"app_pid"`
	SessionID   uint64 `json:"session_id"`
	A2rOffset   uint64 `json:"a2r_offset"`
	A2rCapacity uint64 `json:"a2r_capacity"`
	R2aOffset   uint64 `json:"r2a_offset"`
	R2aCapacity uint64 `json:"r2a_capacity"`
	TotalLen    uint64 `json:"total_len"`
	Features    uint32 `json:"features"`
}

// EncodeHeader returns the first 64 bytes of a header (the rest, up to the
// session state and feature words, is zero).
func EncodeHeader(h Header) []byte {
	b := append([]byte{}, headerMagic...)
	b = le.AppendUint32(b, Version)
	b = le.AppendUint32(b, HeaderLen)
	b = le.AppendUint32(b, uint32(h.RuntimePid))
	b = le.AppendUint32(b, uint32(h.AppPid))
	b = le.AppendUint64(b, h.SessionID)
	b = le.AppendUint64(b, h.A2rOffset)
	b = le.AppendUint64(b, h.A2rCapacity)
	b = le.AppendUint64(b, h.R2aOffset)
	return le.AppendUint64(b, h.R2aCapacity)
}

func validRing(x uint64) bool { return x >= MinRing && x <= MaxRing && x&(x-1) == 0 }

// ParseHeader checks a segment header (at least 64 bytes; the feature word
// is read when b holds it) against the file length.
func ParseHeader(b []byte, fileLen uint64) (Header, error) {
	if len(b) < 64 {
		return Header{}, fmt.Errorf("segment header of %d bytes is shorter than 64", len(b))
	}
	if string(b[:8]) != string(headerMagic) {
		return Header{}, fmt.Errorf("segment magic is %q, not %q", b[:8], headerMagic)
	}
	if v := le.Uint32(b[8:]); v != Version {
		return Header{}, fmt.Errorf("segment version is %d, this client speaks %d", v, Version)
	}
	if n := le.Uint32(b[12:]); n != HeaderLen {
		return Header{}, fmt.Errorf("segment header length is %d, not %d", n, HeaderLen)
	}
	h := Header{
		RuntimePid:  uint64(le.Uint32(b[16:])),
		AppPid:      uint64(le.Uint32(b[20:])),
		SessionID:   le.Uint64(b[24:]),
		A2rOffset:   le.Uint64(b[32:]),
		A2rCapacity: le.Uint64(b[40:]),
		R2aOffset:   le.Uint64(b[48:]),
		R2aCapacity: le.Uint64(b[56:]),
		TotalLen:    fileLen,
	}
	if len(b) >= featuresOff+4 {
		h.Features = le.Uint32(b[featuresOff:])
	}
	switch {
	case !validRing(h.A2rCapacity):
		return h, fmt.Errorf("ring A size %d is not a power of two from %d to %d", h.A2rCapacity, MinRing, MaxRing)
	case !validRing(h.R2aCapacity):
		return h, fmt.Errorf("ring B size %d is not a power of two from %d to %d", h.R2aCapacity, MinRing, MaxRing)
	case h.A2rOffset != HeaderLen:
		return h, fmt.Errorf("ring A offset is %d, not %d", h.A2rOffset, HeaderLen)
	case h.R2aOffset != HeaderLen+RingControlLen+h.A2rCapacity:
		return h, fmt.Errorf("ring B offset is %d, not %d", h.R2aOffset, HeaderLen+RingControlLen+h.A2rCapacity)
	case fileLen != h.R2aOffset+RingControlLen+h.R2aCapacity:
		return h, fmt.Errorf("segment file is %d bytes, the header describes %d", fileLen, h.R2aOffset+RingControlLen+h.R2aCapacity)
	}
	return h, nil
}

// === call context (§5.1) ===

// AppendContextBlock appends the context block (u32 length, then the
// encoded weft.runtime.v1.CallContext) to b.
func AppendContextBlock(b []byte, encodedContext []byte) []byte {
	b = le.AppendUint32(b, uint32(len(encodedContext)))
	return append(b, encodedContext...)
}

// SplitContextBlock splits the body of a record with flag CONTEXT into the
// encoded CallContext and the rest of the body.
func SplitContextBlock(body []byte) (ctx, rest []byte, err error) {
	if len(body) < 4 {
		return nil, nil, fmt.Errorf("body of %d bytes is too short for a context block", len(body))
	}
	n := le.Uint32(body)
	if uint64(n) > uint64(len(body)-4) {
		return nil, nil, fmt.Errorf("context length %d exceeds the %d bytes of the body after it", n, len(body)-4)
	}
	return body[4 : 4+n], body[4+n:], nil
}
