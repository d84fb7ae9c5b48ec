// Command daprleg is the official Dapr Go SDK's leg of the benchmark, in a
// process of its own (the SDK's generated protobuf types and sdk-go's
// register the same message names, so one binary cannot link both). It
// prints one JSON result.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	dapr "github.com/dapr/go-sdk/client"

	"weft.dev/sdk-go/bench/internal/lat"
)

func main() {
	socket := flag.String("socket", "", "the runtime's --uds socket")
	store := flag.String("store", "statestore", "state store")
	key := flag.String("key", "bench", "key to read")
	conc := flag.Int("conc", 1, "goroutines")
	warm := flag.Duration("warmup", time.Second, "warm-up")
	dur := flag.Duration("duration", 3*time.Second, "measured time")
	flag.Parse()
	dapr.SetLogger(nil)
	c, err := dapr.NewClientWithSocket(*socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	it, err := c.GetState(ctx, *store, *key, nil)
	if err != nil || len(it.Value) == 0 {
		log.Fatalf("GetState before measuring: %v (value %d bytes)", err, len(it.Value))
	}
	r := lat.Run(*conc, *warm, *dur, func() error {
		_, err := c.GetState(ctx, *store, *key, nil)
		return err
	})
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
