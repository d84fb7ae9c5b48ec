package client_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/weftest"
	"weft.dev/sdk-go/service/common"
)

const pubsub = "pubsub"

func TestPublishAndSubscribe(t *testing.T) {
	eachTransport(t, "go-pubsub", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx := ctxT(t)
		sub, err := c.Subscribe(ctx, client.SubscriptionOptions{PubsubName: pubsub, Topic: "orders", Metadata: map[string]string{"retryBackoff": "10ms"}})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()

		// CloudEvents envelope around JSON, with a partition key.
		if err := c.PublishEvent(ctx, pubsub, "orders", map[string]any{"id": 1}, client.PublishEventWithPartitionKey("cust-1")); err != nil {
			t.Fatal(err)
		}
		m, err := sub.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if m.Topic != "orders" || m.PubsubName != pubsub || m.PartitionKey != "cust-1" || m.Partition < 0 || m.Offset < 0 || m.Attempt != 0 || m.ID == "" {
			t.Fatalf("event %+v", m.TopicEvent)
		}
		var body struct{ ID int }
		if err := m.Struct(&body); err != nil || body.ID != 1 {
			t.Fatalf("data %s: %v", m.RawData, err)
		}
		if d, ok := m.Data.(map[string]any); !ok || d["id"] != float64(1) {
			t.Fatalf("decoded data %#v", m.Data)
		}
		// RETRY: the same event comes again with attempt 1.
		if err := m.Retry(); err != nil {
			t.Fatal(err)
		}
		if err := m.Success(); err == nil {
			t.Fatal("a second verdict on one event was accepted")
		}
		m2, err := sub.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if m2.Offset != m.Offset || m2.Partition != m.Partition || m2.Attempt != 1 {
			t.Fatalf("redelivery %+v after %+v", m2.TopicEvent, m.TopicEvent)
		}
		if err := m2.Success(); err != nil {
			t.Fatal(err)
		}

		// Raw payload: no envelope.
		if err := c.PublishEvent(ctx, pubsub, "orders", []byte("raw bytes"), client.PublishEventWithRawPayload(), client.PublishEventWithContentType("application/octet-stream")); err != nil {
			t.Fatal(err)
		}
		m3, err := sub.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if string(m3.RawData) != "raw bytes" {
			t.Fatalf("raw event data %q", m3.RawData)
		}
		if err := m3.Drop(); err != nil {
			t.Fatal(err)
		}

		// Bulk: text, JSON and an event with its own id and key.
		res := c.PublishEvents(ctx, pubsub, "orders", []any{
			"text event",
			map[string]int{"n": 2},
			client.PublishEventsEvent{EntryID: "e-3", Data: []byte(`{"n":3}`), ContentType: "application/json", Metadata: map[string]string{"partitionKey": "cust-3"}},
		})
		if res.Error != nil || len(res.FailedEvents) != 0 {
			t.Fatalf("bulk publish: %v %v", res.Error, res.FailedEvents)
		}
		seen := map[string]bool{}
		for len(seen) < 3 {
			m, err := sub.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case m.Data == "text event":
				seen["text"] = true
			case m.PartitionKey == "cust-3":
				seen["keyed"] = true
			default:
				if d, ok := m.Data.(map[string]any); ok && d["n"] == float64(2) {
					seen["json"] = true
				} else {
					t.Fatalf("unexpected event %+v", m.TopicEvent)
				}
			}
			if err := m.Success(); err != nil {
				t.Fatal(err)
			}
		}

		// Bad arguments.
		var ae *client.ArgumentError
		if err := c.PublishEvent(ctx, "", "t", nil); !errors.As(err, &ae) || ae.Arg != "pubsubName" {
			t.Fatalf("no pubsub: %v", err)
		}
		if err := c.PublishEvent(ctx, pubsub, "", nil); !errors.As(err, &ae) || ae.Arg != "topicName" {
			t.Fatalf("no topic: %v", err)
		}
		if err := c.PublishEvent(ctx, pubsub, "t", func() {}); !errors.As(err, &ae) || ae.Arg != "data" {
			t.Fatalf("unencodable data: %v", err)
		}
		if r := c.PublishEvents(ctx, pubsub, "t", nil); !errors.As(r.Error, &ae) || ae.Arg != "events" {
			t.Fatalf("no events: %v", r.Error)
		}
		if r := c.PublishEvents(ctx, pubsub, "t", []any{client.PublishEventsEvent{EntryID: "x"}, client.PublishEventsEvent{EntryID: "x"}}); !errors.As(r.Error, &ae) || ae.Arg != "events[1].EntryID" {
			t.Fatalf("duplicate ids: %v", r.Error)
		}
		if _, err := c.Subscribe(ctx, client.SubscriptionOptions{PubsubName: pubsub}); !errors.As(err, &ae) || ae.Arg != "opts.Topic" {
			t.Fatalf("subscribe without topic: %v", err)
		}
		if err := c.PublishEvent(ctx, "no-such-pubsub", "t", "x"); !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "no-such-pubsub") {
			t.Fatalf("unknown pubsub: %v", err)
		}
		if _, err := c.Subscribe(ctx, client.SubscriptionOptions{PubsubName: pubsub, Topic: "t", Metadata: map[string]string{"maxInFlightPerPartition": "zero"}}); !errors.Is(err, client.ErrInvalidArgument) {
			t.Fatalf("bad subscription metadata: %v", err)
		}
		if _, err := c.SubscribeWithHandler(ctx, client.SubscriptionOptions{PubsubName: pubsub, Topic: "t"}, nil); !errors.As(err, &ae) || ae.Arg != "handler" {
			t.Fatalf("nil handler: %v", err)
		}
		if err := sub.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.Receive(); !errors.Is(err, client.ErrClosed) {
			t.Fatalf("receive after close: %v", err)
		}
	})
}

