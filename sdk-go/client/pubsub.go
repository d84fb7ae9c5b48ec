package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"

	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
)

// Publish metadata keys understood by the runtime.
const (
	MetadataRawPayload   = "rawPayload"
	MetadataPartitionKey = "partitionKey"
)

// PublishEventOption adjusts a PublishEvent request.
type PublishEventOption func(*runtimev1.PublishEventRequest)

// PublishEventWithContentType sets the data's content type.
func PublishEventWithContentType(contentType string) PublishEventOption {
	return func(r *runtimev1.PublishEventRequest) { r.DataContentType = contentType }
}

// PublishEventWithMetadata adds request metadata.
func PublishEventWithMetadata(md map[string]string) PublishEventOption {
	return func(r *runtimev1.PublishEventRequest) {
		if r.Metadata == nil {
			r.Metadata = map[string]string{}
		}
		for k, v := range md {
			r.Metadata[k] = v
		}
	}
}

// PublishEventWithRawPayload publishes the data without a CloudEvents
// envelope.
func PublishEventWithRawPayload() PublishEventOption {
	return PublishEventWithMetadata(map[string]string{MetadataRawPayload: "true"})
}

// PublishEventWithPartitionKey sets the message key: events with one key
// land in one partition and are delivered in publish order (Weft).
func PublishEventWithPartitionKey(key string) PublishEventOption {
	return PublishEventWithMetadata(map[string]string{MetadataPartitionKey: key})
}

// encodeData turns data into bytes and a default content type: []byte and
// string as they are, anything else as JSON.
func encodeData(data any) ([]byte, string, error) {
	switch d := data.(type) {
	case nil:
		return nil, "", nil
	case []byte:
		return d, "", nil
	case string:
		return []byte(d), "", nil
	default:
		b, err := json.Marshal(d)
		if err != nil {
			return nil, "", err
		}
		return b, "application/json", nil
	}
}

// PublishEvent publishes data to a topic: []byte and string as they are,
// anything else as JSON. By default the runtime wraps it in a CloudEvents
// envelope.
func (c *Client) PublishEvent(ctx context.Context, pubsubName, topicName string, data any, opts ...PublishEventOption) error {
	const op = "PublishEvent"
	if err := required(op, "pubsubName", pubsubName, "topicName", topicName); err != nil {
		return err
	}
	b, ct, err := encodeData(data)
	if err != nil {
		return argErr(op, "data", fmt.Sprintf("cannot be encoded as JSON: %v", err))
	}
	req := &runtimev1.PublishEventRequest{PubsubName: pubsubName, Topic: topicName, Data: b, DataContentType: ct}
	for _, o := range opts {
		if o == nil {
			return argErr(op, "opts", "holds a nil option")
		}
		o(req)
	}
	return c.call(ctx, op, mPublishEvent, req, nil)
}

// PublishEventsEvent is one event of PublishEvents with its own id,
// content type and metadata (e.g. partitionKey).
type PublishEventsEvent struct {
	EntryID     string
	Data        []byte
	ContentType string
	Metadata    map[string]string
}

// PublishEventsResponse says what failed: Error is nil when every event
// was published.
type PublishEventsResponse struct {
	Error        error
	FailedEvents []any
}

// PublishEventsOption adjusts a bulk publish request.
type PublishEventsOption func(*runtimev1.BulkPublishRequest)

// PublishEventsWithContentType sets every entry's content type.
func PublishEventsWithContentType(contentType string) PublishEventsOption {
	return func(r *runtimev1.BulkPublishRequest) {
		for _, e := range r.Entries {
			e.ContentType = contentType
		}
	}
}

// PublishEventsWithMetadata adds request metadata.
func PublishEventsWithMetadata(md map[string]string) PublishEventsOption {
	return func(r *runtimev1.BulkPublishRequest) {
		if r.Metadata == nil {
			r.Metadata = map[string]string{}
		}
		for k, v := range md {
			r.Metadata[k] = v
		}
	}
}

// PublishEventsWithRawPayload publishes the entries without envelopes.
func PublishEventsWithRawPayload() PublishEventsOption {
	return PublishEventsWithMetadata(map[string]string{MetadataRawPayload: "true"})
}

func newEntryID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// PublishEvents publishes events in one call (BulkPublishEvent). Each
// event is a PublishEventsEvent, []byte, string, or anything JSON encodes.
func (c *Client) PublishEvents(ctx context.Context, pubsubName, topicName string, events []any, opts ...PublishEventsOption) PublishEventsResponse {
	const op = "PublishEvents"
	fail := func(err error) PublishEventsResponse { return PublishEventsResponse{Error: err, FailedEvents: events} }
	if err := required(op, "pubsubName", pubsubName, "topicName", topicName); err != nil {
		return fail(err)
	}
	if len(events) == 0 {
		return fail(argErr(op, "events", "is empty: nothing to publish"))
	}
	req := &runtimev1.BulkPublishRequest{PubsubName: pubsubName, Topic: topicName}
	byID := make(map[string]any, len(events))
	for i, ev := range events {
		e := &runtimev1.BulkPublishRequestEntry{}
		switch d := ev.(type) {
		case PublishEventsEvent:
			e.EntryId, e.Event, e.ContentType, e.Metadata = d.EntryID, d.Data, d.ContentType, d.Metadata
		case *PublishEventsEvent:
			if d == nil {
				return fail(argErr(op, fmt.Sprintf("events[%d]", i), "is nil"))
			}
			e.EntryId, e.Event, e.ContentType, e.Metadata = d.EntryID, d.Data, d.ContentType, d.Metadata
		case []byte:
			e.Event, e.ContentType = d, "application/octet-stream"
		case string:
			e.Event, e.ContentType = []byte(d), "text/plain"
		default:
			b, err := json.Marshal(d)
			if err != nil {
				return fail(argErr(op, fmt.Sprintf("events[%d]", i), fmt.Sprintf("cannot be encoded as JSON: %v", err)))
			}
			e.Event, e.ContentType = b, "application/json"
		}
		if e.EntryId == "" {
			e.EntryId = newEntryID()
		}
		if _, dup := byID[e.EntryId]; dup {
			return fail(argErr(op, fmt.Sprintf("events[%d].EntryID", i), fmt.Sprintf("%q is used twice", e.EntryId)))
		}
		byID[e.EntryId] = ev
		req.Entries = append(req.Entries, e)
	}
	for _, o := range opts {
		if o != nil {
			o(req)
		}
	}
	resp := &runtimev1.BulkPublishResponse{}
	if err := c.call(ctx, op, mBulkPublishEvent, req, resp); err != nil {
		return fail(err)
	}
	if len(resp.GetFailedEntries()) == 0 {
		return PublishEventsResponse{FailedEvents: []any{}}
	}
	out := PublishEventsResponse{}
	first := ""
	for _, f := range resp.GetFailedEntries() {
		if first == "" {
			first = f.GetEntryId() + ": " + f.GetError()
		}
		if ev, ok := byID[f.GetEntryId()]; ok {
			out.FailedEvents = append(out.FailedEvents, ev)
		} else {
			out.FailedEvents = append(out.FailedEvents, f.GetEntryId())
		}
	}
	out.Error = &Error{Op: op, Transport: c.t.name(), Code: 13, Message: fmt.Sprintf("%d of %d events were not published (first: %s)", len(out.FailedEvents), len(events), first)}
	return out
}
