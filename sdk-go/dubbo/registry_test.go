package dubbo_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"weft.dev/sdk-go/dubbo"
	"weft.dev/sdk-go/internal/weftest"
)

func proxyOf(w *weftest.Weft, opts ...dubbo.Option) *dubbo.RegistryProxy {
	return dubbo.NewRegistryProxy(fmt.Sprintf("127.0.0.1:%d", w.HTTPPort), opts...)
}

func refusal(t *testing.T, err error, op, want string) {
	t.Helper()
	var e *dubbo.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: want a *dubbo.Error mentioning %q, got %v", op, want, err)
	}
	if e.Op != op || !strings.Contains(e.Message, want) {
		t.Fatalf("%s: want a refusal mentioning %q, got %v", op, want, e)
	}
}

// Bad requests are refused by the runtime, naming the field; no
// registry is needed for that.
func TestRefusalsNameTheField(t *testing.T) {
	w := weftest.Start(t, weftest.Options{AppID: "go-dubbo-bad"})
	r := proxyOf(w)
	ctx := context.Background()
	zk := dubbo.ZooKeeper("127.0.0.1:1")
	refusal(t, r.Publish(ctx, zk, dubbo.Service{Interface: "a.B"}), "/pub", "service.methods")
	refusal(t, r.Publish(ctx, zk, dubbo.Service{Methods: []string{"m"}}), "/pub", "service.interface")
	refusal(t, r.Subscribe(ctx, dubbo.Registry{Type: "nacos", Addr: "x:1"}, dubbo.Service{Interface: "a.B", Methods: []string{"m"}}), "/sub", "registry.type 'nacos'")
	refusal(t, r.Unsubscribe(ctx, zk, dubbo.Service{Interface: "a.B", Methods: []string{"m"}}), "/unsub", "not subscribed")

	// The API token applies.
	tw := weftest.Start(t, weftest.Options{AppID: "go-dubbo-token", Args: []string{"--api-token", "tok"}})
	err := proxyOf(tw, dubbo.WithAPIToken("")).Unpublish(ctx, zk, dubbo.Service{Interface: "a.B", Methods: []string{"m"}})
	var e *dubbo.Error
	if !errors.As(err, &e) || e.Status != 401 {
		t.Fatalf("without the token: want HTTP 401, got %v", err)
	}
	refusal(t, proxyOf(tw, dubbo.WithAPIToken("tok")).Unpublish(ctx, zk, dubbo.Service{Interface: "a.B", Methods: []string{"m"}}), "/unpub", "not published")
}

// Publish, subscribe and their withdrawals against the test ZooKeeper
// ($WEFT_TEST_ZK_SERVERS, from scripts/services.sh env).
func TestPublishAndSubscribeThroughTheRuntime(t *testing.T) {
	servers := os.Getenv("WEFT_TEST_ZK_SERVERS")
	if servers == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("WEFT_TEST_ZK_SERVERS is not set under CI (scripts/services.sh env)")
		}
		t.Skip("WEFT_TEST_ZK_SERVERS is not set: start ZooKeeper (scripts/services.sh start zookeeper) and export its environment")
	}
	w := weftest.Start(t, weftest.Options{AppID: "go-dubbo"})
	r := proxyOf(w)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := dubbo.ZooKeeper(servers)
	reg.Group = fmt.Sprintf("weft-go-dubbo-%d", time.Now().UnixNano())
	svc := dubbo.Service{Interface: "dev.weft.go.Users", Methods: []string{"GetUser", "ListUsers"}, Version: "1.0.0", Port: 20000}

	if err := r.Publish(ctx, reg, svc); err != nil {
		t.Fatalf("publish: %v\n%s", err, w.Logs())
	}
	// Subscribing reads the providers: our own is among them.
	sub := svc
	sub.Version, sub.Port = "", 0
	if err := r.Subscribe(ctx, reg, sub); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if err := r.Unsubscribe(ctx, reg, sub); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	refusal(t, r.Unsubscribe(ctx, reg, sub), "/unsub", "not subscribed")
	if err := r.Unpublish(ctx, reg, svc); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	refusal(t, r.Unpublish(ctx, reg, svc), "/unpub", "not published")
}
