// Command peerleg is the Dapr Go SDK side of the peer benchmark (see
// ../main.go): every client leg that uses the official Dapr Go SDK, and the
// app that sits behind the called sidecar. It runs as a child process of the
// peer benchmark, because the Dapr SDK's generated protobuf types and
// sdk-go's register the same message names, so one binary cannot link both.
//
// Modes (first argument):
//
//	state    closed-loop GetState / SaveState through a sidecar's gRPC port
//	invoke   InvokeService through a sidecar, or OnInvoke on the app directly;
//	         open loop at a fixed rate, or closed loop with N callers
//	publish  PublishEvent of keyed, numbered events through a sidecar
//	app      an AppCallback server: OnInvoke echoes, OnTopicEvent records
//	         (key, sequence) and counts order violations per key; a small
//	         HTTP control port resets and reports its counters
//
// Measuring modes print the line "start" when the measured phase begins
// (so the parent can sample the sidecar's CPU over exactly that phase) and
// one JSON result line when it ends.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	commonv1pb "github.com/dapr/dapr/pkg/proto/common/v1"
	runtimev1pb "github.com/dapr/dapr/pkg/proto/runtime/v1"
	dapr "github.com/dapr/go-sdk/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"weft.dev/sdk-go/bench/internal/lat"
)

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: peerleg state|invoke|publish|app [flags]")
	}
	log.SetPrefix("peerleg " + os.Args[1] + ": ")
	log.SetFlags(0)
	dapr.SetLogger(nil)
	args := os.Args[2:]
	switch os.Args[1] {
	case "state":
		stateMode(args)
	case "invoke":
		invokeMode(args)
	case "publish":
		publishMode(args)
	case "app":
		appMode(args)
	default:
		log.Fatalf("unknown mode %q", os.Args[1])
	}
}

func emit(v any) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		log.Fatal(err)
	}
}

