//! Sequencers: ids that only grow, per key, never handed out twice —
//! across the runtimes sharing a store, their restarts and the store's
//! failovers. Behind `weft.runtime.v1.Sequencer/GetNextId`.
//!
//! A backend does one thing: [`SequencerStore::reserve`] takes the next
//! `count` ids of a key in one atomic, durable step. Every id comes from a
//! reservation, so no two reservations overlap and a later one lies above
//! an earlier one.
//!
//! [`Segments`] serves the two increments Layotto defines:
//!
//! * **STRONG**: one reservation of one id per call, so an id is greater
//!   than every id of the key handed out, by any runtime, before the call
//!   began;
//! * **WEAK**: ids served from memory out of a range (a segment) reserved
//!   in one trip to the store. They grow within one runtime (also mixed
//!   with STRONG calls on the same key), but two runtimes' ranges
//!   interleave (runtime A may hand out 1 001 after runtime B handed out
//!   2 000), and ids left in a segment when a runtime stops are never used
//!   (skipped, not repeated).
//!
//! Backends: [`sqlite`] (`sequencer.sqlite`, one file shared by every
//! runtime of a machine: the embedded default `sequencer`), [`postgres`]
//! (`sequencer.postgresql`) and [`zookeeper`] (`sequencer.zookeeper`).
//! Every backend runs the suite in [`conformance`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgresql")]
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

/// Why ids could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequencerError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend error: {0}")]
    Internal(String),
}

/// A sequencer store backend.
#[async_trait]
pub trait SequencerStore: Send + Sync + 'static {
    /// Reserves the next `count` (≥ 1) ids of `key` and returns the first:
    /// the ids `first .. first + count` are this caller's alone, and every
    /// id of `key` reserved before (by anyone) is below `first`. The first
    /// id of a key is 1. Durable once returned.
    async fn reserve(&self, key: &str, count: u64) -> Result<i64, SequencerError>;

    /// Releases connections.
    async fn close(&self) {}
}

/// How an id is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Increment {
    /// From this runtime's reserved range.
    Weak,
    /// One reservation per id.
    Strong,
}

/// Default number of ids a WEAK call reserves when its segment is used up.
pub const DEFAULT_SEGMENT_SIZE: u64 = 10_000;
/// Most keys whose segments are kept; past that, idle keys are forgotten
/// (their unused ids skipped).
const MAX_KEYS: usize = 65_536;

/// The ids of one key this runtime holds: `next .. end` are reserved and
/// unused; every id handed out here is below `next`.
#[derive(Default)]
struct Segment {
    next: i64,
    end: i64,
}

#[derive(Default)]
struct KeyState {
    segment: Mutex<Segment>,
    /// One reservation at a time per key.
    refill: tokio::sync::Mutex<()>,
}

impl KeyState {
    fn take(&self) -> Option<i64> {
        let mut s = self.segment.lock().unwrap_or_else(|e| e.into_inner());
        (s.next < s.end).then(|| {
            s.next += 1;
            s.next - 1
        })
    }
}

/// The ids one runtime hands out for one store: WEAK ones from memory, in
/// segments of `segment_size`; STRONG ones straight from the store.
pub struct Segments {
    size: u64,
    keys: RwLock<HashMap<String, Arc<KeyState>>>,
}

impl Segments {
    /// `segment_size` ≥ 1.
    pub fn new(segment_size: u64) -> Self {
        Self {
            size: segment_size.max(1),
            keys: RwLock::new(HashMap::new()),
        }
    }

    pub fn segment_size(&self) -> u64 {
        self.size
    }

    fn key(&self, key: &str) -> Arc<KeyState> {
        if let Some(k) = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return k.clone();
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            // Forget keys no call is using (no one else holds their Arc,
            // and none can take one while the map is locked): their next
            // ids come from a new reservation, above all of theirs.
            keys.retain(|_, k| Arc::strong_count(k) > 1);
        }
        keys.entry(key.to_string()).or_default().clone()
    }

    /// The next id of `key`; `reserve(count)` reserves `count` ids in the
    /// store (see [`SequencerStore::reserve`]) and is called only when
    /// needed: once per segment for WEAK, once per call for STRONG.
    pub async fn next<E, F, Fut>(
        &self,
        key: &str,
        increment: Increment,
        mut reserve: F,
    ) -> Result<i64, E>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<i64, E>>,
    {
        let k = self.key(key);
        match increment {
            Increment::Strong => {
                let id = reserve(1).await?;
                let mut s = k.segment.lock().unwrap_or_else(|e| e.into_inner());
                // Later WEAK ids of this runtime stay above it.
                s.next = s.next.max(id.saturating_add(1));
                Ok(id)
            }
            Increment::Weak => {
                if let Some(id) = k.take() {
                    return Ok(id);
                }
                let _one = k.refill.lock().await;
                loop {
                    if let Some(id) = k.take() {
                        return Ok(id);
                    }
                    let first = reserve(self.size).await?;
                    let end = first.saturating_add(self.size as i64);
                    let mut s = k.segment.lock().unwrap_or_else(|e| e.into_inner());
                    // A STRONG call of this runtime may have taken an id
                    // above part of this range meanwhile: start above it.
                    s.next = s.next.max(first);
                    s.end = end;
                }
            }
        }
    }
}
