package client

import (
	"context"
	"fmt"

	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	runtimev1 "weft.dev/sdk-go/proto/dapr/runtime/v1"
)

// State option values, as in the Dapr SDK.
const (
	StateConsistencyUndefined StateConsistency = 0
	StateConsistencyEventual  StateConsistency = 1
	StateConsistencyStrong    StateConsistency = 2

	StateConcurrencyUndefined  StateConcurrency = 0
	StateConcurrencyFirstWrite StateConcurrency = 1
	StateConcurrencyLastWrite  StateConcurrency = 2

	StateOperationTypeUndefined OperationType = 0
	StateOperationTypeUpsert    OperationType = 1
	StateOperationTypeDelete    OperationType = 2
)

// MetadataTTLInSeconds is the request metadata key of a state item's time
// to live ("-1": never expires); GetState reports "ttlExpireTime".
const MetadataTTLInSeconds = "ttlInSeconds"

type (
	// StateConsistency is eventual or strong.
	StateConsistency int32
	// StateConcurrency is first-write (etag required to match) or last-write.
	StateConcurrency int32
	// OperationType is upsert or delete, in a transaction.
	OperationType int32
)

// String returns the name the runtime expects ("upsert", "delete").
func (o OperationType) String() string {
	switch o {
	case StateOperationTypeUpsert:
		return "upsert"
	case StateOperationTypeDelete:
		return "delete"
	}
	return "undefined"
}

// StateItem is a value read from a store.
type StateItem struct {
	Key      string
	Value    []byte
	Etag     string
	Metadata map[string]string
}

// BulkStateItem is one item of GetBulkState; Error is set for a key that
// could not be read.
type BulkStateItem struct {
	Key      string
	Value    []byte
	Etag     string
	Metadata map[string]string
	Error    string
}

// ETag is an item's version.
type ETag struct{ Value string }

// StateOptions carry concurrency and consistency.
type StateOptions struct {
	Concurrency StateConcurrency
	Consistency StateConsistency
}

// StateOption sets a StateOptions field.
type StateOption func(*StateOptions)

// WithConcurrency sets first-write or last-write.
func WithConcurrency(c StateConcurrency) StateOption {
	return func(o *StateOptions) { o.Concurrency = c }
}

// WithConsistency sets eventual or strong.
func WithConsistency(c StateConsistency) StateOption {
	return func(o *StateOptions) { o.Consistency = c }
}

// SetStateItem is an item to save.
type SetStateItem struct {
	Key      string
	Value    []byte
	Etag     *ETag
	Metadata map[string]string
	Options  *StateOptions
}

// DeleteStateItem is an item to delete.
type DeleteStateItem SetStateItem

// StateOperation is one operation of a transaction.
type StateOperation struct {
	Type OperationType
	Item *SetStateItem
}

func toProtoOptions(o *StateOptions) *commonv1.StateOptions {
	if o == nil {
		return nil
	}
	return &commonv1.StateOptions{
		Concurrency: commonv1.StateOptions_StateConcurrency(o.Concurrency),
		Consistency: commonv1.StateOptions_StateConsistency(o.Consistency),
	}
}

func toProtoItem(op, arg string, si *SetStateItem) (*commonv1.StateItem, error) {
	if si == nil {
		return nil, argErr(op, arg, "is nil")
	}
	if si.Key == "" {
		return nil, argErr(op, arg+".Key", "is required and was empty")
	}
	if si.Options != nil && (si.Options.Concurrency < 0 || si.Options.Concurrency > StateConcurrencyLastWrite) {
		return nil, argErr(op, arg+".Options.Concurrency", fmt.Sprintf("%d is not a StateConcurrency", si.Options.Concurrency))
	}
	if si.Options != nil && (si.Options.Consistency < 0 || si.Options.Consistency > StateConsistencyStrong) {
		return nil, argErr(op, arg+".Options.Consistency", fmt.Sprintf("%d is not a StateConsistency", si.Options.Consistency))
	}
	it := &commonv1.StateItem{Key: si.Key, Value: si.Value, Metadata: si.Metadata, Options: toProtoOptions(si.Options)}
	if si.Etag != nil {
		it.Etag = &commonv1.Etag{Value: si.Etag.Value}
	}
	return it, nil
}

