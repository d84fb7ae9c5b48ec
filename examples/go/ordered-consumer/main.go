// Command ordered-consumer publishes keyed events and consumes them in
// order per key with a handler that asks for some of them again (RETRY):
// the runtime redelivers in order, and the handler sees each event's
// partition, offset and attempt.
//
//	examples/go/run.sh ordered-consumer
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"sync"
	"time"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/service/common"
)

type event struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("transport:", c.Transport())

	const keys, perKey = 3, 5
	var mu sync.Mutex
	next := map[string]int{}
	done := make(chan struct{})
	acked := 0
	stop, err := c.SubscribeWithHandler(ctx, client.SubscriptionOptions{
		PubsubName: "pubsub", Topic: "orders",
		Metadata: map[string]string{"retryBackoff": "50ms"},
	}, func(e *common.TopicEvent) common.SubscriptionResponseStatus {
		var ev event
		if err := e.Struct(&ev); err != nil {
			return common.SubscriptionResponseStatusDrop
		}
		mu.Lock()
		defer mu.Unlock()
		if ev.Seq == 2 && e.Attempt == 0 {
			fmt.Printf("  %s #%d  partition %d offset %d attempt %d -> RETRY\n", ev.Key, ev.Seq, e.Partition, e.Offset, e.Attempt)
			return common.SubscriptionResponseStatusRetry
		}
		if next[ev.Key] != ev.Seq {
			log.Fatalf("%s: got #%d, expected #%d", ev.Key, ev.Seq, next[ev.Key])
		}
		next[ev.Key]++
		fmt.Printf("  %s #%d  partition %d offset %d attempt %d -> SUCCESS\n", ev.Key, ev.Seq, e.Partition, e.Offset, e.Attempt)
		if acked++; acked == keys*perKey {
			close(done)
		}
		return common.SubscriptionResponseStatusSuccess
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	for s := 0; s < perKey; s++ {
		for k := 0; k < keys; k++ {
			key := fmt.Sprintf("customer-%d", k)
			data, _ := json.Marshal(event{Key: key, Seq: s})
			if err := c.PublishEvent(ctx, "pubsub", "orders", data,
				client.PublishEventWithContentType("application/json"),
				client.PublishEventWithPartitionKey(key)); err != nil {
				log.Fatal(err)
			}
		}
	}
	select {
	case <-done:
		fmt.Printf("all %d events handled in order per key\n", keys*perKey)
	case <-ctx.Done():
		log.Fatal("timed out")
	}
}
