package client_test

import (
	"bytes"
	"context"
	"errors"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/weftest"
	"weft.dev/sdk-go/service/common"
	"weft.dev/sdk-go/service/stream"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRuntimeRestart kills the runtime under a running app: calls fail fast
// with ErrUnavailable, the handler that was running when it died gets no
// ack sent for it, and once the runtime is back the same client works again
// and the subscription delivers again, without the app doing anything.
func TestRuntimeRestart(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			logs := &syncBuffer{}
			client.SetLogger(log.New(logs, "", 0))
			defer client.SetLogger(log.New(os.Stderr, "weft: ", log.LstdFlags))

			w := weftest.Start(t, weftest.Options{AppID: "go-restart"})
			c := connect(t, w, tr)
			ctx := ctxT(t)
			if err := c.SaveState(ctx, store, "k", []byte("before"), nil); err != nil {
				t.Fatal(err)
			}
			started := make(chan string, 16)
			release := make(chan struct{})
			svc := stream.NewService(c)
			err := svc.AddTopicHandler(pubsub, "jobs", func(ctx context.Context, e *common.TopicEvent) (bool, error) {
				started <- string(e.RawData)
				if string(e.RawData) == "block" {
					<-release
				}
				return false, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			go svc.Start()
			defer svc.Stop()
			<-svc.Ready()
			if err := c.PublishEvent(ctx, pubsub, "jobs", "block", client.PublishEventWithRawPayload()); err != nil {
				t.Fatal(err)
			}
			if got := <-started; got != "block" {
				t.Fatalf("first event %q", got)
			}

			w.Kill()
			// Fail fast, with a clear error.
			start := time.Now()
			_, err = c.GetState(ctx, store, "k", nil)
			if !errors.Is(err, client.ErrUnavailable) {
				t.Fatalf("call to a dead runtime: %v", err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("the call took %v to fail", el)
			}
			// The handler finishes now: its stream is gone, so no ack is sent.
			close(release)
			eventually(t, "the dropped ack to be reported", func() bool {
				return strings.Contains(logs.String(), "it is not acked and will be delivered again")
			})

			w.Restart()
			// Same client, no new connection by the app.
			eventually(t, "a call to succeed after the restart", func() bool {
				return c.SaveState(ctx, store, "k", []byte("after"), nil) == nil
			})
			it, err := c.GetState(ctx, store, "k", nil)
			if err != nil || string(it.Value) != "after" {
				t.Fatalf("after restart: %+v %v", it, err)
			}
			// The subscription came back by itself.
			deadline := time.After(30 * time.Second)
			for {
				if err := c.PublishEvent(ctx, pubsub, "jobs", "after", client.PublishEventWithRawPayload()); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-started:
					if got != "after" {
						t.Fatalf("after the restart the handler got %q", got)
					}
					return
				case <-time.After(500 * time.Millisecond):
				case <-deadline:
					t.Fatalf("the subscription did not resume; client log:\n%s", logs.String())
				}
			}
		})
	}
}

// TestUnfinishedEventIsRedelivered: two members of one consumer group; the
// one holding an event goes away before its handler finished, and the event
// goes to the other member — it was not acked on receipt.
func TestUnfinishedEventIsRedelivered(t *testing.T) {
	eachTransport(t, "go-group", func(t *testing.T, w *weftest.Weft, c0 *client.Client) {
		ctx := ctxT(t)
		clients := []*client.Client{c0, connect(t, w, client.Transport(c0.Transport()))}
		type got struct {
			member int
			offset int64
			part   int32
		}
		gotc := make(chan got, 16)
		block := make(chan struct{})
		defer close(block)
		closers := make([]func() error, 2)
		for i, c := range clients {
			i := i
			cl, err := c.SubscribeWithHandler(ctx, client.SubscriptionOptions{PubsubName: pubsub, Topic: "group", Metadata: map[string]string{"revokeTimeout": "200ms"}},
				func(e *common.TopicEvent) common.SubscriptionResponseStatus {
					gotc <- got{i, e.Offset, e.Partition}
					if i == 0 || len(gotc) > 100 {
						<-block
					}
					return common.SubscriptionResponseStatusSuccess
				})
			if err != nil {
				t.Fatal(err)
			}
			closers[i] = cl
		}
		// Publish keys until member 0 holds one.
		var first got
		for k := 0; ; k++ {
			if err := c0.PublishEvent(ctx, pubsub, "group", "x", client.PublishEventWithPartitionKey(strings.Repeat("k", k+1))); err != nil {
				t.Fatal(err)
			}
			g := <-gotc
			if g.member == 0 {
				first = g
				break
			}
			if k > 50 {
				t.Fatal("member 0 never got an event")
			}
		}
		// Member 0 leaves with its handler still running.
		_ = clients[0].Close()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case g := <-gotc:
				if g.member == 1 && g.part == first.part && g.offset == first.offset {
					return
				}
			case <-deadline:
				t.Fatalf("event %d/%d was not delivered again to the other member", first.part, first.offset)
			}
		}
	})
}
