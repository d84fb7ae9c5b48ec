// Command interop is the Go app of sdk-java's cross-language test
// (GoInteropTest): a weft.dev/sdk-go client of its own runtime that serves
// invocations without a port and, for "relay", calls the Java app back.
//
//	interop -transport shm|grpc -app-id go-app -grpc 127.0.0.1:PORT -shm-socket PATH -java-app java-app
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/service/common"
	"weft.dev/sdk-go/service/stream"
)

func main() {
	transport := flag.String("transport", "auto", "shm, grpc or auto")
	appID := flag.String("app-id", "", "the runtime's app id")
	grpcAddr := flag.String("grpc", "", "the runtime's gRPC address")
	shmSocket := flag.String("shm-socket", "", "the runtime's shared-memory socket")
	javaApp := flag.String("java-app", "", "the Java app to call back")
	flag.Parse()

	ctx := context.Background()
	c, err := client.New(ctx, client.WithTransport(client.Transport(*transport)), client.WithAppID(*appID),
		client.WithAddress(*grpcAddr), client.WithShmSocket(*shmSocket))
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop: client:", err)
		os.Exit(1)
	}
	defer c.Close()
	s := stream.NewService(c)
	must(s.AddServiceInvocationHandler("hello", func(ctx context.Context, in *common.InvocationEvent) (*common.Content, error) {
		return &common.Content{Data: []byte("hello from go, " + string(in.Data)), ContentType: "text/plain"}, nil
	}))
	must(s.AddServiceInvocationHandler("relay", func(ctx context.Context, in *common.InvocationEvent) (*common.Content, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := c.InvokeMethodWithContent(cctx, *javaApp, "from-go", "post",
			&client.DataContent{Data: in.Data, ContentType: "text/plain"})
		if err != nil {
			return nil, err
		}
		return &common.Content{Data: append([]byte("go got: "), out...), ContentType: "text/plain"}, nil
	}))
	go func() {
		<-s.Ready()
		fmt.Printf("READY %s\n", c.Transport())
	}()
	if err := s.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "interop: serve:", err)
		os.Exit(1)
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(1)
	}
}
