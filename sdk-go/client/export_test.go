package client

import "weft.dev/sdk-go/internal/shm"

// ShmContextServed reports whether c's shared-memory session has the
// CONTEXT feature (false on gRPC).
func ShmContextServed(c *Client) bool {
	t, ok := c.t.(*shmTransport)
	if !ok {
		return false
	}
	s := t.cur.Load()
	return s != nil && s.HasFeature(shm.FeatureContext)
}
