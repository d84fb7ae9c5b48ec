//! `state.in-memory`: a process-local state store.
//!
//! Items live in a `HashMap` behind a lock and are lost when the process
//! exits. Etags are fresh random UUIDs. Expired items are invisible at once
//! and removed lazily (when touched) and by an occasional sweep of the whole
//! map. Transactions validate every operation before applying any.
//!
//! This module also holds [`Condition`], the ETag table of the parent module
//! turned into code, which the SQL backends share.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    Concurrency, Consistency, DeleteRequest, EntryRef, Feature, Operation, SetRequest, StateEntry,
    StateError, StateStore,
};

/// How often the whole map is swept for expired items.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// What a write or delete requires of the stored item before it may go
/// ahead, per the ETag table in the parent module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition<'a> {
    /// Unconditional.
    Always,
    /// The key must not exist (or must have expired).
    Absent,
    /// The key must exist, unexpired, with exactly this etag.
    EtagEquals(&'a str),
}

impl<'a> Condition<'a> {
    /// The condition of a write. An empty etag counts as no etag.
    pub(crate) fn for_set(req: &'a SetRequest) -> Self {
        match (req.concurrency, non_empty(&req.etag)) {
            (Concurrency::LastWrite, _) => Condition::Always,
            (_, Some(etag)) => Condition::EtagEquals(etag),
            (Concurrency::FirstWrite, None) => Condition::Absent,
            (Concurrency::Unspecified, None) => Condition::Always,
        }
    }

    /// The condition of a delete: an etag must match unless the mode is
    /// `LastWrite`; without an etag the delete is unconditional (deleting a
    /// missing key succeeds).
    pub(crate) fn for_delete(req: &'a DeleteRequest) -> Self {
        match (req.concurrency, non_empty(&req.etag)) {
            (Concurrency::LastWrite, _) | (_, None) => Condition::Always,
            (_, Some(etag)) => Condition::EtagEquals(etag),
        }
    }
}

fn non_empty(etag: &Option<String>) -> Option<&str> {
    etag.as_deref().filter(|e| !e.is_empty())
}

/// A fresh, opaque etag.
pub(crate) fn new_etag() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Debug, Clone)]
struct Item {
    value: Vec<u8>,
    etag: String,
    expires_at: Option<SystemTime>,
}

impl Item {
    fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn lend(&self) -> EntryRef<'_> {
        EntryRef {
            value: &self.value,
            etag: &self.etag,
            expires_at: self.expires_at,
        }
    }

    fn entry(&self) -> StateEntry {
        StateEntry {
            value: self.value.clone(),
            etag: self.etag.clone(),
            expires_at: self.expires_at,
        }
    }
}

#[derive(Debug)]
struct Inner {
    items: HashMap<String, Item>,
    last_sweep: Instant,
}

impl Inner {
    /// The live item under `key`, if any.
    fn live(&self, key: &str, now: SystemTime) -> Option<&Item> {
        self.items.get(key).filter(|item| item.is_live(now))
    }

    fn sweep_if_due(&mut self, now: SystemTime) {
        if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
            self.items.retain(|_, item| item.is_live(now));
            self.last_sweep = Instant::now();
        }
    }
}

/// The `state.in-memory` store.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Locks the map. A panic while holding the lock cannot leave the map
    /// half-updated (every mutation is a single insert/remove), so a
    /// poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Checks `cond` against the item currently visible for `key`.
fn check(key: &str, current: Option<&Item>, cond: Condition<'_>) -> Result<(), StateError> {
    let ok = match cond {
        Condition::Always => true,
        Condition::Absent => current.is_none(),
        Condition::EtagEquals(etag) => current.is_some_and(|item| item.etag == etag),
    };
    if ok {
        Ok(())
    } else {
        Err(StateError::EtagMismatch {
            key: key.to_string(),
        })
    }
}

fn item_for(req: &SetRequest, now: SystemTime) -> Item {
    Item {
        value: req.value.clone(),
        etag: new_etag(),
        // A TTL too long for `SystemTime` never expires.
        expires_at: req.ttl.and_then(|ttl| now.checked_add(ttl)),
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Etag, Feature::Transactional, Feature::Ttl]
    }

    async fn get(
        &self,
        key: &str,
        _consistency: Consistency,
    ) -> Result<Option<StateEntry>, StateError> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        match inner.items.get(key) {
            Some(item) if item.is_live(now) => Ok(Some(item.entry())),
            Some(_) => {
                inner.items.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn get_now(
        &self,
        key: &str,
        _consistency: Consistency,
        read: &mut dyn FnMut(Option<EntryRef<'_>>),
    ) -> Option<Result<(), StateError>> {
        let mut inner = self.lock();
        // The clock is read only for items that can expire.
        match inner.items.get(key) {
            Some(item) if item.expires_at.is_none() || item.is_live(SystemTime::now()) => {
                read(Some(item.lend()))
            }
            Some(_) => {
                inner.items.remove(key);
                read(None)
            }
            None => read(None),
        }
        Some(Ok(()))
    }

    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        let now = SystemTime::now();
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|key| inner.live(key, now).map(Item::entry))
            .collect())
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        inner.sweep_if_due(now);
        check(
            &req.key,
            inner.live(&req.key, now),
            Condition::for_set(&req),
        )?;
        let item = item_for(&req, now);
        inner.items.insert(req.key, item);
        Ok(())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        inner.sweep_if_due(now);
        check(
            &req.key,
            inner.live(&req.key, now),
            Condition::for_delete(&req),
        )?;
        inner.items.remove(&req.key);
        Ok(())
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        inner.sweep_if_due(now);

        // Validate every operation against the map as the earlier operations
        // of this transaction would leave it, without touching the map.
        let mut staged: HashMap<&str, Option<Item>> = HashMap::new();
        for op in &ops {
            let key = op.key();
            let current = match staged.get(key) {
                Some(pending) => pending.as_ref(),
                None => inner.live(key, now),
            };
            let next = match op {
                Operation::Set(req) => {
                    check(key, current, Condition::for_set(req))?;
                    Some(item_for(req, now))
                }
                Operation::Delete(req) => {
                    check(key, current, Condition::for_delete(req))?;
                    None
                }
            };
            staged.insert(key, next);
        }

        // Everything checked out: apply.
        for (key, next) in staged {
            match next {
                Some(item) => {
                    inner.items.insert(key.to_string(), item);
                }
                None => {
                    inner.items.remove(key);
                }
            }
        }
        Ok(())
    }
}

/// `state.in-memory` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "state.in-memory",
    build: |_md, _ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::State(Arc::new(MemoryStore::new())))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_the_etag_table() {
        let set = |concurrency, etag: Option<&str>| SetRequest {
            key: "k".into(),
            etag: etag.map(str::to_string),
            concurrency,
            ..Default::default()
        };
        let r = set(Concurrency::FirstWrite, None);
        assert_eq!(Condition::for_set(&r), Condition::Absent);
        let r = set(Concurrency::FirstWrite, Some("e"));
        assert_eq!(Condition::for_set(&r), Condition::EtagEquals("e"));
        let r = set(Concurrency::LastWrite, Some("e"));
        assert_eq!(Condition::for_set(&r), Condition::Always);
        let r = set(Concurrency::Unspecified, None);
        assert_eq!(Condition::for_set(&r), Condition::Always);
        let r = set(Concurrency::Unspecified, Some(""));
        assert_eq!(Condition::for_set(&r), Condition::Always);
        let r = set(Concurrency::Unspecified, Some("e"));
        assert_eq!(Condition::for_set(&r), Condition::EtagEquals("e"));
    }
}
