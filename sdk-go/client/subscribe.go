package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
	"weft.dev/sdk-go/service/common"
)

// SubscriptionHandleFunction processes one event and returns its verdict.
type SubscriptionHandleFunction func(event *common.TopicEvent) common.SubscriptionResponseStatus

// SubscriptionOptions name the topic to subscribe to. Metadata carries
// Weft's consumer options (consumerGroup — default the app id —,
// maxInFlightPartitions, maxInFlightPerPartition, retryBackoff).
type SubscriptionOptions struct {
	PubsubName      string
	Topic           string
	DeadLetterTopic *string
	Metadata        map[string]string
}

// Subscription is a streaming subscription (SubscribeTopicEventsAlpha1).
// The runtime delivers each partition in order; an event is committed only
// after Success (or Drop). When the connection to the runtime is lost the
// subscription opens again by itself; events whose ack was not sent are
// delivered again.
type Subscription struct {
	c    *Client
	ctx  context.Context
	opts SubscriptionOptions

	mu     sync.Mutex
	cur    *subStream
	closed atomic.Bool
	done   chan struct{}
}

// subStream is one stream of a subscription; acks go on the stream that
// delivered the event, never on a later one.
type subStream struct {
	rs    rawStream
	ended atomic.Bool
}

// SubscriptionMessage is a delivered event awaiting its verdict.
type SubscriptionMessage struct {
	*common.TopicEvent
	sub     *Subscription
	stream  *subStream
	settled atomic.Bool
}

// Subscribe opens a streaming subscription; read it with Receive.
func (c *Client) Subscribe(ctx context.Context, opts SubscriptionOptions) (*Subscription, error) {
	const op = "Subscribe"
	if ctx == nil {
		return nil, argErr(op, "ctx", "is nil")
	}
	if err := required(op, "opts.PubsubName", opts.PubsubName, "opts.Topic", opts.Topic); err != nil {
		return nil, err
	}
	s := &Subscription{c: c, ctx: ctx, opts: opts, done: make(chan struct{})}
	st, err := s.open()
	if err != nil {
		return nil, err
	}
	s.cur = st
	return s, nil
}

func (s *Subscription) open() (*subStream, error) {
	const op = "Subscribe"
	if s.c.closed.Load() {
		return nil, &Error{Op: op, Transport: s.c.t.name(), Code: 1, Message: "the client is closed", cause: ErrClosed}
	}
	first := &runtimev1.SubscribeTopicEventsRequestAlpha1{
		SubscribeTopicEventsRequestType: &runtimev1.SubscribeTopicEventsRequestAlpha1_InitialRequest{
			InitialRequest: &runtimev1.SubscribeTopicEventsRequestInitialAlpha1{
				PubsubName: s.opts.PubsubName, Topic: s.opts.Topic,
				Metadata: s.opts.Metadata, DeadLetterTopic: s.opts.DeadLetterTopic,
			},
		},
	}
	rs, err := s.c.t.stream(s.ctx, mSubscribeTopicEvents, first)
	if err != nil {
		return nil, wrapErr(op, s.c.t.name(), err)
	}
	resp := &runtimev1.SubscribeTopicEventsResponseAlpha1{}
	if err := rs.recv(resp); err != nil {
		rs.close()
		return nil, wrapErr(op, s.c.t.name(), err)
	}
	if resp.GetInitialResponse() == nil {
		rs.close()
		return nil, &Error{Op: op, Transport: s.c.t.name(), Code: 13, Message: "the runtime's first message was not the initial response"}
	}
	return &subStream{rs: rs}, nil
}

