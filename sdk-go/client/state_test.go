package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/weftest"
)

const store = "statestore"

func TestState(t *testing.T) {
	eachTransport(t, "go-state", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx := ctxT(t)

		// Save, read back.
		if err := c.SaveState(ctx, store, "order-1", []byte(`{"qty":3}`), nil); err != nil {
			t.Fatal(err)
		}
		it, err := c.GetState(ctx, store, "order-1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(it.Value) != `{"qty":3}` || it.Etag == "" || it.Key != "order-1" {
			t.Fatalf("got %+v", it)
		}
		// A missing key is empty, not an error.
		miss, err := c.GetState(ctx, store, "nothing-here", nil)
		if err != nil || miss.Value != nil || miss.Etag != "" {
			t.Fatalf("missing key: %+v %v", miss, err)
		}
		if _, err := c.GetStateWithConsistency(ctx, store, "order-1", nil, client.StateConsistencyEventual); err != nil {
			t.Fatal(err)
		}

		// First-write: the right etag wins, a stale one is ErrETagMismatch.
		first := client.WithConcurrency(client.StateConcurrencyFirstWrite)
		if err := c.SaveStateWithETag(ctx, store, "order-1", []byte("v2"), it.Etag, nil, first); err != nil {
			t.Fatalf("save with the current etag: %v", err)
		}
		err = c.SaveStateWithETag(ctx, store, "order-1", []byte("v3"), it.Etag, nil, first)
		if !errors.Is(err, client.ErrETagMismatch) {
			t.Fatalf("stale etag: %v", err)
		}
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != codes.Aborted || ce.Op != "SaveStateWithETag" || ce.Transport != c.Transport() {
			t.Fatalf("stale etag error: %#v", err)
		}
		if s, ok := status.FromError(err); !ok || s.Code() != codes.Aborted {
			t.Fatalf("status.FromError: %v %v", s, ok)
		}
		// First-write on a new key without etag creates it; a second one fails.
		if err := c.SaveState(ctx, store, "fresh", []byte("a"), nil, first); err != nil {
			t.Fatal(err)
		}
		cur, _ := c.GetState(ctx, store, "order-1", nil)
		if string(cur.Value) != "v2" {
			t.Fatalf("value after the etag race: %q", cur.Value)
		}
		// Last-write ignores the etag.
		if err := c.SaveStateWithETag(ctx, store, "order-1", []byte("v4"), "not-the-etag", nil, client.WithConcurrency(client.StateConcurrencyLastWrite)); err != nil {
			t.Fatalf("last-write with a stale etag: %v", err)
		}

		// Bulk.
		items := []*client.SetStateItem{}
		keys := []string{}
		for i := 0; i < 5; i++ {
			k := fmt.Sprintf("bulk-%d", i)
			keys = append(keys, k)
			items = append(items, &client.SetStateItem{Key: k, Value: []byte(k)})
		}
		if err := c.SaveBulkState(ctx, store, items...); err != nil {
			t.Fatal(err)
		}
		got, err := c.GetBulkState(ctx, store, append(keys, "bulk-missing"), nil, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 6 {
			t.Fatalf("bulk get returned %d items", len(got))
		}
		for _, g := range got {
			if g.Key != "bulk-missing" && (string(g.Value) != g.Key || g.Etag == "") {
				t.Fatalf("bulk item %+v", g)
			}
		}
		if err := c.DeleteBulkState(ctx, store, keys[:2], nil); err != nil {
			t.Fatal(err)
		}
		b2, _ := c.GetState(ctx, store, "bulk-2", nil)
		if err := c.DeleteBulkStateItems(ctx, store, []*client.DeleteStateItem{{Key: "bulk-2", Etag: &client.ETag{Value: b2.Etag}}}); err != nil {
			t.Fatal(err)
		}
		left, _ := c.GetBulkState(ctx, store, keys, nil, 0)
		for _, g := range left {
			if (g.Key == "bulk-0" || g.Key == "bulk-1" || g.Key == "bulk-2") && g.Value != nil {
				t.Fatalf("%s survived its delete", g.Key)
			}
		}

		// Delete with etag: stale fails, current works.
		cur, _ = c.GetState(ctx, store, "order-1", nil)
		err = c.DeleteStateWithETag(ctx, store, "order-1", &client.ETag{Value: "999999"}, nil, &client.StateOptions{Concurrency: client.StateConcurrencyFirstWrite})
		if !errors.Is(err, client.ErrETagMismatch) {
			t.Fatalf("delete with a stale etag: %v", err)
		}
		if err := c.DeleteStateWithETag(ctx, store, "order-1", &client.ETag{Value: cur.Etag}, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteState(ctx, store, "fresh", nil); err != nil {
			t.Fatal(err)
		}

		// Transactions: all or nothing.
		if err := c.ExecuteStateTransaction(ctx, store, nil, []*client.StateOperation{
			{Type: client.StateOperationTypeUpsert, Item: &client.SetStateItem{Key: "tx-a", Value: []byte("A")}},
			{Type: client.StateOperationTypeUpsert, Item: &client.SetStateItem{Key: "tx-b", Value: []byte("B")}},
			{Type: client.StateOperationTypeDelete, Item: &client.SetStateItem{Key: "bulk-3"}},
		}); err != nil {
			t.Fatal(err)
		}
		a, _ := c.GetState(ctx, store, "tx-a", nil)
		b3, _ := c.GetState(ctx, store, "bulk-3", nil)
		if string(a.Value) != "A" || b3.Value != nil {
			t.Fatalf("after the transaction: tx-a=%q bulk-3=%q", a.Value, b3.Value)
		}
		err = c.ExecuteStateTransaction(ctx, store, nil, []*client.StateOperation{
			{Type: client.StateOperationTypeUpsert, Item: &client.SetStateItem{Key: "tx-a", Value: []byte("A2")}},
			{Type: client.StateOperationTypeUpsert, Item: &client.SetStateItem{Key: "tx-b", Value: []byte("B2"), Etag: &client.ETag{Value: "999999"}, Options: &client.StateOptions{Concurrency: client.StateConcurrencyFirstWrite}}},
		})
		if !errors.Is(err, client.ErrETagMismatch) && !errors.Is(err, client.ErrInvalidArgument) {
			t.Fatalf("a transaction with a stale etag: %v", err)
		}
		a, _ = c.GetState(ctx, store, "tx-a", nil)
		if string(a.Value) != "A" {
			t.Fatalf("a failed transaction wrote tx-a=%q", a.Value)
		}

		// TTL: the item reports its expiry, then is gone.
		if err := c.SaveState(ctx, store, "ttl", []byte("soon gone"), map[string]string{client.MetadataTTLInSeconds: "1"}); err != nil {
			t.Fatal(err)
		}
		tt, err := c.GetState(ctx, store, "ttl", nil)
		if err != nil || string(tt.Value) != "soon gone" || tt.Metadata["ttlExpireTime"] == "" {
			t.Fatalf("ttl item: %+v %v", tt, err)
		}
		eventually(t, "the ttl item to expire", func() bool {
			it, err := c.GetState(ctx, store, "ttl", nil)
			return err == nil && it.Value == nil
		})

		// An unknown store: the runtime's error names it.
		_, err = c.GetState(ctx, "nope", "k", nil)
		if !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("unknown store: %v", err)
		}
		err = c.SaveState(ctx, store, "ttl", []byte("x"), map[string]string{client.MetadataTTLInSeconds: "soon"})
		if !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "ttlInSeconds") {
			t.Fatalf("bad ttl: %v", err)
		}
	})
}