func dial(addr string) dapr.Client {
	var c dapr.Client
	var err error
	for i := 0; i < 50; i++ {
		c, err = dapr.NewClientWithAddress(addr)
		if err == nil {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Fatalf("connect %s: %v", addr, err)
	return nil
}

// === state ===

func stateMode(args []string) {
	fs := flag.NewFlagSet("state", flag.ExitOnError)
	addr := fs.String("addr", "", "sidecar gRPC address host:port")
	store := fs.String("store", "statestore", "state store")
	op := fs.String("op", "get", "get or save")
	conc := fs.Int("conc", 1, "closed-loop callers sharing one client")
	size := fs.Int("size", 100, "value size in bytes")
	keys := fs.Int("keys", 100, "keys cycled over")
	warm := fs.Duration("warmup", time.Second, "warm-up")
	dur := fs.Duration("duration", 3*time.Second, "measured time")
	_ = fs.Parse(args)
	c := dial(*addr)
	defer c.Close()
	ctx := context.Background()
	val := make([]byte, *size)
	for i := range val {
		val[i] = byte('a' + i%26)
	}
	names := make([]string, *keys)
	for i := range names {
		names[i] = "peer-key-" + strconv.Itoa(i)
		if err := c.SaveState(ctx, *store, names[i], val, nil); err != nil {
			log.Fatalf("seeding %s: %v", names[i], err)
		}
	}
	var n atomic.Uint64
	var f func() error
	switch *op {
	case "get":
		f = func() error {
			it, err := c.GetState(ctx, *store, names[n.Add(1)%uint64(*keys)], nil)
			if err == nil && len(it.Value) != *size {
				return fmt.Errorf("read %d bytes", len(it.Value))
			}
			return err
		}
	case "save":
		f = func() error {
			return c.SaveState(ctx, *store, names[n.Add(1)%uint64(*keys)], val, nil)
		}
	default:
		log.Fatalf("-op %q", *op)
	}
	lat.Run(*conc, 0, *warm, f)
	fmt.Println("start")
	emit(lat.Run(*conc, 0, *dur, f))
}

// === invoke ===

func invokeMode(args []string) {
	fs := flag.NewFlagSet("invoke", flag.ExitOnError)
	addr := fs.String("addr", "", "sidecar gRPC address (InvokeService through it)")
	direct := fs.String("direct", "", "app address: call its OnInvoke directly instead")
	appID := fs.String("app-id", "peer-b", "target app id")
	rate := fs.Int("rate", 0, "open loop: calls per second (0: closed loop)")
	conc := fs.Int("conc", 16, "closed loop: callers, each with its own connection")
	size := fs.Int("size", 1024, "body bytes")
	warm := fs.Duration("warmup", time.Second, "warm-up")
	dur := fs.Duration("duration", 5*time.Second, "measured time")
	_ = fs.Parse(args)
	body := make([]byte, *size)
	for i := range body {
		body[i] = byte(i)
	}
	nconn := 1
	if *rate == 0 {
		nconn = *conc
	}
	calls := make([]func() error, nconn)
	for i := range calls {
		calls[i] = invoker(*addr, *direct, *appID, body)
	}
	if *rate > 0 {
		lat.OpenLoop(calls[0], *rate, *warm)
		fmt.Println("start")
		emit(lat.OpenLoop(calls[0], *rate, *dur))
		return
	}
	// Closed loop: the callers take the connections in turn.
	var next atomic.Uint64
	run := func(d time.Duration) lat.Result {
		return lat.Run(*conc, 0, d, func() error {
			return calls[next.Add(1)%uint64(nconn)]()
		})
	}
	run(*warm)
	fmt.Println("start")
	r := run(*dur)
	emit(r.Open())
}

func invoker(addr, direct, appID string, body []byte) func() error {
	ctx := context.Background()
	if direct != "" {
		conn, err := grpc.NewClient(direct, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			log.Fatal(err)
		}
		cb := runtimev1pb.NewAppCallbackClient(conn)
		req := &commonv1pb.InvokeRequest{
			Method:        "echo",
			Data:          &anypb.Any{Value: body},
			ContentType:   "application/octet-stream",
			HttpExtension: &commonv1pb.HTTPExtension{Verb: commonv1pb.HTTPExtension_POST},
		}
		return func() error {
			resp, err := cb.OnInvoke(ctx, req)
			if err == nil && len(resp.GetData().GetValue()) != len(body) {
				return fmt.Errorf("echo returned %d bytes", len(resp.GetData().GetValue()))
			}
			return err
		}
	}
	c := dial(addr)
	content := &dapr.DataContent{ContentType: "application/octet-stream", Data: body}
	return func() error {
		out, err := c.InvokeMethodWithContent(ctx, appID, "echo", "post", content)
		if err == nil && len(out) != len(body) {
			return fmt.Errorf("echo returned %d bytes", len(out))
		}
		return err
	}
}

// === publish ===

// PublishResult: when publishing started and ended (Unix ns), and errors.
type PublishResult struct {
	Events  int    `json:"events"`
	StartNs int64  `json:"start_ns"`
	EndNs   int64  `json:"end_ns"`
	Errors  int    `json:"errors"`
	FirstEr string `json:"first_error,omitempty"`
}

// Event is the payload: its ordering key and its sequence number within
// that key.
type Event struct {
	K string `json:"k"`
	S int    `json:"s"`
}

func publishMode(args []string) {
	fs := flag.NewFlagSet("publish", flag.ExitOnError)
	addr := fs.String("addr", "", "sidecar gRPC address")
	pubsub := fs.String("pubsub", "pubsub", "pub/sub component")
	topic := fs.String("topic", "orders", "topic")
	n := fs.Int("n", 10000, "events")
	keys := fs.Int("keys", 1, "ordering keys; each is published by one goroutine, in sequence")
	pubs := fs.Int("publishers", 1, "publishing goroutines (keys are split among them)")
	batch := fs.Int("batch", 1, "events per call: above 1, BulkPublishEvent of that many consecutive events of one publisher")
	_ = fs.Parse(args)
	if *pubs > *keys {
		*pubs = *keys
	}
	c := dial(*addr)
	defer c.Close()
	ctx := context.Background()
	// Warm the connection up (the subscriber resets its counters after this).
	if err := c.PublishEvent(ctx, *pubsub, "warmup", []byte(`{}`)); err != nil {
		log.Fatalf("warm-up publish: %v", err)
	}
	fmt.Println("start")
	var wg sync.WaitGroup
	var errs atomic.Int64
	var first atomic.Value
	start := time.Now()
	for p := 0; p < *pubs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			seq := map[int]int{}
			// Publisher p owns keys p, p+pubs, p+2*pubs, …; it sends
			// event j of its share to key owned[j % len(owned)].
			var owned []int
			for k := p; k < *keys; k += *pubs {
				owned = append(owned, k)
			}
			count := *n / *pubs
			if p < *n%*pubs {
				count++
			}
			fail := func(err error) {
				if errs.Add(1) == 1 {
					first.Store(err.Error())
				}
			}
			var bulk []interface{}
			for j := 0; j < count; j++ {
				k := owned[j%len(owned)]
				key := "k" + strconv.Itoa(k)
				b, _ := json.Marshal(Event{K: key, S: seq[k]})
				seq[k]++
				if *batch > 1 {
					// One key per publisher in this mode (-keys = -publishers).
					bulk = append(bulk, b)
					if len(bulk) == *batch || j == count-1 {
						r := c.PublishEvents(ctx, *pubsub, *topic, bulk,
							dapr.PublishEventsWithContentType("application/json"),
							dapr.PublishEventsWithMetadata(map[string]string{"partitionKey": key}))
						if r.Error != nil {
							fail(r.Error)
						}
						bulk = bulk[:0]
					}
					continue
				}
				err := c.PublishEvent(ctx, *pubsub, *topic, b,
					dapr.PublishEventWithContentType("application/json"),
					dapr.PublishEventWithMetadata(map[string]string{"partitionKey": key}))
				if err != nil {
					fail(err)
				}
			}
		}(p)
	}
	wg.Wait()
	r := PublishResult{Events: *n, StartNs: start.UnixNano(), EndNs: time.Now().UnixNano(), Errors: int(errs.Load())}
	if s, ok := first.Load().(string); ok {
		r.FirstEr = s
	}
	emit(r)
}

