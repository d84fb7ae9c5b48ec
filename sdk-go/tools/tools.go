//go:build tools

// Package tools pins the protoc plugins that scripts/genproto.sh builds. It
// is its own module so that the SDK's go.mod lists only what apps link.
package tools

import (
	_ "google.golang.org/grpc/cmd/protoc-gen-go-grpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