// GetState reads a key (strong consistency). A missing key is not an
// error: the item has no Value and no Etag.
func (c *Client) GetState(ctx context.Context, storeName, key string, meta map[string]string) (*StateItem, error) {
	return c.getState(ctx, "GetState", storeName, key, meta, StateConsistencyStrong)
}

// GetStateWithConsistency reads a key with the given consistency.
func (c *Client) GetStateWithConsistency(ctx context.Context, storeName, key string, meta map[string]string, sc StateConsistency) (*StateItem, error) {
	return c.getState(ctx, "GetStateWithConsistency", storeName, key, meta, sc)
}

func (c *Client) getState(ctx context.Context, op, storeName, key string, meta map[string]string, sc StateConsistency) (*StateItem, error) {
	if err := required(op, "storeName", storeName, "key", key); err != nil {
		return nil, err
	}
	if sc < 0 || sc > StateConsistencyStrong {
		return nil, argErr(op, "sc", fmt.Sprintf("%d is not a StateConsistency", sc))
	}
	resp := &runtimev1.GetStateResponse{}
	err := c.call(ctx, op, mGetState, &runtimev1.GetStateRequest{
		StoreName: storeName, Key: key, Metadata: meta,
		Consistency: commonv1.StateOptions_StateConsistency(sc),
	}, resp)
	if err != nil {
		return nil, err
	}
	return &StateItem{Key: key, Value: resp.GetData(), Etag: resp.GetEtag(), Metadata: resp.GetMetadata()}, nil
}

// SaveState saves one value (last-write-wins unless options say otherwise).
func (c *Client) SaveState(ctx context.Context, storeName, key string, data []byte, meta map[string]string, so ...StateOption) error {
	return c.saveWithETag(ctx, "SaveState", storeName, key, data, "", meta, so)
}

// SaveStateWithETag saves one value if its etag still matches (with
// first-write concurrency); a mismatch is ErrETagMismatch.
func (c *Client) SaveStateWithETag(ctx context.Context, storeName, key string, data []byte, etag string, meta map[string]string, so ...StateOption) error {
	return c.saveWithETag(ctx, "SaveStateWithETag", storeName, key, data, etag, meta, so)
}

func (c *Client) saveWithETag(ctx context.Context, op, storeName, key string, data []byte, etag string, meta map[string]string, so []StateOption) error {
	if err := required(op, "storeName", storeName, "key", key); err != nil {
		return err
	}
	item := &SetStateItem{Key: key, Value: data, Metadata: meta}
	if len(so) > 0 {
		item.Options = &StateOptions{}
		for _, o := range so {
			o(item.Options)
		}
	}
	if etag != "" {
		item.Etag = &ETag{Value: etag}
	}
	return c.saveBulk(ctx, op, storeName, []*SetStateItem{item})
}

// SaveBulkState saves several items in one call.
func (c *Client) SaveBulkState(ctx context.Context, storeName string, items ...*SetStateItem) error {
	return c.saveBulk(ctx, "SaveBulkState", storeName, items)
}

func (c *Client) saveBulk(ctx context.Context, op, storeName string, items []*SetStateItem) error {
	if err := required(op, "storeName", storeName); err != nil {
		return err
	}
	if len(items) == 0 {
		return argErr(op, "items", "is empty: nothing to save")
	}
	req := &runtimev1.SaveStateRequest{StoreName: storeName, States: make([]*commonv1.StateItem, 0, len(items))}
	for i, si := range items {
		it, err := toProtoItem(op, fmt.Sprintf("items[%d]", i), si)
		if err != nil {
			return err
		}
		req.States = append(req.States, it)
	}
	return c.call(ctx, op, mSaveState, req, nil)
}

// GetBulkState reads several keys; parallelism is passed to the runtime.
func (c *Client) GetBulkState(ctx context.Context, storeName string, keys []string, meta map[string]string, parallelism int32) ([]*BulkStateItem, error) {
	const op = "GetBulkState"
	if err := required(op, "storeName", storeName); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, argErr(op, "keys", "is empty")
	}
	for i, k := range keys {
		if k == "" {
			return nil, argErr(op, fmt.Sprintf("keys[%d]", i), "is empty")
		}
	}
	if parallelism < 0 {
		return nil, argErr(op, "parallelism", fmt.Sprintf("%d is negative", parallelism))
	}
	resp := &runtimev1.GetBulkStateResponse{}
	if err := c.call(ctx, op, mGetBulkState, &runtimev1.GetBulkStateRequest{StoreName: storeName, Keys: keys, Metadata: meta, Parallelism: parallelism}, resp); err != nil {
		return nil, err
	}
	out := make([]*BulkStateItem, 0, len(resp.GetItems()))
	for _, it := range resp.GetItems() {
		out = append(out, &BulkStateItem{Key: it.GetKey(), Value: it.GetData(), Etag: it.GetEtag(), Metadata: it.GetMetadata(), Error: it.GetError()})
	}
	return out, nil
}

