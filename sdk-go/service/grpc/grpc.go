// Package grpc is the app side for apps that prefer a port: it serves
// Dapr's AppCallback gRPC service (OnInvoke, ListTopicSubscriptions,
// OnTopicEvent) for a runtime started with --app-port (or --app-socket),
// as the Dapr Go SDK's service/grpc does.
//
//	s, _ := grpc.NewService(":6001")
//	s.AddServiceInvocationHandler("place", place)
//	log.Fatal(s.Start())
package grpc

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/handlers"
	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
	"weft.dev/sdk-go/service/common"
)

// Server serves AppCallback on a listener.
type Server struct {
	runtimev1.UnimplementedAppCallbackServer
	lis net.Listener
	srv *grpc.Server
	reg *handlers.Registry
}

var _ common.Service = (*Server)(nil)

// NewService listens on address (":6001", "127.0.0.1:6001").
func NewService(address string) (*Server, error) {
	if address == "" {
		return nil, fmt.Errorf("grpc.NewService: argument address: is required and was empty")
	}
	lis, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("grpc.NewService: cannot listen on %s: %w", address, err)
	}
	return NewServiceWithListener(lis), nil
}

// NewServiceWithListener serves on lis (TCP, or a Unix socket for
// --app-socket).
func NewServiceWithListener(lis net.Listener) *Server {
	s := &Server{lis: lis, srv: grpc.NewServer(), reg: handlers.NewRegistry()}
	runtimev1.RegisterAppCallbackServer(s.srv, s)
	return s
}

// Addr is where the service listens.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// AddServiceInvocationHandler registers fn for method name.
func (s *Server) AddServiceInvocationHandler(name string, fn common.ServiceInvocationHandler) error {
	return s.reg.AddInvocation("AddServiceInvocationHandler", name, fn)
}

// AddInvocationHandler is AddServiceInvocationHandler.
func (s *Server) AddInvocationHandler(name string, fn common.ServiceInvocationHandler) error {
	return s.reg.AddInvocation("AddInvocationHandler", name, fn)
}

// AddTopicEventHandler declares a subscription (ListTopicSubscriptions)
// whose events reach fn through OnTopicEvent.
func (s *Server) AddTopicEventHandler(sub *common.Subscription, fn common.TopicEventHandler) error {
	return s.reg.AddTopic("AddTopicEventHandler", sub, fn)
}

// AddTopicHandler is AddTopicEventHandler for a pub/sub component and topic.
func (s *Server) AddTopicHandler(pubsubName, topic string, fn common.TopicEventHandler) error {
	return s.reg.AddTopic("AddTopicHandler", &common.Subscription{PubsubName: pubsubName, Topic: topic}, fn)
}

// Start serves until Stop.
func (s *Server) Start() error {
	if err := s.reg.Start(); err != nil {
		return err
	}
	return s.srv.Serve(s.lis)
}

// Stop stops at once.
func (s *Server) Stop() error { s.srv.Stop(); return nil }

// GracefulStop lets calls in flight finish (at most 10 s).
func (s *Server) GracefulStop() error {
	done := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.srv.Stop()
	}
	return nil
}

// OnInvoke runs the method's handler.
func (s *Server) OnInvoke(ctx context.Context, in *commonv1.InvokeRequest) (*commonv1.InvokeResponse, error) {
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "no invocation")
	}
	return s.reg.Invoke(ctx, in)
}

// ListTopicSubscriptions declares the topic handlers.
func (s *Server) ListTopicSubscriptions(ctx context.Context, _ *emptypb.Empty) (*runtimev1.ListTopicSubscriptionsResponse, error) {
	out := &runtimev1.ListTopicSubscriptionsResponse{}
	for _, t := range s.reg.Topics() {
		out.Subscriptions = append(out.Subscriptions, &runtimev1.TopicSubscription{
			PubsubName: t.Sub.PubsubName, Topic: t.Sub.Topic, Metadata: t.Sub.Metadata,
			DeadLetterTopic: t.Sub.DeadLetterTopic,
			Routes:          &runtimev1.TopicRoutes{Default: t.Sub.Route},
		})
	}
	return out, nil
}

// OnTopicEvent runs the topic's handler: SUCCESS, RETRY or DROP.
func (s *Server) OnTopicEvent(ctx context.Context, in *runtimev1.TopicEventRequest) (*runtimev1.TopicEventResponse, error) {
	t := s.reg.Topic(in.GetPubsubName(), in.GetTopic())
	if t == nil {
		return nil, status.Errorf(codes.NotFound, "this app has no handler for topic %s/%s", in.GetPubsubName(), in.GetTopic())
	}
	v := handlers.Verdict(handlers.SafeTopic(ctx, t.Fn, client.TopicEventOf(in)))
	st := runtimev1.TopicEventResponse_SUCCESS
	switch v {
	case common.SubscriptionResponseStatusRetry:
		st = runtimev1.TopicEventResponse_RETRY
	case common.SubscriptionResponseStatusDrop:
		st = runtimev1.TopicEventResponse_DROP
	}
	return &runtimev1.TopicEventResponse{Status: st}, nil
}

// ListInputBindings: this service has none.
func (s *Server) ListInputBindings(context.Context, *emptypb.Empty) (*runtimev1.ListInputBindingsResponse, error) {
	return &runtimev1.ListInputBindingsResponse{}, nil
}
