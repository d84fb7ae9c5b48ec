// Package common holds the types shared by the client's subscriptions and
// the app-side services (service/stream without a port, service/grpc on a
// port): events, invocations and handler signatures, shaped as in the
// official Dapr Go SDK's service/common.
package common

import (
	"context"
	"encoding/json"
)

// TopicEvent is one delivered pub/sub event. Besides the CloudEvents
// fields of the Dapr SDK it carries what Weft's ordered consumer groups
// add: the partition, the offset in it, the partition key and the attempt
// (0 for the first delivery, more for redeliveries after RETRY or a
// rebalance).
type TopicEvent struct {
	ID              string
	SpecVersion     string
	Type            string
	Source          string
	DataContentType string
	// Data is the payload decoded for JSON (any) and text (string) content
	// types, else the raw bytes.
	Data any
	// RawData is the payload as delivered.
	RawData    []byte
	Subject    string
	Topic      string
	PubsubName string
	// Metadata holds the string-valued extensions (message headers).
	Metadata map[string]string

	// Partition the event came from (-1 when the runtime did not say).
	Partition int32
	// Offset of the event in its partition (-1 when unknown).
	Offset int64
	// PartitionKey the publisher gave (empty for none).
	PartitionKey string
	// Attempt: 0 for the first delivery, n for the n-th redelivery.
	Attempt int
	// Extensions: every CloudEvents extension, as JSON values.
	Extensions map[string]any
}

// Struct decodes RawData (JSON) into target.
func (e *TopicEvent) Struct(target any) error { return json.Unmarshal(e.RawData, target) }

// SubscriptionResponseStatus is a handler's verdict on one event.
type SubscriptionResponseStatus string

const (
	// SubscriptionResponseStatusSuccess: processed; the runtime commits it.
	SubscriptionResponseStatusSuccess SubscriptionResponseStatus = "SUCCESS"
	// SubscriptionResponseStatusRetry: deliver it again (and, in order,
	// what follows it in its partition).
	SubscriptionResponseStatusRetry SubscriptionResponseStatus = "RETRY"
	// SubscriptionResponseStatusDrop: give up on it (dead-letter topic when
	// the subscription has one) and move on.
	SubscriptionResponseStatusDrop SubscriptionResponseStatus = "DROP"
)

// Subscription describes a topic subscription.
type Subscription struct {
	PubsubName string
	Topic      string
	// Metadata: subscription options (e.g. consumerGroup,
	// maxInFlightPerPartition, retryBackoff).
	Metadata        map[string]string
	DeadLetterTopic string
	// Route: for the AppCallback (port) service, the path events arrive on.
	Route string
}

// InvocationEvent is an incoming service invocation.
type InvocationEvent struct {
	Data        []byte
	ContentType string
	DataTypeURL string
	Verb        string
	QueryString string
	// Method is the invoked method name.
	Method string
}

// Content is an invocation's answer.
type Content struct {
	Data        []byte
	ContentType string
	DataTypeURL string
}

// Handlers, as in the Dapr SDK.
type (
	// ServiceInvocationHandler answers one invocation; the context carries
	// the caller's deadline and metadata (metadata.FromIncomingContext:
	// dapr-caller-app-id, traceparent, …). A returned error that has a
	// GRPCStatus reaches the caller with its code, message and details.
	ServiceInvocationHandler func(ctx context.Context, in *InvocationEvent) (out *Content, err error)
	// TopicEventHandler processes one event: nil is SUCCESS; an error with
	// retry=true is RETRY, with retry=false DROP.
	TopicEventHandler func(ctx context.Context, e *TopicEvent) (retry bool, err error)
)

// Service is an app-side server: it receives invocations and topic
// events until stopped.
type Service interface {
	AddServiceInvocationHandler(name string, fn ServiceInvocationHandler) error
	AddTopicEventHandler(sub *Subscription, fn TopicEventHandler) error
	// Start serves until Stop (or a fatal error).
	Start() error
	Stop() error
	GracefulStop() error
}