// Receive returns the next event. It blocks until one arrives, the
// subscription's context ends or Close is called; across a lost connection
// it re-subscribes (logging it) and goes on.
func (s *Subscription) Receive() (*SubscriptionMessage, error) {
	const op = "Subscription.Receive"
	backoff := 50 * time.Millisecond
	for {
		if s.closed.Load() {
			return nil, &Error{Op: op, Transport: s.c.t.name(), Code: 1, Message: "the subscription is closed", cause: ErrClosed}
		}
		s.mu.Lock()
		st := s.cur
		s.mu.Unlock()
		if st == nil {
			nst, err := s.open()
			if err != nil {
				if s.closed.Load() || s.ctx.Err() != nil || !retryableStreamErr(unwrapTransport(err)) {
					if s.ctx.Err() != nil {
						return nil, wrapErr(op, s.c.t.name(), s.ctx.Err())
					}
					return nil, err
				}
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
				case <-s.done:
				}
				backoff = min(2*backoff, time.Second)
				continue
			}
			logf("subscription %s/%s: subscribed again", s.opts.PubsubName, s.opts.Topic)
			backoff = 50 * time.Millisecond
			s.mu.Lock()
			if s.closed.Load() {
				s.mu.Unlock()
				nst.rs.close()
				continue
			}
			s.cur, st = nst, nst
			s.mu.Unlock()
		}
		resp := &runtimev1.SubscribeTopicEventsResponseAlpha1{}
		err := st.rs.recv(resp)
		if err != nil {
			st.ended.Store(true)
			st.rs.close()
			s.mu.Lock()
			if s.cur == st {
				s.cur = nil
			}
			s.mu.Unlock()
			if s.closed.Load() {
				continue
			}
			if s.c.closed.Load() {
				return nil, &Error{Op: op, Transport: s.c.t.name(), Code: 1, Message: "the client is closed", cause: ErrClosed}
			}
			if s.ctx.Err() != nil {
				return nil, wrapErr(op, s.c.t.name(), s.ctx.Err())
			}
			if retryableStreamErr(err) {
				logf("subscription %s/%s: stream lost (%v); subscribing again", s.opts.PubsubName, s.opts.Topic, err)
				continue
			}
			return nil, wrapErr(op, s.c.t.name(), err)
		}
		ev := resp.GetEventMessage()
		if ev == nil {
			continue
		}
		return &SubscriptionMessage{TopicEvent: toTopicEvent(ev), sub: s, stream: st}, nil
	}
}

func unwrapTransport(err error) error {
	var e *Error
	if errors.As(err, &e) {
		if e.SessionLost || e.Code == 14 {
			return errUnavailableMarker
		}
	}
	return err
}

var errUnavailableMarker = &Error{Code: 14, SessionLost: true}

// toTopicEvent converts a delivered event, reading Weft's ordering
// extensions.
func toTopicEvent(ev *runtimev1.TopicEventRequest) *common.TopicEvent {
	e := &common.TopicEvent{
		ID: ev.GetId(), Source: ev.GetSource(), Type: ev.GetType(), SpecVersion: ev.GetSpecVersion(),
		DataContentType: ev.GetDataContentType(), RawData: ev.GetData(), Data: ev.GetData(),
		Topic: ev.GetTopic(), PubsubName: ev.GetPubsubName(),
		Partition: -1, Offset: -1,
	}
	if len(ev.GetData()) > 0 {
		if mt, _, err := mime.ParseMediaType(ev.GetDataContentType()); err == nil {
			switch {
			case mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")):
				var v any
				if json.Unmarshal(ev.GetData(), &v) == nil {
					e.Data = v
				}
			case strings.HasPrefix(mt, "text/"):
				e.Data = string(ev.GetData())
			}
		}
	}
	if x := ev.GetExtensions(); x != nil {
		e.Extensions = x.AsMap()
		e.Metadata = map[string]string{}
		for k, v := range e.Extensions {
			switch val := v.(type) {
			case string:
				e.Metadata[k] = val
			case float64:
				switch k {
				case "partition":
					e.Partition = int32(val)
				case "offset":
					e.Offset = int64(val)
				case "attempt":
					e.Attempt = int(val)
				}
			}
		}
		if pk, ok := e.Extensions["partitionKey"].(string); ok {
			e.PartitionKey = pk
		}
		if s, ok := e.Extensions["subject"].(string); ok {
			e.Subject = s
		}
	}
	return e
}

// Success acks the event: the runtime commits it.
func (m *SubscriptionMessage) Success() error {
	return m.respond(runtimev1.TopicEventResponse_SUCCESS)
}

// Retry asks for the event again (after the subscription's retryBackoff).
func (m *SubscriptionMessage) Retry() error { return m.respond(runtimev1.TopicEventResponse_RETRY) }

// Drop gives up on the event (to the dead-letter topic when there is one).
func (m *SubscriptionMessage) Drop() error { return m.respond(runtimev1.TopicEventResponse_DROP) }