// === app ===

// AppStats is what the app's control port reports.
type AppStats struct {
	Received   int   `json:"received"`
	Violations int   `json:"violations"` // an event whose sequence is not the next one of its key
	Reordered  int   `json:"reordered"`  // an event older than one already seen on its key
	Keys       int   `json:"keys"`
	FirstNs    int64 `json:"first_ns"`
	LastNs     int64 `json:"last_ns"`
	Invokes    int64 `json:"invokes"`
	BadEvents  int   `json:"bad_events"`
}

type app struct {
	runtimev1pb.UnimplementedAppCallbackServer
	pubsub, topic string
	meta          map[string]string
	invokes       atomic.Int64
	mu            sync.Mutex
	st            AppStats
	next          map[string]int // next expected sequence per key
}

func (a *app) OnInvoke(_ context.Context, in *commonv1pb.InvokeRequest) (*commonv1pb.InvokeResponse, error) {
	a.invokes.Add(1)
	return &commonv1pb.InvokeResponse{Data: &anypb.Any{Value: in.GetData().GetValue()}, ContentType: in.GetContentType()}, nil
}

func (a *app) ListTopicSubscriptions(context.Context, *emptypb.Empty) (*runtimev1pb.ListTopicSubscriptionsResponse, error) {
	return &runtimev1pb.ListTopicSubscriptionsResponse{Subscriptions: []*runtimev1pb.TopicSubscription{
		{PubsubName: a.pubsub, Topic: a.topic, Metadata: a.meta},
		{PubsubName: a.pubsub, Topic: "warmup", Metadata: a.meta},
	}}, nil
}

func (a *app) OnTopicEvent(_ context.Context, ev *runtimev1pb.TopicEventRequest) (*runtimev1pb.TopicEventResponse, error) {
	ok := &runtimev1pb.TopicEventResponse{Status: runtimev1pb.TopicEventResponse_SUCCESS}
	if ev.GetTopic() != a.topic {
		return ok, nil
	}
	var e Event
	err := json.Unmarshal(ev.GetData(), &e)
	now := time.Now().UnixNano()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil || e.K == "" {
		a.st.BadEvents++
		return ok, nil
	}
	if a.st.Received == 0 {
		a.st.FirstNs = now
	}
	a.st.Received++
	a.st.LastNs = now
	want, seen := a.next[e.K]
	if !seen {
		a.st.Keys++
	}
	if e.S != want {
		a.st.Violations++
	}
	if e.S < want {
		a.st.Reordered++
	}
	a.next[e.K] = max(want, e.S+1)
	return ok, nil
}

func appMode(args []string) {
	fs := flag.NewFlagSet("app", flag.ExitOnError)
	port := fs.Int("port", 0, "AppCallback gRPC port")
	ctl := fs.Int("ctl", 0, "HTTP control port (/reset, /stats)")
	pubsub := fs.String("pubsub", "pubsub", "pub/sub component to subscribe on")
	topic := fs.String("topic", "orders", "topic")
	meta := fs.String("sub-meta", "", "subscription metadata k=v,k=v")
	_ = fs.Parse(args)
	a := &app{pubsub: *pubsub, topic: *topic, meta: map[string]string{}, next: map[string]int{}}
	for _, kv := range strings.Split(*meta, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			a.meta[k] = v
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(*port))
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	runtimev1pb.RegisterAppCallbackServer(s, a)
	http.HandleFunc("/reset", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		a.st = AppStats{}
		a.next = map[string]int{}
		a.mu.Unlock()
		a.invokes.Store(0)
		w.WriteHeader(204)
	})
	http.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		st := a.st
		a.mu.Unlock()
		st.Invokes = a.invokes.Load()
		_ = json.NewEncoder(w).Encode(st)
	})
	go func() {
		log.Fatal(http.ListenAndServe("127.0.0.1:"+strconv.Itoa(*ctl), nil))
	}()
	log.Fatal(s.Serve(l))
}
