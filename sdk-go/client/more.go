package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"google.golang.org/protobuf/types/known/anypb"

	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
	weftv1 "weft.dev/sdk-go/proto/weft/runtime/v1"
)

// === configuration ===

// ConfigurationItem is one configuration value.
type ConfigurationItem struct {
	Value    string
	Version  string
	Metadata map[string]string
}

// ConfigurationOpt adds request metadata.
type ConfigurationOpt func(map[string]string)

// WithConfigurationMetadata adds one metadata entry.
func WithConfigurationMetadata(key, value string) ConfigurationOpt {
	return func(m map[string]string) { m[key] = value }
}

// ConfigurationHandleFunction receives a subscription's id and the items
// that changed.
type ConfigurationHandleFunction func(id string, items map[string]*ConfigurationItem)

func configMeta(opts []ConfigurationOpt) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		if o != nil {
			o(m)
		}
	}
	return m
}

func toItems(in map[string]*commonv1.ConfigurationItem) map[string]*ConfigurationItem {
	out := make(map[string]*ConfigurationItem, len(in))
	for k, v := range in {
		out[k] = &ConfigurationItem{Value: v.GetValue(), Version: v.GetVersion(), Metadata: v.GetMetadata()}
	}
	return out
}

// GetConfigurationItem reads one key; nil when it is not set.
func (c *Client) GetConfigurationItem(ctx context.Context, storeName, key string, opts ...ConfigurationOpt) (*ConfigurationItem, error) {
	if err := required("GetConfigurationItem", "storeName", storeName, "key", key); err != nil {
		return nil, err
	}
	items, err := c.getConfig(ctx, "GetConfigurationItem", storeName, []string{key}, opts)
	if err != nil {
		return nil, err
	}
	return items[key], nil
}

// GetConfigurationItems reads keys (all of them for an empty list).
func (c *Client) GetConfigurationItems(ctx context.Context, storeName string, keys []string, opts ...ConfigurationOpt) (map[string]*ConfigurationItem, error) {
	return c.getConfig(ctx, "GetConfigurationItems", storeName, keys, opts)
}

func (c *Client) getConfig(ctx context.Context, op, storeName string, keys []string, opts []ConfigurationOpt) (map[string]*ConfigurationItem, error) {
	if err := required(op, "storeName", storeName); err != nil {
		return nil, err
	}
	resp := &runtimev1.GetConfigurationResponse{}
	if err := c.call(ctx, op, mGetConfiguration, &runtimev1.GetConfigurationRequest{StoreName: storeName, Keys: keys, Metadata: configMeta(opts)}, resp); err != nil {
		return nil, err
	}
	return toItems(resp.GetItems()), nil
}

// ConfigurationUpdate is one message of a configuration subscription.
type ConfigurationUpdate struct {
	ID    string
	Items map[string]*ConfigurationItem
}

// SubscribeConfigurationItems subscribes to changes of keys (all keys for
// an empty list) and calls handler for each change, until
// UnsubscribeConfigurationItems or ctx ends. It returns the subscription id.
func (c *Client) SubscribeConfigurationItems(ctx context.Context, storeName string, keys []string, handler ConfigurationHandleFunction, opts ...ConfigurationOpt) (string, error) {
	if handler == nil {
		return "", argErr("SubscribeConfigurationItems", "handler", "is nil")
	}
	id, ch, err := c.subscribeConfig(ctx, "SubscribeConfigurationItems", storeName, keys, opts)
	if err != nil {
		return "", err
	}
	go func() {
		for u := range ch {
			handler(u.ID, u.Items)
		}
	}()
	return id, nil
}

// SubscribeConfigurationItemsChan is SubscribeConfigurationItems with a
// channel: it receives each change, and is closed when the subscription
// ends (unsubscribed, ctx done, or the runtime went away).
func (c *Client) SubscribeConfigurationItemsChan(ctx context.Context, storeName string, keys []string, opts ...ConfigurationOpt) (string, <-chan ConfigurationUpdate, error) {
	return c.subscribeConfig(ctx, "SubscribeConfigurationItemsChan", storeName, keys, opts)
}

