//! Distributed lock building block: `TryLockAlpha1` and `UnlockAlpha1` over
//! the lock stores, resource ids namespaced per app like state keys
//! (`keyPrefix`, default the app id).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weft_components::lock::{LockError, LockStore, UnlockStatus};
use weft_proto::runtime as pb;

use crate::context::CallContext;
use crate::error::{BlockError, Code};
use crate::state::KeyPrefix;
use crate::telemetry::{OpMetrics, Telemetry};

/// The longest lease a caller may ask for (a day): longer ones are
/// refused rather than silently capped.
pub const MAX_EXPIRY_SECONDS: i32 = 86_400;

/// A lock store as the block sees it.
pub struct StoreHandle {
    store: Arc<dyn LockStore>,
    prefix: KeyPrefix,
    kind: String,
    try_lock: OpMetrics,
    unlock: OpMetrics,
}

impl StoreHandle {
    pub fn new(
        name: &str,
        kind: &str,
        store: Arc<dyn LockStore>,
        prefix: KeyPrefix,
        telemetry: &Telemetry,
    ) -> Self {
        Self {
            store,
            prefix,
            kind: kind.to_string(),
            try_lock: telemetry.metrics.op(name, kind, "try_lock"),
            unlock: telemetry.metrics.op(name, kind, "unlock"),
        }
    }
}

/// The lock building block.
pub struct LockBlock {
    stores: BTreeMap<String, StoreHandle>,
    telemetry: Arc<Telemetry>,
}

impl LockBlock {
    pub fn new(stores: BTreeMap<String, StoreHandle>, telemetry: Arc<Telemetry>) -> Self {
        Self { stores, telemetry }
    }

    pub fn store_names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    pub async fn close(&self) {
        for h in self.stores.values() {
            h.store.close().await;
        }
    }

    fn store(&self, name: &str) -> Result<&StoreHandle, BlockError> {
        BlockError::find_component(&self.stores, name, "store_name", "lock store")
    }

    pub async fn try_lock(
        &self,
        ctx: &CallContext,
        req: pb::TryLockRequest,
    ) -> Result<pb::TryLockResponse, BlockError> {
        let h = self.store(&req.store_name)?;
        let resource = h.prefix.apply(&req.resource_id, "resource_id")?;
        if req.lock_owner.is_empty() {
            return Err(BlockError::missing_field("lock_owner"));
        }
        if req.expiry_in_seconds <= 0 || req.expiry_in_seconds > MAX_EXPIRY_SECONDS {
            return Err(BlockError::invalid_argument(format!(
                "expiry_in_seconds must be from 1 to {MAX_EXPIRY_SECONDS}, got {}",
                req.expiry_in_seconds
            )));
        }
        let lease = Duration::from_secs(req.expiry_in_seconds.unsigned_abs().into());
        let success = self
            .telemetry
            .component_call(
                ctx,
                "lock try_lock",
                &h.kind,
                &h.try_lock,
                h.store.try_lock(&resource, &req.lock_owner, lease),
            )
            .await
            .map_err(|e| from_lock(&req.store_name, e))?;
        Ok(pb::TryLockResponse { success })
    }

    /// Unlock. A store that cannot be reached fails the call with
    /// UNAVAILABLE (the caller may retry); any other store failure answers
    /// the `INTERNAL_ERROR` status and is logged; bad requests fail the
    /// call, naming the field.
    pub async fn unlock(
        &self,
        ctx: &CallContext,
        req: pb::UnlockRequest,
    ) -> Result<pb::UnlockResponse, BlockError> {
        use pb::unlock_response::Status;
        let h = self.store(&req.store_name)?;
        let resource = h.prefix.apply(&req.resource_id, "resource_id")?;
        if req.lock_owner.is_empty() {
            return Err(BlockError::missing_field("lock_owner"));
        }
        let status = match self
            .telemetry
            .component_call(
                ctx,
                "lock unlock",
                &h.kind,
                &h.unlock,
                h.store.unlock(&resource, &req.lock_owner),
            )
            .await
        {
            Ok(UnlockStatus::Success) => Status::Success,
            Ok(UnlockStatus::LockDoesNotExist) => Status::LockDoesNotExist,
            Ok(UnlockStatus::LockBelongsToOthers) => Status::LockBelongsToOthers,
            Err(e @ LockError::Unavailable(_)) => return Err(from_lock(&req.store_name, e)),
            Err(e) => {
                tracing::warn!(component = %req.store_name, error = %e, "unlock failed");
                Status::InternalError
            }
        };
        Ok(pb::UnlockResponse {
            status: status as i32,
        })
    }
}

fn from_lock(store: &str, e: LockError) -> BlockError {
    let code = match &e {
        LockError::InvalidRequest(_) => Code::InvalidArgument,
        LockError::Unavailable(_) => Code::Unavailable,
        LockError::Internal(_) => Code::Internal,
    };
    BlockError::new(code, format!("lock store '{store}': {e}"))
}