func TestStateBadArguments(t *testing.T) {
	w := weftest.Start(t, weftest.Options{AppID: "go-state-args"})
	c := connect(t, w, client.TransportShm)
	ctx := ctxT(t)
	var nilCtx context.Context
	cases := map[string]struct {
		err error
		arg string
	}{}
	add := func(name, arg string, err error) {
		cases[name] = struct {
			err error
			arg string
		}{err, arg}
	}
	_, e := c.GetState(ctx, "", "k", nil)
	add("GetState store", "storeName", e)
	_, e = c.GetState(ctx, store, "", nil)
	add("GetState key", "key", e)
	_, e = c.GetState(nilCtx, store, "k", nil)
	add("GetState ctx", "ctx", e)
	_, e = c.GetStateWithConsistency(ctx, store, "k", nil, 7)
	add("GetStateWithConsistency", "sc", e)
	add("SaveState store", "storeName", c.SaveState(ctx, "", "k", nil, nil))
	add("SaveState key", "key", c.SaveState(ctx, store, "", nil, nil))
	add("SaveBulkState empty", "items", c.SaveBulkState(ctx, store))
	add("SaveBulkState nil item", "items[0]", c.SaveBulkState(ctx, store, nil))
	add("SaveBulkState no key", "items[1].Key", c.SaveBulkState(ctx, store, &client.SetStateItem{Key: "a"}, &client.SetStateItem{}))
	add("SaveBulkState concurrency", "items[0].Options.Concurrency", c.SaveBulkState(ctx, store, &client.SetStateItem{Key: "a", Options: &client.StateOptions{Concurrency: 9}}))
	_, e = c.GetBulkState(ctx, store, nil, nil, 0)
	add("GetBulkState keys", "keys", e)
	_, e = c.GetBulkState(ctx, store, []string{"a", ""}, nil, 0)
	add("GetBulkState empty key", "keys[1]", e)
	_, e = c.GetBulkState(ctx, store, []string{"a"}, nil, -1)
	add("GetBulkState parallelism", "parallelism", e)
	add("DeleteState key", "key", c.DeleteState(ctx, store, "", nil))
	add("DeleteBulkState keys", "keys", c.DeleteBulkState(ctx, store, nil, nil))
	add("DeleteBulkStateItems", "items", c.DeleteBulkStateItems(ctx, store, nil))
	add("ExecuteStateTransaction ops", "ops", c.ExecuteStateTransaction(ctx, store, nil, nil))
	add("ExecuteStateTransaction type", "ops[0].Type", c.ExecuteStateTransaction(ctx, store, nil, []*client.StateOperation{{Type: 5, Item: &client.SetStateItem{Key: "a"}}}))
	add("ExecuteStateTransaction item", "ops[0].Item", c.ExecuteStateTransaction(ctx, store, nil, []*client.StateOperation{{Type: client.StateOperationTypeUpsert}}))
	for name, tc := range cases {
		var ae *client.ArgumentError
		if !errors.As(tc.err, &ae) || ae.Arg != tc.arg || !errors.Is(tc.err, client.ErrInvalidArgument) {
			t.Errorf("%s: want an ArgumentError naming %s, got %v", name, tc.arg, tc.err)
		}
	}
	// A body larger than half the request ring is refused locally, naming
	// the limit.
	big := bytes.Repeat([]byte("x"), 600<<10)
	err := c.SaveState(ctx, store, "big", big, nil)
	if !errors.Is(err, client.ErrResourceExhausted) || !strings.Contains(err.Error(), "half the request ring") {
		t.Fatalf("oversized request: %v", err)
	}
	// The session is still good.
	if err := c.SaveState(ctx, store, "small", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentCalls shares one client among goroutines on both
// transports.
func TestConcurrentCalls(t *testing.T) {
	eachTransport(t, "go-concurrent", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx := ctxT(t)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					k := fmt.Sprintf("g%d-%d", g, i%10)
					v := []byte(fmt.Sprintf("%d", i))
					if err := c.SaveState(ctx, store, k, v, nil); err != nil {
						errs <- err
						return
					}
					it, err := c.GetState(ctx, store, k, nil)
					if err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(it.Value, v) {
						errs <- fmt.Errorf("%s: read %q after writing %q", k, it.Value, v)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
}

// TestDeadlineBeforeSend: a context that is already over fails at once with
// an error that is context.DeadlineExceeded.
func TestDeadlineBeforeSend(t *testing.T) {
	eachTransport(t, "go-deadline", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		_, err := c.GetState(ctx, store, "k", nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("expired context: %v", err)
		}
		cctx, cancel2 := context.WithCancel(context.Background())
		cancel2()
		_, err = c.GetState(cctx, store, "k", nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled context: %v", err)
		}
	})
}