type orderEvent struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

// TestOrderedSubscription publishes a few thousand keyed events and checks
// that a handler which asks for some of them again still sees every key's
// events in publish order, each acked exactly once.
func TestOrderedSubscription(t *testing.T) {
	const keys, perKey = 40, 60 // 2 400 events per transport
	eachTransport(t, "go-ordered", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx := ctxT(t)
		var mu sync.Mutex
		acked := map[string][]int{}
		retried, redelivered, total := 0, 0, 0
		var orderErr error
		done := make(chan struct{})
		closeSub, err := c.SubscribeWithHandler(ctx, client.SubscriptionOptions{
			PubsubName: pubsub, Topic: "ordered",
			Metadata: map[string]string{"retryBackoff": "5ms"},
		}, func(e *common.TopicEvent) common.SubscriptionResponseStatus {
			var ev orderEvent
			if err := json.Unmarshal(e.RawData, &ev); err != nil {
				mu.Lock()
				orderErr = fmt.Errorf("event %s: %v", e.ID, err)
				mu.Unlock()
				return common.SubscriptionResponseStatusDrop
			}
			mu.Lock()
			defer mu.Unlock()
			if e.Attempt > 0 {
				redelivered++
			}
			if e.PartitionKey != ev.Key && orderErr == nil {
				orderErr = fmt.Errorf("event %s/%d: partition key %q", ev.Key, ev.Seq, e.PartitionKey)
			}
			// Every seventh event fails once.
			if ev.Seq%7 == 3 && e.Attempt == 0 {
				retried++
				return common.SubscriptionResponseStatusRetry
			}
			prev := acked[ev.Key]
			if len(prev) != ev.Seq && orderErr == nil {
				orderErr = fmt.Errorf("key %s: acked seq %d after %v", ev.Key, ev.Seq, prev[max(0, len(prev)-3):])
			}
			acked[ev.Key] = append(prev, ev.Seq)
			total++
			if total == keys*perKey {
				close(done)
			}
			return common.SubscriptionResponseStatusSuccess
		})
		if err != nil {
			t.Fatal(err)
		}
		defer closeSub()
		// Interleave keys, in bulk batches of 100.
		var batch []any
		for s := 0; s < perKey; s++ {
			for k := 0; k < keys; k++ {
				key := fmt.Sprintf("key-%02d", k)
				data, _ := json.Marshal(orderEvent{Key: key, Seq: s})
				batch = append(batch, client.PublishEventsEvent{Data: data, ContentType: "application/json", Metadata: map[string]string{"partitionKey": key}})
				if len(batch) == 100 {
					if r := c.PublishEvents(ctx, pubsub, "ordered", batch); r.Error != nil {
						t.Fatal(r.Error)
					}
					batch = nil
				}
			}
		}
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			mu.Lock()
			t.Fatalf("only %d of %d events acked (%d retried)", total, keys*perKey, retried)
		}
		mu.Lock()
		defer mu.Unlock()
		if orderErr != nil {
			t.Fatal(orderErr)
		}
		if retried == 0 || redelivered != retried {
			t.Fatalf("%d events retried, %d redelivered with attempt > 0", retried, redelivered)
		}
		for k, seqs := range acked {
			if len(seqs) != perKey {
				t.Fatalf("key %s: %d events acked", k, len(seqs))
			}
		}
		t.Logf("%d events in order over %s, %d retried", total, c.Transport(), retried)
	})
}
