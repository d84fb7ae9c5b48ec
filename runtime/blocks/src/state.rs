//! State building block: validates Dapr state requests, namespaces keys and
//! calls the named store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_components::state::{
    Concurrency, Consistency, DeleteRequest, EntryRef, Feature, Operation, SetRequest, StateEntry,
    StateError, StateStore,
};
use weft_proto::common::{self, state_options::StateConcurrency, state_options::StateConsistency};
use weft_proto::runtime as pb;

use super::time::rfc3339;
use crate::context::CallContext;
use crate::error::BlockError;
use crate::resiliency::{Policies, Target};
use crate::telemetry::{OpMetrics, Telemetry};

/// Separator between a key prefix and the app's key, as in Dapr.
pub const KEY_SEPARATOR: &str = "||";
/// Request metadata giving an item's time to live in seconds (-1: none).
pub const TTL_METADATA: &str = "ttlInSeconds";
/// Response metadata giving when an item expires (RFC 3339, UTC).
pub const TTL_EXPIRE_METADATA: &str = "ttlExpireTime";

/// How a store's keys are namespaced (`keyPrefix` component metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPrefix {
    /// `none`: keys are stored as given.
    None,
    /// `appid` (default), `name` or any other string: `<prefix>||<key>`.
    Fixed(String),
}

/// A `keyPrefix` that cannot be used: it holds the separator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix '{0}' must not contain '{KEY_SEPARATOR}'")]
pub struct InvalidPrefix(pub String);

impl KeyPrefix {
    /// Reads Dapr's `keyPrefix` setting for a component.
    pub fn from_setting(
        setting: Option<&str>,
        app_id: &str,
        component: &str,
    ) -> Result<Self, InvalidPrefix> {
        let prefix = match setting.map(str::trim) {
            None | Some("") | Some("appid") => app_id.to_string(),
            Some("name") => component.to_string(),
            Some("none") => return Ok(KeyPrefix::None),
            Some(custom) => custom.to_string(),
        };
        if prefix.contains(KEY_SEPARATOR) {
            return Err(InvalidPrefix(prefix));
        }
        Ok(KeyPrefix::Fixed(prefix))
    }

    /// The stored key of the app's `key` (request field `field`): empty
    /// keys and keys holding the separator are refused, naming the field.
    pub fn apply(&self, key: &str, field: &str) -> Result<String, BlockError> {
        let mut stored = String::new();
        self.apply_into(key, field, &mut stored)?;
        Ok(stored)
    }

    /// [`KeyPrefix::apply`] into `stored` (cleared first), reusing its
    /// allocation.
    pub fn apply_into(
        &self,
        key: &str,
        field: &str,
        stored: &mut String,
    ) -> Result<(), BlockError> {
        if key.is_empty() {
            return Err(BlockError::missing_field(field));
        }
        stored.clear();
        match self {
            KeyPrefix::None => stored.push_str(key),
            KeyPrefix::Fixed(prefix) => {
                if key.contains(KEY_SEPARATOR) {
                    return Err(BlockError::invalid_argument(format!(
                        "{field} '{key}' must not contain '{KEY_SEPARATOR}'"
                    )));
                }
                stored.reserve(prefix.len() + KEY_SEPARATOR.len() + key.len());
                stored.push_str(prefix);
                stored.push_str(KEY_SEPARATOR);
                stored.push_str(key);
            }
        }
        Ok(())
    }
}

/// A state store as the building block sees it.
#[derive(Clone)]
pub struct StoreHandle {
    pub store: Arc<dyn StateStore>,
    pub prefix: KeyPrefix,
    /// The store's component type (span and metric labels).
    kind: String,
    ops: StoreOps,
}

/// Metric handles of a store's operations.
#[derive(Clone)]
struct StoreOps {
    get: OpMetrics,
    bulk_get: OpMetrics,
    set: OpMetrics,
    delete: OpMetrics,
    transact: OpMetrics,
}

impl StoreHandle {
    pub fn new(
        name: &str,
        kind: &str,
        store: Arc<dyn StateStore>,
        prefix: KeyPrefix,
        telemetry: &Telemetry,
    ) -> Self {
        let op = |o| telemetry.metrics.op(name, kind, o);
        Self {
            store,
            prefix,
            kind: kind.to_string(),
            ops: StoreOps {
                get: op("get"),
                bulk_get: op("bulk_get"),
                set: op("set"),
                delete: op("delete"),
                transact: op("transact"),
            },
        }
    }
}

/// The state building block.
pub struct StateBlock {
    stores: BTreeMap<String, StoreHandle>,
    telemetry: Arc<Telemetry>,
    resiliency: Arc<Policies>,
}

