package client

import (
	"context"
	"errors"
	"fmt"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"weft.dev/sdk-go/internal/shm"
)

// Sentinel errors, for errors.Is. Every error a call returns for a runtime
// status is an *Error, whose Is matches the sentinel of its code; argument
// errors are *ArgumentError and match ErrInvalidArgument.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrETagMismatch       = errors.New("etag mismatch") // ABORTED: a first-write or etag check failed
	ErrUnavailable        = errors.New("unavailable")   // the runtime (or what it calls) cannot be reached
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrUnimplemented      = errors.New("unimplemented")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInternal           = errors.New("internal error")
	// ErrClosed: the client or the subscription was closed by the app.
	ErrClosed = errors.New("closed")
)

var sentinels = map[error]codes.Code{
	ErrInvalidArgument:    codes.InvalidArgument,
	ErrNotFound:           codes.NotFound,
	ErrETagMismatch:       codes.Aborted,
	ErrUnavailable:        codes.Unavailable,
	ErrPermissionDenied:   codes.PermissionDenied,
	ErrUnauthenticated:    codes.Unauthenticated,
	ErrUnimplemented:      codes.Unimplemented,
	ErrResourceExhausted:  codes.ResourceExhausted,
	ErrFailedPrecondition: codes.FailedPrecondition,
	ErrAlreadyExists:      codes.AlreadyExists,
	ErrInternal:           codes.Internal,
}

// Error is a call that the runtime (or the transport) answered with a gRPC
// status. It works with errors.Is (the sentinels above, and
// context.DeadlineExceeded / context.Canceled for those codes), errors.As,
// and status.FromError (it has GRPCStatus).
type Error struct {
	// Op is the client method, e.g. "GetState".
	Op string
	// Transport is "shm" or "grpc".
	Transport string
	Code      codes.Code
	Message   string
	// SessionLost: the transport's connection to the runtime ended under
	// the call (its outcome is unknown unless the runtime never read it).
	SessionLost bool
	status      *status.Status
	cause       error
}

func (e *Error) Error() string {
	return fmt.Sprintf("weft %s (%s): %s: %s", e.Op, e.Transport, codeName(e.Code), e.Message)
}

// Is matches the sentinel of e's code, and context.DeadlineExceeded or
// context.Canceled for DEADLINE_EXCEEDED and CANCELLED.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	}
	c, ok := sentinels[target]
	return ok && c == e.Code
}

// Unwrap returns the context error of a call cut short by its context.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus returns the status, details included.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil {
		return e.status
	}
	return status.New(e.Code, e.Message)
}

// Details returns the status details the runtime or the called app sent
// (e.g. *errdetails.ErrorInfo), over both transports.
func (e *Error) Details() []any { return e.GRPCStatus().Details() }

func codeName(c codes.Code) string {
	switch c {
	case codes.Canceled:
		return "CANCELLED"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.Aborted:
		return "ABORTED"
	case codes.Unimplemented:
		return "UNIMPLEMENTED"
	case codes.Internal:
		return "INTERNAL"
	case codes.Unavailable:
		return "UNAVAILABLE"
	case codes.Unauthenticated:
		return "UNAUTHENTICATED"
	}
	return c.String()
}

// ArgumentError is a bad argument refused before anything was sent.
type ArgumentError struct {
	Op      string // client method
	Arg     string // the argument (or field) at fault
	Problem string
}

func (e *ArgumentError) Error() string {
	return fmt.Sprintf("weft %s: argument %s: %s", e.Op, e.Arg, e.Problem)
}

// Is matches ErrInvalidArgument.
func (e *ArgumentError) Is(target error) bool { return target == ErrInvalidArgument }

// GRPCStatus reports INVALID_ARGUMENT.
func (e *ArgumentError) GRPCStatus() *status.Status {
	return status.New(codes.InvalidArgument, e.Error())
}

func argErr(op, arg, problem string) error { return &ArgumentError{Op: op, Arg: arg, Problem: problem} }

func required(op string, args ...string) error {
	for i := 0; i+1 < len(args); i += 2 {
		if args[i+1] == "" {
			return argErr(op, args[i], "is required and was empty")
		}
	}
	return nil
}

// wrapErr turns a transport error into an *Error naming op.
func wrapErr(op, transport string, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	var ae *ArgumentError
	if errors.As(err, &ae) {
		return err
	}
	var st *shm.Status
	if errors.As(err, &st) {
		e := &Error{Op: op, Transport: transport, Code: codes.Code(st.Code), Message: st.Message, SessionLost: st.SessionLost, cause: st.Cause}
		if len(st.Details) > 0 {
			p := &spb.Status{}
			if proto.Unmarshal(st.Details, p) == nil {
				if p.Message == "" {
					p.Message = st.Message
				}
				p.Code = int32(st.Code)
				e.status = status.FromProto(p)
			}
		}
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Op: op, Transport: transport, Code: codes.DeadlineExceeded, Message: err.Error(), cause: err}
	}
	if errors.Is(err, context.Canceled) {
		return &Error{Op: op, Transport: transport, Code: codes.Canceled, Message: err.Error(), cause: err}
	}
	if s, ok := status.FromError(err); ok {
		e := &Error{Op: op, Transport: transport, Code: s.Code(), Message: s.Message(), status: s}
		switch s.Code() {
		case codes.DeadlineExceeded:
			e.cause = context.DeadlineExceeded
		case codes.Canceled:
			e.cause = context.Canceled
		}
		return e
	}
	return &Error{Op: op, Transport: transport, Code: codes.Unknown, Message: err.Error(), cause: err}
}
