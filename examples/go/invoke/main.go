// Command invoke runs two apps in one process, each with its own runtime:
// "checkout" serves the method "place" without opening a port (the
// invocations reach it over its shared-memory session or gRPC stream), and
// "orders" calls it by app id through both runtimes, with a deadline.
//
//	examples/go/run.sh invoke
//
// It reads CHECKOUT_SHM_SOCKET / ORDERS_SHM_SOCKET and CHECKOUT_UDS /
// ORDERS_UDS (set by run.sh).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"weft.dev/sdk-go/client"
	"weft.dev/sdk-go/service/common"
	"weft.dev/sdk-go/service/stream"
)

func connect(app, prefix string) *client.Client {
	c, err := client.New(context.Background(),
		client.WithAppID(app),
		client.WithShmSocket(os.Getenv(prefix+"_SHM_SOCKET")),
		client.WithSocket(os.Getenv(prefix+"_UDS")))
	if err != nil {
		log.Fatal(err)
	}
	return c
}

func main() {
	// The called app: a handler, no port.
	callee := connect("checkout", "CHECKOUT")
	defer callee.Close()
	svc := stream.NewService(callee)
	err := svc.AddServiceInvocationHandler("place", func(ctx context.Context, in *common.InvocationEvent) (*common.Content, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if string(in.Data) == "" {
			return nil, status.Error(codes.InvalidArgument, "an order needs an item")
		}
		return &common.Content{
			Data:        []byte(fmt.Sprintf("placed %s for %v", in.Data, md.Get("dapr-caller-app-id"))),
			ContentType: "text/plain",
		}, nil
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := svc.Start(); err != nil {
			log.Fatal(err)
		}
	}()
	<-svc.Ready()
	defer svc.Stop()
	fmt.Println("checkout serves place over", callee.Transport())

	// The calling app.
	caller := connect("orders", "ORDERS")
	defer caller.Close()
	fmt.Println("orders calls over", caller.Transport())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []byte
	for i := 0; ; i++ { // the runtimes find each other within a moment
		out, err = caller.InvokeMethodWithContent(ctx, "checkout", "place", "post",
			&client.DataContent{Data: []byte("book"), ContentType: "text/plain"})
		if err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("answer:", string(out))

	_, err = caller.InvokeMethodWithContent(ctx, "checkout", "place", "post", &client.DataContent{})
	if errors.Is(err, client.ErrInvalidArgument) {
		fmt.Println("the called app's error reached the caller:", err)
	} else {
		log.Fatalf("expected INVALID_ARGUMENT, got %v", err)
	}
}
