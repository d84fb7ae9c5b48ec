// Package handlers holds what both app-side services share: a registry of
// handlers and the conversion of invocations and their answers.
package handlers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	"weft.dev/sdk-go/service/common"
)

// ErrStarted is returned when a handler is added after Start.
var ErrStarted = errors.New("handlers must be added before Start")

// TopicKey names a subscription.
type TopicKey struct{ Pubsub, Topic string }

// Topic is a registered topic handler.
type Topic struct {
	Sub *common.Subscription
	Fn  common.TopicEventHandler
}

// Registry holds the handlers of a service.
type Registry struct {
	mu       sync.RWMutex
	started  bool
	invokers map[string]common.ServiceInvocationHandler
	topics   map[TopicKey]*Topic
	order    []TopicKey
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{invokers: map[string]common.ServiceInvocationHandler{}, topics: map[TopicKey]*Topic{}}
}

// AddInvocation registers fn for method name.
func (r *Registry) AddInvocation(op, name string, fn common.ServiceInvocationHandler) error {
	if name == "" {
		return fmt.Errorf("%s: argument name: is required and was empty", op)
	}
	if fn == nil {
		return fmt.Errorf("%s: argument fn: is nil (method %q)", op, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("%s: method %q: %w", op, name, ErrStarted)
	}
	if _, dup := r.invokers[name]; dup {
		return fmt.Errorf("%s: argument name: method %q already has a handler", op, name)
	}
	r.invokers[name] = fn
	return nil
}

// AddTopic registers fn for a subscription.
func (r *Registry) AddTopic(op string, sub *common.Subscription, fn common.TopicEventHandler) error {
	if sub == nil {
		return fmt.Errorf("%s: argument sub: is nil", op)
	}
	if sub.PubsubName == "" {
		return fmt.Errorf("%s: argument sub.PubsubName: is required and was empty", op)
	}
	if sub.Topic == "" {
		return fmt.Errorf("%s: argument sub.Topic: is required and was empty", op)
	}
	if fn == nil {
		return fmt.Errorf("%s: argument fn: is nil (topic %s/%s)", op, sub.PubsubName, sub.Topic)
	}
	k := TopicKey{sub.PubsubName, sub.Topic}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("%s: topic %s/%s: %w", op, sub.PubsubName, sub.Topic, ErrStarted)
	}
	if _, dup := r.topics[k]; dup {
		return fmt.Errorf("%s: argument sub: topic %s/%s already has a handler", op, sub.PubsubName, sub.Topic)
	}
	cp := *sub
	r.topics[k] = &Topic{Sub: &cp, Fn: fn}
	r.order = append(r.order, k)
	return nil
}

// Start freezes the registry.
func (r *Registry) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return errors.New("the service was already started")
	}
	r.started = true
	return nil
}

// Invoker returns the handler of method.
func (r *Registry) Invoker(method string) common.ServiceInvocationHandler {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.invokers[method]
}

// HasInvokers reports whether any method has a handler.
func (r *Registry) HasInvokers() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.invokers) > 0
}

// Topics returns the topic handlers in the order they were added.
func (r *Registry) Topics() []*Topic {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Topic, 0, len(r.order))
	for _, k := range r.order {
		out = append(out, r.topics[k])
	}
	return out
}

// Topic returns the handler of a topic.
func (r *Registry) Topic(pubsub, topic string) *Topic {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.topics[TopicKey{pubsub, topic}]
}

// Event converts an invocation request.
func Event(in *commonv1.InvokeRequest) *common.InvocationEvent {
	ev := &common.InvocationEvent{Method: in.GetMethod(), ContentType: in.GetContentType()}
	if d := in.GetData(); d != nil {
		ev.Data, ev.DataTypeURL = d.GetValue(), d.GetTypeUrl()
	}
	if h := in.GetHttpExtension(); h != nil {
		ev.Verb, ev.QueryString = h.GetVerb().String(), h.GetQuerystring()
	}
	return ev
}

// Response converts a handler's answer.
func Response(out *common.Content) *commonv1.InvokeResponse {
	if out == nil {
		return &commonv1.InvokeResponse{}
	}
	return &commonv1.InvokeResponse{ContentType: out.ContentType, Data: &anypb.Any{TypeUrl: out.DataTypeURL, Value: out.Data}}
}

// Invoke runs the handler of in.Method; a missing one is UNIMPLEMENTED.
func (r *Registry) Invoke(ctx context.Context, in *commonv1.InvokeRequest) (*commonv1.InvokeResponse, error) {
	fn := r.Invoker(in.GetMethod())
	if fn == nil {
		return nil, status.Errorf(codes.Unimplemented, "this app has no handler for method %q", in.GetMethod())
	}
	out, err := safeInvoke(ctx, fn, Event(in))
	if err != nil {
		return nil, err
	}
	return Response(out), nil
}

func safeInvoke(ctx context.Context, fn common.ServiceInvocationHandler, ev *common.InvocationEvent) (out *common.Content, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = status.Errorf(codes.Internal, "the handler of method %q panicked: %v", ev.Method, p)
		}
	}()
	return fn(ctx, ev)
}

// StatusOf returns the code, message and encoded details of a handler
// error (UNKNOWN for an error without a gRPC status).
func StatusOf(err error) (codes.Code, string, []byte) {
	s, ok := status.FromError(err)
	if !ok {
		return codes.Unknown, err.Error(), nil
	}
	var details []byte
	if len(s.Proto().GetDetails()) > 0 {
		details, _ = proto.Marshal(s.Proto())
	}
	return s.Code(), s.Message(), details
}

// Verdict maps a TopicEventHandler's result to a status.
func Verdict(retry bool, err error) common.SubscriptionResponseStatus {
	switch {
	case err == nil:
		return common.SubscriptionResponseStatusSuccess
	case retry:
		return common.SubscriptionResponseStatusRetry
	default:
		return common.SubscriptionResponseStatusDrop
	}
}

// SafeTopic runs a topic handler; a panic is a RETRY.
func SafeTopic(ctx context.Context, fn common.TopicEventHandler, e *common.TopicEvent) (retry bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			retry, err = true, fmt.Errorf("the handler of %s/%s panicked: %v", e.PubsubName, e.Topic, p)
		}
	}()
	return fn(ctx, e)
}