/// How long a store call may take when the caller set no deadline and a
/// resiliency policy applies (its own timeout is usually shorter).
const COMPONENT_DEADLINE: Duration = Duration::from_secs(60);

impl StateBlock {
    pub fn new(stores: BTreeMap<String, StoreHandle>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            stores,
            telemetry,
            resiliency: Arc::new(Policies::default()),
        }
    }

    /// Applies `resiliency` to the stores' calls.
    pub fn with_resiliency(mut self, resiliency: Arc<Policies>) -> Self {
        self.resiliency = resiliency;
        self
    }

    /// Names of the configured stores.
    pub fn store_names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    /// Closes every store.
    pub async fn close(&self) {
        for (name, h) in &self.stores {
            tracing::debug!(component = %name, "closing state store");
            h.store.close().await;
        }
    }

    /// One call of a store: its metrics and span, under the component's
    /// resiliency policy and flow rules (timeout, retries, breaker, limits),
    /// the operation named as in the span (`get`, `set`, …).
    /// `input` is moved into the one call when no policy applies, cloned
    /// for each attempt when one does.
    #[allow(clippy::too_many_arguments)]
    async fn call<R, T, F, Fut>(
        &self,
        ctx: &CallContext,
        store: &str,
        h: &StoreHandle,
        span: &'static str,
        metrics: &OpMetrics,
        input: R,
        f: F,
    ) -> Result<T, BlockError>
    where
        R: Clone,
        F: Fn(R) -> Fut,
        Fut: std::future::Future<Output = Result<T, StateError>>,
    {
        let attempt = |input: R| async {
            self.telemetry
                .component_call(ctx, span, &h.kind, metrics, f(input))
                .await
                .map_err(|e| state_error(h, store, e))
        };
        let target = Target::ComponentOutbound(store);
        let Some(r) = self.resiliency.active().filter(|r| r.covers(target)) else {
            return attempt(input).await;
        };
        let op = span.rsplit(' ').next().unwrap_or(span);
        let deadline = ctx.remaining().unwrap_or(COMPONENT_DEADLINE);
        r.call(target, op, deadline, |_| attempt(input.clone()))
            .await
    }

    fn store(&self, name: &str) -> Result<&StoreHandle, BlockError> {
        BlockError::find_component(&self.stores, name, "store_name", "state store")
    }

    pub async fn get_state(
        &self,
        ctx: &CallContext,
        req: pb::GetStateRequest,
    ) -> Result<pb::GetStateResponse, BlockError> {
        let h = self.store(&req.store_name)?;
        let key = storage_key(h, &req.key, "key")?;
        let consistency = consistency(req.consistency);
        let entry = self
            .call(ctx, &req.store_name, h, "state get", &h.ops.get, (), |()| {
                h.store.get(&key, consistency)
            })
            .await?;
        Ok(match entry {
            Some(e) => pb::GetStateResponse {
                metadata: entry_metadata(&e),
                data: e.value,
                etag: e.etag,
            },
            None => pb::GetStateResponse::default(),
        })
    }

    /// GetState answered without waiting, for transports that can write
    /// the answer where it goes (the shared-memory session thread):
    /// `answer` is lent the stored item (`None`: not found) while the store
    /// holds it, with the response metadata. Declines (`None`, nothing
    /// done) unless the store reads in place ([`StateStore::get_now`]) and
    /// the call is plain: a known store, a valid key, no resiliency policy
    /// on the store, tracing off. The caller then uses
    /// [`StateBlock::get_state`], which also gives the declined calls'
    /// errors. Metrics are recorded as for `get_state`.
    pub fn get_state_now<R>(
        &self,
        ctx: &CallContext,
        store_name: &str,
        key: &str,
        consistency_raw: i32,
        answer: impl FnOnce(Option<GetStateView<'_>>) -> R,
    ) -> Option<Result<R, BlockError>> {
        if self.telemetry.tracing() {
            return None;
        }
        let h = self.stores.get(store_name)?;
        let target = Target::ComponentOutbound(store_name);
        if self.resiliency.active().is_some_and(|r| r.covers(target)) {
            return None;
        }
        thread_local! {
            static STORED_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        STORED_KEY.with_borrow_mut(|stored| {
            h.prefix.apply_into(key, "key", stored).ok()?;
            let started = ctx.timed.then(std::time::Instant::now);
            let mut answer = Some(answer);
            let mut out = None;
            let r = h
                .store
                .get_now(stored, consistency(consistency_raw), &mut |e| {
                    if let Some(answer) = answer.take() {
                        out = Some(answer(e.map(|e| GetStateView {
                            metadata: expiry_metadata(e.expires_at),
                            entry: e,
                        })));
                    }
                })?;
            h.ops.get.record(r.is_ok(), started);
            Some(match (r, out) {
                (Ok(()), Some(out)) => Ok(out),
                (Ok(()), None) => Err(BlockError::Internal(format!(
                    "state store '{store_name}' read in place without lending the item"
                ))),
                (Err(e), _) => Err(state_error(h, store_name, e)),
            })
        })
    }

    pub async fn get_bulk_state(
        &self,
        ctx: &CallContext,
        req: pb::GetBulkStateRequest,
    ) -> Result<pb::GetBulkStateResponse, BlockError> {
        let h = self.store(&req.store_name)?;
        if req.parallelism < 0 {
            return Err(BlockError::invalid_argument(format!(
                "parallelism must not be negative, got {}",
                req.parallelism
            )));
        }
        let mut keys = Vec::with_capacity(req.keys.len());
        for (i, k) in req.keys.iter().enumerate() {
            keys.push(storage_key(h, k, &format!("keys[{i}]"))?);
        }
        let entries = self
            .call(
                ctx,
                &req.store_name,
                h,
                "state bulk_get",
                &h.ops.bulk_get,
                (),
                |()| h.store.bulk_get(&keys),
            )
            .await?;
        let items = req
            .keys
            .into_iter()
            .zip(entries)
            .map(|(key, entry)| match entry {
                Some(e) => pb::BulkStateItem {
                    key,
                    metadata: entry_metadata(&e),
                    data: e.value,
                    etag: e.etag,
                    error: String::new(),
                },
                None => pb::BulkStateItem {
                    key,
                    ..Default::default()
                },
            })
            .collect();
        Ok(pb::GetBulkStateResponse { items })
    }

    pub async fn save_state(
        &self,
        ctx: &CallContext,
        req: pb::SaveStateRequest,
    ) -> Result<(), BlockError> {
        let h = self.store(&req.store_name)?;
        let mut sets = Vec::with_capacity(req.states.len());
        for (i, item) in req.states.into_iter().enumerate() {
            sets.push(set_request(h, item, &format!("states[{i}]"))?);
        }
        for set in sets {
            self.call(
                ctx,
                &req.store_name,
                h,
                "state set",
                &h.ops.set,
                set,
                |set| h.store.set(set),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn delete_state(
        &self,
        ctx: &CallContext,
        req: pb::DeleteStateRequest,
    ) -> Result<(), BlockError> {
        let h = self.store(&req.store_name)?;
        let del = DeleteRequest {
            key: storage_key(h, &req.key, "key")?,
            etag: etag_of(req.etag),
            concurrency: concurrency(req.options.as_ref()),
            consistency: consistency(req.options.as_ref().map_or(0, |o| o.consistency)),
        };
        self.call(
            ctx,
            &req.store_name,
            h,
            "state delete",
            &h.ops.delete,
            del,
            |del| h.store.delete(del),
        )
        .await
    }

    pub async fn delete_bulk_state(
        &self,
        ctx: &CallContext,
        req: pb::DeleteBulkStateRequest,
    ) -> Result<(), BlockError> {
        let h = self.store(&req.store_name)?;
        let mut dels = Vec::with_capacity(req.states.len());
        for (i, item) in req.states.into_iter().enumerate() {
            dels.push(delete_request(h, item, &format!("states[{i}]"))?);
        }
        for del in dels {
            self.call(
                ctx,
                &req.store_name,
                h,
                "state delete",
                &h.ops.delete,
                del,
                |del| h.store.delete(del),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn execute_state_transaction(
        &self,
        ctx: &CallContext,
        req: pb::ExecuteStateTransactionRequest,
    ) -> Result<(), BlockError> {
        let h = self.store(&req.store_name)?;
        if !h.store.features().contains(&Feature::Transactional) {
            return Err(BlockError::invalid_argument(format!(
                "state store '{}' does not support transactions",
                req.store_name
            )));
        }
        let mut ops = Vec::with_capacity(req.operations.len());
        for (i, op) in req.operations.into_iter().enumerate() {
            let at = format!("operations[{i}]");
            let item = op
                .request
                .ok_or_else(|| BlockError::missing_field(&format!("{at}.request")))?;
            ops.push(match op.operation_type.as_str() {
                "upsert" => Operation::Set(set_request(h, item, &format!("{at}.request"))?),
                "delete" => Operation::Delete(delete_request(h, item, &format!("{at}.request"))?),
                other => {
                    return Err(BlockError::invalid_argument(format!(
                        "{at}.operationType '{other}' is not supported; use 'upsert' or 'delete'"
                    )))
                }
            });
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.call(
            ctx,
            &req.store_name,
            h,
            "state transact",
            &h.ops.transact,
            ops,
            |ops| h.store.transact(ops),
        )
        .await
    }
}

/// Converts a store error, showing the app's key rather than the stored one.
fn state_error(h: &StoreHandle, store: &str, err: StateError) -> BlockError {
    let unprefix = |key: String| match &h.prefix {
        KeyPrefix::Fixed(p) => key
            .strip_prefix(p.as_str())
            .and_then(|k| k.strip_prefix(KEY_SEPARATOR))
            .map(str::to_string)
            .unwrap_or(key),
        KeyPrefix::None => key,
    };
    let err = match err {
        StateError::EtagMismatch { key } => StateError::EtagMismatch { key: unprefix(key) },
        StateError::EtagInvalid { key, etag } => StateError::EtagInvalid {
            key: unprefix(key),
            etag,
        },
        other => other,
    };
    BlockError::from_state(store, err)
}

fn storage_key(h: &StoreHandle, key: &str, field: &str) -> Result<String, BlockError> {
    h.prefix.apply(key, field)
}

fn etag_of(etag: Option<common::Etag>) -> Option<String> {
    etag.map(|e| e.value).filter(|v| !v.is_empty())
}

fn concurrency(options: Option<&common::StateOptions>) -> Concurrency {
    match options.map(|o| o.concurrency()) {
        Some(StateConcurrency::ConcurrencyFirstWrite) => Concurrency::FirstWrite,
        Some(StateConcurrency::ConcurrencyLastWrite) => Concurrency::LastWrite,
        _ => Concurrency::Unspecified,
    }
}

fn consistency(raw: i32) -> Consistency {
    match StateConsistency::try_from(raw) {
        Ok(StateConsistency::ConsistencyEventual) => Consistency::Eventual,
        Ok(StateConsistency::ConsistencyStrong) => Consistency::Strong,
        _ => Consistency::Unspecified,
    }
}

fn ttl_of(metadata: &HashMap<String, String>, field: &str) -> Result<Option<Duration>, BlockError> {
    let Some(raw) = metadata.get(TTL_METADATA) else {
        return Ok(None);
    };
    match raw.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n > 0 => Ok(Some(Duration::from_secs(n as u64))),
        _ => Err(BlockError::invalid_argument(format!(
            "{field}.metadata.{TTL_METADATA} '{raw}' must be -1 (no expiry) or a positive number of seconds"
        ))),
    }
}

fn set_request(
    h: &StoreHandle,
    item: common::StateItem,
    at: &str,
) -> Result<SetRequest, BlockError> {
    let key = storage_key(h, &item.key, &format!("{at}.key"))?;
    let ttl = ttl_of(&item.metadata, at)?;
    if ttl.is_some() && !h.store.features().contains(&Feature::Ttl) {
        return Err(BlockError::invalid_argument(format!(
            "{at}.metadata.{TTL_METADATA}: this state store does not support TTL"
        )));
    }
    Ok(SetRequest {
        key,
        concurrency: concurrency(item.options.as_ref()),
        consistency: consistency(item.options.as_ref().map_or(0, |o| o.consistency)),
        etag: etag_of(item.etag),
        value: item.value,
        ttl,
    })
}

fn delete_request(
    h: &StoreHandle,
    item: common::StateItem,
    at: &str,
) -> Result<DeleteRequest, BlockError> {
    Ok(DeleteRequest {
        key: storage_key(h, &item.key, &format!("{at}.key"))?,
        concurrency: concurrency(item.options.as_ref()),
        consistency: consistency(item.options.as_ref().map_or(0, |o| o.consistency)),
        etag: etag_of(item.etag),
    })
}

/// A stored item lent to a GetState answered in place, with the
/// response's metadata.
pub struct GetStateView<'a> {
    pub entry: EntryRef<'a>,
    /// `ttlExpireTime` for an item with a TTL; empty (no allocation) for
    /// the rest.
    pub metadata: HashMap<String, String>,
}

fn entry_metadata(e: &StateEntry) -> HashMap<String, String> {
    expiry_metadata(e.expires_at)
}

fn expiry_metadata(expires_at: Option<SystemTime>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if let Some(at) = expires_at {
        if let Ok(d) = at.duration_since(SystemTime::UNIX_EPOCH) {
            m.insert(TTL_EXPIRE_METADATA.to_string(), rfc3339(d));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use weft_components::state::memory::MemoryStore;

    fn block() -> StateBlock {
        let telemetry = Telemetry::disabled("app");
        let mut stores = BTreeMap::new();
        stores.insert(
            "s".to_string(),
            StoreHandle::new(
                "s",
                "state.in-memory",
                Arc::new(MemoryStore::new()),
                KeyPrefix::Fixed("app".into()),
                &telemetry,
            ),
        );
        StateBlock::new(stores, telemetry)
    }

    fn item(key: &str, value: &[u8]) -> common::StateItem {
        common::StateItem {
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn round_trip_and_unknown_store() {
        let b = block();
        b.save_state(
            &CallContext::app(),
            pb::SaveStateRequest {
                store_name: "s".into(),
                states: vec![item("k", b"v")],
            },
        )
        .await
        .unwrap();
        let got = b
            .get_state(
                &CallContext::app(),
                pb::GetStateRequest {
                    store_name: "s".into(),
                    key: "k".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(got.data, b"v");
        assert!(!got.etag.is_empty());
        let err = b
            .get_state(
                &CallContext::app(),
                pb::GetStateRequest {
                    store_name: "nope".into(),
                    key: "k".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("'nope'")
                && err.message().contains("configured state stores: s"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn bad_fields_are_named() {
        let b = block();
        let e = b
            .get_state(
                &CallContext::app(),
                pb::GetStateRequest {
                    store_name: "s".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "key is required and was empty")
        );
        let e = b
            .save_state(
                &CallContext::app(),
                pb::SaveStateRequest {
                    store_name: "s".into(),
                    states: vec![item("ok", b""), item("a||b", b"")],
                },
            )
            .await
            .unwrap_err();
        assert!(e.message().contains("states[1].key"), "{}", e.message());
        let mut ttl = item("t", b"");
        ttl.metadata.insert(TTL_METADATA.into(), "soon".into());
        let e = b
            .save_state(
                &CallContext::app(),
                pb::SaveStateRequest {
                    store_name: "s".into(),
                    states: vec![ttl],
                },
            )
            .await
            .unwrap_err();
        assert!(
            e.message().contains("states[0].metadata.ttlInSeconds"),
            "{}",
            e.message()
        );
        let e = b
            .execute_state_transaction(
                &CallContext::app(),
                pb::ExecuteStateTransactionRequest {
                    store_name: "s".into(),
                    operations: vec![pb::TransactionalStateOperation {
                        operation_type: "merge".into(),
                        request: Some(item("k", b"")),
                    }],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            e.message().contains("operations[0].operationType 'merge'"),
            "{}",
            e.message()
        );
        // Nothing from the rejected batch was written.
        let got = b
            .get_state(
                &CallContext::app(),
                pb::GetStateRequest {
                    store_name: "s".into(),
                    key: "ok".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(got.etag.is_empty());
    }

    #[tokio::test]
    async fn stale_etag_with_first_write_is_aborted() {
        let b = block();
        b.save_state(
            &CallContext::app(),
            pb::SaveStateRequest {
                store_name: "s".into(),
                states: vec![item("k", b"1")],
            },
        )
        .await
        .unwrap();
        let mut stale = item("k", b"2");
        stale.etag = Some(common::Etag {
            value: "stale".into(),
        });
        stale.options = Some(common::StateOptions {
            concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
            consistency: 0,
        });
        let e = b
            .save_state(
                &CallContext::app(),
                pb::SaveStateRequest {
                    store_name: "s".into(),
                    states: vec![stale.clone()],
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted);
        assert!(
            e.message().contains("etag mismatch") && e.message().contains("'s'"),
            "{}",
            e.message()
        );
        assert!(
            e.message().contains("key 'k'"),
            "the app's key, not the stored one: {}",
            e.message()
        );
        stale.options.as_mut().unwrap().concurrency = StateConcurrency::ConcurrencyLastWrite as i32;
        b.save_state(
            &CallContext::app(),
            pb::SaveStateRequest {
                store_name: "s".into(),
                states: vec![stale],
            },
        )
        .await
        .unwrap();
    }

    #[test]
    fn key_prefix_settings() {
        assert_eq!(
            KeyPrefix::from_setting(None, "app", "c").unwrap(),
            KeyPrefix::Fixed("app".into())
        );
        assert_eq!(
            KeyPrefix::from_setting(Some("name"), "app", "c").unwrap(),
            KeyPrefix::Fixed("c".into())
        );
        assert_eq!(
            KeyPrefix::from_setting(Some("none"), "app", "c").unwrap(),
            KeyPrefix::None
        );
        assert!(KeyPrefix::from_setting(Some("a||b"), "app", "c").is_err());
    }
}
