// Package stream is the app side for apps without a port: invocations
// arrive over a weft.runtime.v1.AppChannel/ServeInvocations stream and
// topic events over streaming subscriptions, both opened by the client —
// over its shared-memory session or its gRPC connection. Nothing listens.
//
//	c, _ := client.NewClient()
//	s := stream.NewService(c)
//	s.AddServiceInvocationHandler("place", place)
//	s.AddTopicEventHandler(&common.Subscription{PubsubName: "pubsub", Topic: "orders"}, onOrder)
//	log.Fatal(s.Start())
//
// When the runtime restarts, the streams open again by themselves.
package stream

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/handlers"
	weftv1 "weft.dev/sdk-go/proto/weft/runtime/v1"
	"weft.dev/sdk-go/service/common"
)

// Service receives invocations and topic events through a client.
type Service struct {
	c   *client.Client
	reg *handlers.Registry

	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	closers  []func() error
	inflight sync.WaitGroup
	stopped  chan struct{}
	stopOnce sync.Once
	fatal    chan error
	ready    chan struct{}
}

var _ common.Service = (*Service)(nil)

// NewService returns a service using c's transport.
func NewService(c *client.Client) *Service {
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{c: c, reg: handlers.NewRegistry(), ctx: ctx, cancel: cancel,
		stopped: make(chan struct{}), fatal: make(chan error, 1), ready: make(chan struct{})}
}

// AddServiceInvocationHandler registers fn for method name.
func (s *Service) AddServiceInvocationHandler(name string, fn common.ServiceInvocationHandler) error {
	return s.reg.AddInvocation("AddServiceInvocationHandler", name, fn)
}

// AddInvocationHandler is AddServiceInvocationHandler.
func (s *Service) AddInvocationHandler(name string, fn common.ServiceInvocationHandler) error {
	return s.reg.AddInvocation("AddInvocationHandler", name, fn)
}

// AddTopicEventHandler subscribes fn to a topic when the service starts.
// Events of one partition reach fn one after the other, in order.
func (s *Service) AddTopicEventHandler(sub *common.Subscription, fn common.TopicEventHandler) error {
	return s.reg.AddTopic("AddTopicEventHandler", sub, fn)
}

// AddTopicHandler is AddTopicEventHandler for a pub/sub component and topic.
func (s *Service) AddTopicHandler(pubsubName, topic string, fn common.TopicEventHandler) error {
	return s.reg.AddTopic("AddTopicHandler", &common.Subscription{PubsubName: pubsubName, Topic: topic}, fn)
}

// Ready is closed once every stream is open for the first time.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Start opens the streams and serves until Stop. It fails at once when a
// subscription or the invocation stream is refused (bad topic, a runtime
// with an app port, …).
func (s *Service) Start() error {
	if err := s.reg.Start(); err != nil {
		return err
	}
	for _, t := range s.reg.Topics() {
		t := t
		opts := client.SubscriptionOptions{PubsubName: t.Sub.PubsubName, Topic: t.Sub.Topic, Metadata: t.Sub.Metadata}
		if t.Sub.DeadLetterTopic != "" {
			d := t.Sub.DeadLetterTopic
			opts.DeadLetterTopic = &d
		}
		closeFn, err := s.c.SubscribeWithHandler(s.ctx, opts, func(e *common.TopicEvent) common.SubscriptionResponseStatus {
			return handlers.Verdict(handlers.SafeTopic(s.ctx, t.Fn, e))
		})
		if err != nil {
			s.Stop()
			return err
		}
		s.mu.Lock()
		s.closers = append(s.closers, closeFn)
		s.mu.Unlock()
	}
	if s.reg.HasInvokers() {
		st, err := s.c.ServeInvocations(s.ctx)
		if err != nil {
			s.Stop()
			return err
		}
		go s.serveInvocations(st)
	}
	close(s.ready)
	select {
	case <-s.stopped:
		return nil
	case err := <-s.fatal:
		s.Stop()
		return err
	}
}

// serveInvocations answers invocations, opening the stream again when it
// is lost (runtime restarted) until the service stops.
func (s *Service) serveInvocations(st *client.InvocationStream) {
	backoff := 50 * time.Millisecond
	for {
		for st != nil {
			inv, err := st.Recv()
			if err != nil {
				st.Close()
				st = nil
				if s.ctx.Err() == nil && !errors.Is(err, io.EOF) {
					logf("invocation stream lost (%v); opening it again", err)
				}
				break
			}
			backoff = 50 * time.Millisecond
			s.inflight.Add(1)
			go s.handle(st, inv)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		var err error
		st, err = s.c.ServeInvocations(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if !errors.Is(err, client.ErrUnavailable) {
				select {
				case s.fatal <- err:
				default:
				}
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		logf("invocation stream open again")
	}
}

func (s *Service) handle(st *client.InvocationStream, inv *weftv1.Invocation) {
	defer s.inflight.Done()
	ctx := s.ctx
	var cancel context.CancelFunc
	if inv.GetTimeoutMs() > 0 {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(inv.GetTimeoutMs())*time.Millisecond)
		defer cancel()
	}
	md := metadata.MD{}
	for _, m := range inv.GetMetadata() {
		md[strings.ToLower(m.GetKey())] = append(md[strings.ToLower(m.GetKey())], m.GetValues()...)
	}
	ctx = metadata.NewIncomingContext(ctx, md)
	res := &weftv1.InvocationResult{Id: inv.GetId()}
	resp, err := s.reg.Invoke(ctx, inv.GetRequest())
	if err != nil {
		code, msg, details := handlers.StatusOf(err)
		if code == codes.OK {
			code = codes.Unknown
		}
		res.Code, res.Message, res.Details = int32(code), msg, details
	} else {
		res.Response = resp
	}
	if err := st.Send(res); err != nil && s.ctx.Err() == nil {
		logf("invocation %d (%s): the answer could not be sent: %v", inv.GetId(), inv.GetRequest().GetMethod(), err)
	}
}

// Stop ends the streams at once; calls in flight fail for their callers.
func (s *Service) Stop() error {
	s.stopOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		cl := s.closers
		s.closers = nil
		s.mu.Unlock()
		for _, c := range cl {
			_ = c()
		}
		close(s.stopped)
	})
	return nil
}

// GracefulStop lets the invocations in flight finish (at most 10 s), then
// stops.
func (s *Service) GracefulStop() error {
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	return s.Stop()
}

func logf(format string, args ...any) {
	client.Logf("service: "+format, args...)
}