// DeleteState deletes a key (no etag check).
func (c *Client) DeleteState(ctx context.Context, storeName, key string, meta map[string]string) error {
	return c.deleteState(ctx, "DeleteState", storeName, key, nil, meta, nil)
}

// DeleteStateWithETag deletes a key if its etag matches.
func (c *Client) DeleteStateWithETag(ctx context.Context, storeName, key string, etag *ETag, meta map[string]string, opts *StateOptions) error {
	return c.deleteState(ctx, "DeleteStateWithETag", storeName, key, etag, meta, opts)
}

func (c *Client) deleteState(ctx context.Context, op, storeName, key string, etag *ETag, meta map[string]string, opts *StateOptions) error {
	if err := required(op, "storeName", storeName, "key", key); err != nil {
		return err
	}
	req := &runtimev1.DeleteStateRequest{StoreName: storeName, Key: key, Metadata: meta, Options: toProtoOptions(opts)}
	if etag != nil {
		req.Etag = &commonv1.Etag{Value: etag.Value}
	}
	return c.call(ctx, op, mDeleteState, req, nil)
}

// DeleteBulkState deletes several keys.
func (c *Client) DeleteBulkState(ctx context.Context, storeName string, keys []string, meta map[string]string) error {
	const op = "DeleteBulkState"
	if len(keys) == 0 {
		return argErr(op, "keys", "is empty: nothing to delete")
	}
	items := make([]*DeleteStateItem, len(keys))
	for i, k := range keys {
		if k == "" {
			return argErr(op, fmt.Sprintf("keys[%d]", i), "is empty")
		}
		items[i] = &DeleteStateItem{Key: k, Metadata: meta}
	}
	return c.deleteBulk(ctx, op, storeName, items)
}

// DeleteBulkStateItems deletes several items (with etags and options).
func (c *Client) DeleteBulkStateItems(ctx context.Context, storeName string, items []*DeleteStateItem) error {
	return c.deleteBulk(ctx, "DeleteBulkStateItems", storeName, items)
}

func (c *Client) deleteBulk(ctx context.Context, op, storeName string, items []*DeleteStateItem) error {
	if err := required(op, "storeName", storeName); err != nil {
		return err
	}
	if len(items) == 0 {
		return argErr(op, "items", "is empty: nothing to delete")
	}
	req := &runtimev1.DeleteBulkStateRequest{StoreName: storeName}
	for i, it := range items {
		p, err := toProtoItem(op, fmt.Sprintf("items[%d]", i), (*SetStateItem)(it))
		if err != nil {
			return err
		}
		req.States = append(req.States, p)
	}
	return c.call(ctx, op, mDeleteBulkState, req, nil)
}

// ExecuteStateTransaction applies ops all or nothing.
func (c *Client) ExecuteStateTransaction(ctx context.Context, storeName string, meta map[string]string, ops []*StateOperation) error {
	const op = "ExecuteStateTransaction"
	if err := required(op, "storeName", storeName); err != nil {
		return err
	}
	if len(ops) == 0 {
		return argErr(op, "ops", "is empty: nothing to do")
	}
	req := &runtimev1.ExecuteStateTransactionRequest{StoreName: storeName, Metadata: meta}
	for i, o := range ops {
		if o == nil {
			return argErr(op, fmt.Sprintf("ops[%d]", i), "is nil")
		}
		if o.Type != StateOperationTypeUpsert && o.Type != StateOperationTypeDelete {
			return argErr(op, fmt.Sprintf("ops[%d].Type", i), fmt.Sprintf("%d is neither upsert nor delete", o.Type))
		}
		it, err := toProtoItem(op, fmt.Sprintf("ops[%d].Item", i), o.Item)
		if err != nil {
			return err
		}
		req.Operations = append(req.Operations, &runtimev1.TransactionalStateOperation{OperationType: o.Type.String(), Request: it})
	}
	return c.call(ctx, op, mExecuteStateTransaction, req, nil)
}