func (c *Client) subscribeConfig(ctx context.Context, op, storeName string, keys []string, opts []ConfigurationOpt) (string, <-chan ConfigurationUpdate, error) {
	if ctx == nil {
		return "", nil, argErr(op, "ctx", "is nil")
	}
	if err := required(op, "storeName", storeName); err != nil {
		return "", nil, err
	}
	rs, err := c.t.stream(ctx, mSubscribeConfiguration, &runtimev1.SubscribeConfigurationRequest{StoreName: storeName, Keys: keys, Metadata: configMeta(opts)})
	if err != nil {
		return "", nil, wrapErr(op, c.t.name(), err)
	}
	first := &runtimev1.SubscribeConfigurationResponse{}
	if err := rs.recv(first); err != nil {
		rs.close()
		return "", nil, wrapErr(op, c.t.name(), err)
	}
	id := first.GetId()
	ch := make(chan ConfigurationUpdate, 16)
	go func() {
		defer close(ch)
		defer rs.close()
		if len(first.GetItems()) > 0 {
			select {
			case ch <- ConfigurationUpdate{ID: id, Items: toItems(first.GetItems())}:
			case <-ctx.Done():
				return
			}
		}
		for {
			m := &runtimev1.SubscribeConfigurationResponse{}
			if err := rs.recv(m); err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() == nil {
					logf("configuration subscription %s on %s ended: %v", id, storeName, err)
				}
				return
			}
			if len(m.GetItems()) == 0 {
				continue
			}
			select {
			case ch <- ConfigurationUpdate{ID: id, Items: toItems(m.GetItems())}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return id, ch, nil
}

// UnsubscribeConfigurationItems ends a configuration subscription.
func (c *Client) UnsubscribeConfigurationItems(ctx context.Context, storeName string, id string, opts ...ConfigurationOpt) error {
	const op = "UnsubscribeConfigurationItems"
	if err := required(op, "storeName", storeName, "id", id); err != nil {
		return err
	}
	resp := &runtimev1.UnsubscribeConfigurationResponse{}
	if err := c.call(ctx, op, mUnsubscribeConfig, &runtimev1.UnsubscribeConfigurationRequest{StoreName: storeName, Id: id}, resp); err != nil {
		return err
	}
	if !resp.GetOk() {
		return &Error{Op: op, Transport: c.t.name(), Code: 5, Message: fmt.Sprintf("subscription %q on %s: %s", id, storeName, resp.GetMessage())}
	}
	return nil
}

// === service invocation ===

// DataContent is an invocation's payload.
type DataContent struct {
	Data        []byte
	ContentType string
}

var verbs = map[string]commonv1.HTTPExtension_Verb{}

func init() {
	for name, v := range commonv1.HTTPExtension_Verb_value {
		verbs[name] = commonv1.HTTPExtension_Verb(v)
	}
}

func (c *Client) invoke(ctx context.Context, op, appID, methodName, verb string, data []byte, contentType string) ([]byte, error) {
	if err := required(op, "appID", appID, "methodName", methodName, "verb", verb); err != nil {
		return nil, err
	}
	v, ok := verbs[strings.ToUpper(verb)]
	if !ok {
		return nil, argErr(op, "verb", fmt.Sprintf("%q is not an HTTP verb (GET, POST, PUT, DELETE, …)", verb))
	}
	method, query, _ := strings.Cut(methodName, "?")
	if method == "" {
		return nil, argErr(op, "methodName", "has no method before the query string")
	}
	req := &runtimev1.InvokeServiceRequest{Id: appID, Message: &commonv1.InvokeRequest{
		Method: method, ContentType: contentType,
		HttpExtension: &commonv1.HTTPExtension{Verb: v, Querystring: query},
	}}
	if data != nil {
		req.Message.Data = &anypb.Any{Value: data}
	}
	resp := &commonv1.InvokeResponse{}
	if err := c.call(ctx, op, mInvokeService, req, resp); err != nil {
		return nil, err
	}
	return resp.GetData().GetValue(), nil
}

// InvokeMethod calls methodName (optionally "method?query") of the app
// appID, through the runtimes. The call's deadline is ctx's.
func (c *Client) InvokeMethod(ctx context.Context, appID, methodName, verb string) ([]byte, error) {
	return c.invoke(ctx, "InvokeMethod", appID, methodName, verb, nil, "")
}

// InvokeMethodWithContent calls methodName with a payload.
func (c *Client) InvokeMethodWithContent(ctx context.Context, appID, methodName, verb string, content *DataContent) ([]byte, error) {
	if content == nil {
		return nil, argErr("InvokeMethodWithContent", "content", "is nil")
	}
	return c.invoke(ctx, "InvokeMethodWithContent", appID, methodName, verb, content.Data, content.ContentType)
}

// InvokeMethodWithCustomContent calls methodName with content encoded as
// JSON.
func (c *Client) InvokeMethodWithCustomContent(ctx context.Context, appID, methodName, verb string, contentType string, content any) ([]byte, error) {
	const op = "InvokeMethodWithCustomContent"
	if contentType == "" {
		return nil, argErr(op, "contentType", "is required and was empty")
	}
	if content == nil {
		return nil, argErr(op, "content", "is nil")
	}
	b, err := json.Marshal(content)
	if err != nil {
		return nil, argErr(op, "content", fmt.Sprintf("cannot be encoded as JSON: %v", err))
	}
	return c.invoke(ctx, op, appID, methodName, verb, b, contentType)
}

// === metadata ===

// MetadataRegisteredComponents is a loaded component.
type MetadataRegisteredComponents struct {
	Name         string
	Type         string
	Version      string
	Capabilities []string
}

// MetadataSubscription is a subscription the runtime holds.
type MetadataSubscription struct {
	PubsubName      string
	Topic           string
	Metadata        map[string]string
	DeadLetterTopic string
}

// GetMetadataResponse is what the runtime says about itself.
type GetMetadataResponse struct {
	ID                   string
	RuntimeVersion       string
	RegisteredComponents []*MetadataRegisteredComponents
	ExtendedMetadata     map[string]string
	Subscriptions        []*MetadataSubscription
}

// GetMetadata asks the runtime what it runs.
func (c *Client) GetMetadata(ctx context.Context) (*GetMetadataResponse, error) {
	resp := &runtimev1.GetMetadataResponse{}
	if err := c.call(ctx, "GetMetadata", mGetMetadata, &runtimev1.GetMetadataRequest{}, resp); err != nil {
		return nil, err
	}
	out := &GetMetadataResponse{ID: resp.GetId(), RuntimeVersion: resp.GetRuntimeVersion(), ExtendedMetadata: resp.GetExtendedMetadata()}
	for _, r := range resp.GetRegisteredComponents() {
		out.RegisteredComponents = append(out.RegisteredComponents, &MetadataRegisteredComponents{Name: r.GetName(), Type: r.GetType(), Version: r.GetVersion(), Capabilities: r.GetCapabilities()})
	}
	for _, s := range resp.GetSubscriptions() {
		out.Subscriptions = append(out.Subscriptions, &MetadataSubscription{PubsubName: s.GetPubsubName(), Topic: s.GetTopic(), Metadata: s.GetMetadata(), DeadLetterTopic: s.GetDeadLetterTopic()})
	}
	return out, nil
}

// SetMetadata sets an extended metadata entry on the runtime.
func (c *Client) SetMetadata(ctx context.Context, key, value string) error {
	if err := required("SetMetadata", "key", key); err != nil {
		return err
	}
	return c.call(ctx, "SetMetadata", mSetMetadata, &runtimev1.SetMetadataRequest{Key: key, Value: value}, nil)
}

// === invocations for apps without a port ===

// InvocationStream is an open weft.runtime.v1.AppChannel/ServeInvocations
// stream: the runtime sends the invocations for this app on it, the app
// answers each with a result. service/stream builds its Service on it.
type InvocationStream struct {
	c      *Client
	rs     rawStream
	sendMu sync.Mutex
}

// ServeInvocations opens an invocation stream (over shared memory or gRPC,
// as the client does) and waits for the runtime to register it.
func (c *Client) ServeInvocations(ctx context.Context) (*InvocationStream, error) {
	const op = "ServeInvocations"
	if ctx == nil {
		return nil, argErr(op, "ctx", "is nil")
	}
	first := &weftv1.ServeInvocationsRequest{Kind: &weftv1.ServeInvocationsRequest_Initial{Initial: &weftv1.ServeInvocationsInitial{}}}
	rs, err := c.t.stream(ctx, mServeInvocations, first)
	if err != nil {
		return nil, wrapErr(op, c.t.name(), err)
	}
	resp := &weftv1.ServeInvocationsResponse{}
	if err := rs.recv(resp); err != nil {
		rs.close()
		return nil, wrapErr(op, c.t.name(), err)
	}
	if resp.GetInitialResponse() == nil {
		rs.close()
		return nil, &Error{Op: op, Transport: c.t.name(), Code: 13, Message: "the runtime's first message was not the initial response"}
	}
	return &InvocationStream{c: c, rs: rs}, nil
}

// Recv returns the next invocation; io.EOF when the runtime ended the
// stream (it is shutting down), an *Error when it was lost.
func (s *InvocationStream) Recv() (*weftv1.Invocation, error) {
	for {
		m := &weftv1.ServeInvocationsResponse{}
		if err := s.rs.recv(m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			return nil, wrapErr("InvocationStream.Recv", s.c.t.name(), err)
		}
		if inv := m.GetInvocation(); inv != nil {
			return inv, nil
		}
	}
}

// Send answers an invocation. Safe for concurrent use.
func (s *InvocationStream) Send(r *weftv1.InvocationResult) error {
	if r == nil {
		return argErr("InvocationStream.Send", "r", "is nil")
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return wrapErr("InvocationStream.Send", s.c.t.name(), s.rs.send(&weftv1.ServeInvocationsRequest{Kind: &weftv1.ServeInvocationsRequest_Result{Result: r}}))
}

// Close ends the stream; unanswered invocations fail for their callers.
func (s *InvocationStream) Close() { s.rs.close() }