func (m *SubscriptionMessage) respondStatus(st common.SubscriptionResponseStatus) error {
	switch st {
	case common.SubscriptionResponseStatusSuccess:
		return m.Success()
	case common.SubscriptionResponseStatusRetry:
		return m.Retry()
	case common.SubscriptionResponseStatusDrop:
		return m.Drop()
	}
	// An unknown verdict: deliver it again rather than lose it.
	_ = m.Retry()
	return argErr("SubscriptionHandleFunction", "status", fmt.Sprintf("%q is not SUCCESS, RETRY or DROP (the event was retried)", st))
}

func (m *SubscriptionMessage) respond(status runtimev1.TopicEventResponse_TopicEventResponseStatus) error {
	const op = "SubscriptionMessage.respond"
	if !m.settled.CompareAndSwap(false, true) {
		return argErr(op, "message", fmt.Sprintf("event %s was already answered", m.ID))
	}
	if m.stream.ended.Load() {
		// The stream that delivered it is gone: the runtime delivers the
		// event again (to this subscription once it re-subscribed, or to
		// another member of the group). Never ack it on another stream.
		return &Error{Op: op, Transport: m.sub.c.t.name(), Code: 14, SessionLost: true,
			Message: fmt.Sprintf("the stream that delivered event %s has ended; it is not acked and will be delivered again", m.ID)}
	}
	err := m.stream.rs.send(&runtimev1.SubscribeTopicEventsRequestAlpha1{
		SubscribeTopicEventsRequestType: &runtimev1.SubscribeTopicEventsRequestAlpha1_EventProcessed{
			EventProcessed: &runtimev1.SubscribeTopicEventsRequestProcessedAlpha1{
				Id: m.ID, Status: &runtimev1.TopicEventResponse{Status: status},
			},
		},
	})
	return wrapErr(op, m.sub.c.t.name(), err)
}

// Close ends the subscription; events not acked go to the other members of
// the consumer group (or back to this app when it subscribes again).
func (s *Subscription) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return &Error{Op: "Subscription.Close", Transport: s.c.t.name(), Code: 9, Message: "the subscription was already closed", cause: ErrClosed}
	}
	close(s.done)
	s.mu.Lock()
	st := s.cur
	s.cur = nil
	s.mu.Unlock()
	if st != nil {
		st.ended.Store(true)
		st.rs.close()
	}
	return nil
}

// SubscribeWithHandler subscribes and calls handler for each event. Events
// of one partition are handled one after the other, in order; different
// partitions concurrently. It returns the function that closes the
// subscription (and waits for the handlers running).
func (c *Client) SubscribeWithHandler(ctx context.Context, opts SubscriptionOptions, handler SubscriptionHandleFunction) (func() error, error) {
	if handler == nil {
		return nil, argErr("SubscribeWithHandler", "handler", "is nil")
	}
	s, err := c.Subscribe(ctx, opts)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	lanes := map[int32]chan *SubscriptionMessage{}
	var lanesMu sync.Mutex
	stop := make(chan struct{})
	run := func(m *SubscriptionMessage) {
		if err := m.respondStatus(handler(m.TopicEvent)); err != nil && !s.closed.Load() {
			logf("subscription %s/%s: event %s: %v", opts.PubsubName, opts.Topic, m.ID, err)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			lanesMu.Lock()
			for _, ch := range lanes {
				close(ch)
			}
			lanes = nil
			lanesMu.Unlock()
		}()
		for {
			m, err := s.Receive()
			if err != nil {
				if !s.closed.Load() && ctx.Err() == nil {
					logf("subscription %s/%s ended: %v", opts.PubsubName, opts.Topic, err)
				}
				return
			}
			if m.Partition < 0 {
				wg.Add(1)
				go func() { defer wg.Done(); run(m) }()
				continue
			}
			lanesMu.Lock()
			ch, ok := lanes[m.Partition]
			if !ok {
				ch = make(chan *SubscriptionMessage, 256)
				lanes[m.Partition] = ch
				wg.Add(1)
				go func() {
					defer wg.Done()
					for m := range ch {
						run(m)
					}
				}()
			}
			lanesMu.Unlock()
			select {
			case ch <- m:
			case <-stop:
				return
			}
		}
	}()
	var once sync.Once
	var closeErr error
	return func() error {
		once.Do(func() {
			closeErr = s.Close()
			close(stop)
			wg.Wait()
		})
		return closeErr
	}, nil
}

// TopicEventOf converts a delivered event (of any subscription path) into
// a TopicEvent, with Weft's ordering extensions read out.
func TopicEventOf(ev *runtimev1.TopicEventRequest) *common.TopicEvent { return toTopicEvent(ev) }
