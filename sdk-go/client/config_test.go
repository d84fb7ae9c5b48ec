package client_test

import (
	"bytes"
	"context"
	"errors"
	"log"
	"os"
	"strings"
	"testing"
	"time"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/internal/weftest"
)

const configstore = "configstore"

func TestConfiguration(t *testing.T) {
	eachTransport(t, "go-config", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx := ctxT(t)
		items, err := c.GetConfigurationItems(ctx, configstore, nil)
		if err != nil {
			t.Fatal(err)
		}
		if items["greeting"] == nil || items["greeting"].Value != "hello" || items["greeting"].Version != "1" {
			t.Fatalf("items %v", items)
		}
		one, err := c.GetConfigurationItem(ctx, configstore, "greeting")
		if err != nil || one.Value != "hello" {
			t.Fatalf("one item: %+v %v", one, err)
		}
		none, err := c.GetConfigurationItem(ctx, configstore, "absent")
		if err != nil || none != nil {
			t.Fatalf("absent item: %+v %v", none, err)
		}

		// A callback and a channel subscription on the same key.
		got := make(chan string, 16)
		id1, err := c.SubscribeConfigurationItems(ctx, configstore, []string{"greeting"}, func(id string, items map[string]*client.ConfigurationItem) {
			if it := items["greeting"]; it != nil {
				got <- id + "=" + it.Value
			}
		})
		if err != nil || id1 == "" {
			t.Fatalf("subscribe: %q %v", id1, err)
		}
		id2, ch, err := c.SubscribeConfigurationItemsChan(ctx, configstore, []string{"greeting"})
		if err != nil || id2 == "" || id2 == id1 {
			t.Fatalf("subscribe (channel): %q %v", id2, err)
		}
		if err := os.WriteFile(w.Config, []byte("greeting:\n  value: bonjour\n  version: \"2\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor := func(what string, ok func() bool) {
			deadline := time.After(20 * time.Second)
			for !ok() {
				select {
				case <-deadline:
					t.Fatalf("no %s", what)
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
		waitFor("callback", func() bool {
			select {
			case s := <-got:
				return s == id1+"=bonjour"
			default:
				return false
			}
		})
		waitFor("channel update", func() bool {
			select {
			case u := <-ch:
				return u.ID == id2 && u.Items["greeting"] != nil && u.Items["greeting"].Value == "bonjour"
			default:
				return false
			}
		})
		// Unsubscribing closes the channel.
		if err := c.UnsubscribeConfigurationItems(ctx, configstore, id2); err != nil {
			t.Fatal(err)
		}
		waitFor("channel close", func() bool {
			select {
			case _, open := <-ch:
				return !open
			default:
				return false
			}
		})
		if err := c.UnsubscribeConfigurationItems(ctx, configstore, id1); err != nil {
			t.Fatal(err)
		}
		err = c.UnsubscribeConfigurationItems(ctx, configstore, "no-such-id")
		if !errors.Is(err, client.ErrNotFound) {
			t.Fatal("unsubscribing an unknown id worked")
		}

		// Bad arguments, and an unknown store.
		var ae *client.ArgumentError
		if _, err := c.GetConfigurationItems(ctx, "", nil); !errors.As(err, &ae) || ae.Arg != "storeName" {
			t.Fatalf("no store: %v", err)
		}
		if _, err := c.GetConfigurationItem(ctx, configstore, ""); !errors.As(err, &ae) || ae.Arg != "key" {
			t.Fatalf("no key: %v", err)
		}
		if _, err := c.SubscribeConfigurationItems(ctx, configstore, nil, nil); !errors.As(err, &ae) || ae.Arg != "handler" {
			t.Fatalf("nil handler: %v", err)
		}
		if err := c.UnsubscribeConfigurationItems(ctx, configstore, ""); !errors.As(err, &ae) || ae.Arg != "id" {
			t.Fatalf("no id: %v", err)
		}
		if _, err := c.GetConfigurationItems(ctx, "nope", nil); !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("unknown store: %v", err)
		}
	})
}

func TestMetadataAndShutdown(t *testing.T) {
	eachTransport(t, "go-meta", func(t *testing.T, w *weftest.Weft, c *client.Client) {
		ctx := ctxT(t)
		md, err := c.GetMetadata(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if md.ID != "go-meta" || md.RuntimeVersion == "" {
			t.Fatalf("metadata %+v", md)
		}
		names := map[string]string{}
		for _, comp := range md.RegisteredComponents {
			names[comp.Name] = comp.Type
		}
		if names[store] != "state.in-memory" || names[pubsub] != "pubsub.embedded" {
			t.Fatalf("components %v", names)
		}
		if err := c.SetMetadata(ctx, "team", "go"); err != nil {
			t.Fatal(err)
		}
		md, _ = c.GetMetadata(ctx)
		if md.ExtendedMetadata["team"] != "go" {
			t.Fatalf("extended %v", md.ExtendedMetadata)
		}
		var ae *client.ArgumentError
		if err := c.SetMetadata(ctx, "", "x"); !errors.As(err, &ae) || ae.Arg != "key" {
			t.Fatalf("no key: %v", err)
		}
		if err := c.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.Exited():
		case <-time.After(20 * time.Second):
			t.Fatal("the runtime did not shut down")
		}
		// The runtime is gone: calls fail fast and say so.
		start := time.Now()
		_, err = c.GetState(ctx, store, "k", nil)
		if !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("after shutdown: %v", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("a call to a stopped runtime took %v", el)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetState(ctx, store, "k", nil); !errors.Is(err, client.ErrClosed) {
			t.Fatalf("after close: %v", err)
		}
	})
}

// TestTransportChoice: WEFT_TRANSPORT and the options pick the transport;
// auto falls back to gRPC with one log line saying why.
func TestTransportChoice(t *testing.T) {
	w := weftest.Start(t, weftest.Options{AppID: "go-choice"})
	ctx := context.Background()

	// auto, with the runtime found through WEFT_DATA_DIR and the app id.
	t.Setenv(client.EnvTransport, "")
	t.Setenv(client.EnvDataDir, w.DataDir)
	t.Setenv(client.EnvAppID, "go-choice")
	t.Setenv(client.EnvUDS, w.UDS)
	c, err := client.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	if c.Transport() != "shm" {
		t.Fatalf("auto chose %s", c.Transport())
	}
	c.Close()

	// auto without the app id: asked of the runtime over gRPC.
	t.Setenv(client.EnvAppID, "")
	c, err = client.NewClient()
	if err != nil || c.Transport() != "shm" {
		t.Fatalf("auto without app id: %v %v", c, err)
	}
	c.Close()

	t.Setenv(client.EnvTransport, "grpc")
	c, err = client.NewClient()
	if err != nil || c.Transport() != "grpc" {
		t.Fatalf("WEFT_TRANSPORT=grpc: %v", err)
	}
	c.Close()

	t.Setenv(client.EnvTransport, "carrier-pigeon")
	_, err = client.NewClient()
	var ae *client.ArgumentError
	if !errors.As(err, &ae) || ae.Arg != client.EnvTransport {
		t.Fatalf("bad WEFT_TRANSPORT: %v", err)
	}
	_, err = client.New(ctx, client.WithTransport("x"))
	if !errors.As(err, &ae) || ae.Arg != "WithTransport" {
		t.Fatalf("bad WithTransport: %v", err)
	}
	t.Setenv(client.EnvTransport, "")
	_, err = client.New(ctx, client.WithShmRingSize(5000))
	if !errors.As(err, &ae) || ae.Arg != "WithShmRingSize" {
		t.Fatalf("bad ring size: %v", err)
	}
	if _, err := client.NewClientWithPort(""); !errors.As(err, &ae) || ae.Arg != "port" {
		t.Fatalf("empty port: %v", err)
	}

	// A runtime without shared memory: auto says why and uses gRPC; shm
	// refuses.
	t.Setenv(client.EnvTransport, "")
	t.Setenv(client.EnvDataDir, "")
	noShm := weftest.Start(t, weftest.Options{AppID: "go-noshm", Args: []string{"--no-shm"}})
	var buf bytes.Buffer
	client.SetLogger(log.New(&buf, "", 0))
	defer client.SetLogger(log.New(os.Stderr, "weft: ", log.LstdFlags))
	c, err = client.New(ctx, client.WithSocket(noShm.UDS), client.WithShmSocket(noShm.Shm), client.WithAppID("go-noshm"))
	if err != nil || c.Transport() != "grpc" {
		t.Fatalf("auto against --no-shm: %v", err)
	}
	if !strings.Contains(buf.String(), "using gRPC") || !strings.Contains(buf.String(), noShm.Shm) {
		t.Fatalf("log: %q", buf.String())
	}
	if _, err := c.GetState(ctx, store, "k", nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = client.New(ctx, client.WithTransport(client.TransportShm), client.WithSocket(noShm.UDS), client.WithShmSocket(noShm.Shm), client.WithAppID("go-noshm"))
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "shared memory requested") {
		t.Fatalf("shm against --no-shm: %v", err)
	}
	// A wrong app id is refused by the runtime, with its reason.
	_, err = client.New(ctx, client.WithTransport(client.TransportShm), client.WithShmSocket(w.Shm), client.WithAppID("someone-else"))
	if err == nil || !strings.Contains(err.Error(), "someone-else") && !strings.Contains(err.Error(), "app id") {
		t.Fatalf("wrong app id: %v", err)
	}
	// Nothing listening: New fails within its timeout.
	_, err = client.New(ctx, client.WithTransport(client.TransportGRPC), client.WithAddress("127.0.0.1:1"), client.WithConnectTimeout(300*time.Millisecond))
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("no runtime: %v", err)
	}
}
