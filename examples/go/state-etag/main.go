// Command state-etag saves an order, updates it with the etag it read
// (first-write concurrency), and shows a stale etag being refused with
// client.ErrETagMismatch — over shared memory when the runtime offers it.
//
//	examples/go/run.sh state-etag
package main

import (
	"context"
	"errors"
	"fmt"
	"log"

	"weft.dev/sdk-go/client"
)

func main() {
	ctx := context.Background()
	c, err := client.NewClient() // WEFT_TRANSPORT, WEFT_SHM_SOCKET, WEFT_APP_ID, DAPR_GRPC_PORT …
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("transport:", c.Transport())

	const store = "statestore"
	if err := c.SaveState(ctx, store, "order-1", []byte(`{"qty":1}`), nil); err != nil {
		log.Fatal(err)
	}
	item, err := c.GetState(ctx, store, "order-1", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("read %s (etag %s)\n", item.Value, item.Etag)

	firstWrite := client.WithConcurrency(client.StateConcurrencyFirstWrite)
	if err := c.SaveStateWithETag(ctx, store, "order-1", []byte(`{"qty":2}`), item.Etag, nil, firstWrite); err != nil {
		log.Fatal(err)
	}
	fmt.Println("updated with the etag it read")

	// Someone who read before that update still holds the old etag.
	err = c.SaveStateWithETag(ctx, store, "order-1", []byte(`{"qty":99}`), item.Etag, nil, firstWrite)
	switch {
	case errors.Is(err, client.ErrETagMismatch):
		fmt.Println("stale etag refused:", err)
	case err == nil:
		log.Fatal("a stale etag was accepted")
	default:
		log.Fatal(err)
	}
	now, err := c.GetState(ctx, store, "order-1", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("order-1 is %s (etag %s)\n", now.Value, now.Etag)
}
