//! Subscriber fan-out shared by the configuration backends.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch, Notify};

use super::file::lock;
use super::Items;

/// Capacity of each subscriber's channel (messages, not items).
pub const CHANNEL_CAPACITY: usize = 16;

/// Which keys live subscribers want (backends that filter at the source).
#[cfg(feature = "postgresql")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Keys(HashSet<String>),
}

#[cfg(feature = "postgresql")]
impl Scope {
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Keys(k) => k.contains(key),
        }
    }
}

/// Delivers changes to subscribers.
///
/// Each subscriber has a bounded channel fed by its own small task, and
/// a pending map. [`Hub::publish`] never blocks: it merges the changes a
/// subscriber wants into its pending map (a newer item for a key
/// replaces the older one) and wakes the task, which sends the whole
/// pending map as one message when the channel has room. A slow
/// subscriber therefore delays only itself, sees intermediate values
/// coalesced, and always ends up with every key's latest item. A
/// subscriber whose receiver was dropped is removed (its task notices
/// the closed channel at once).
#[derive(Default)]
pub struct Hub {
    subs: Mutex<Vec<Arc<Sub>>>,
    closed: AtomicBool,
    shutdown: Mutex<Option<watch::Sender<bool>>>,
}

struct Sub {
    /// None: every key.
    keys: Option<HashSet<String>>,
    pending: Mutex<Items>,
    wake: Notify,
    gone: AtomicBool,
}

impl Hub {
    /// Registers a subscriber for `keys` (all when empty). Must be
    /// called within a Tokio runtime.
    pub fn subscribe(&self, keys: &[String]) -> mpsc::Receiver<Items> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        if self.closed.load(Ordering::SeqCst) {
            return rx; // tx dropped: the receiver sees the end at once
        }
        let sub = Arc::new(Sub {
            keys: (!keys.is_empty()).then(|| keys.iter().cloned().collect()),
            pending: Mutex::new(Items::new()),
            wake: Notify::new(),
            gone: AtomicBool::new(false),
        });
        let shutdown = lock(&self.shutdown)
            .get_or_insert_with(|| watch::channel(false).0)
            .subscribe();
        lock(&self.subs).push(sub.clone());
        tokio::spawn(forward(sub, tx, shutdown));
        rx
    }

    /// Queues `changes` for every subscriber that wants them.
    pub fn publish(&self, changes: &Items) {
        if changes.is_empty() {
            return;
        }
        let mut subs = lock(&self.subs);
        subs.retain(|s| !s.gone.load(Ordering::SeqCst));
        for sub in subs.iter() {
            let mut added = false;
            {
                let mut pending = lock(&sub.pending);
                for (k, item) in changes {
                    if sub.keys.as_ref().is_none_or(|ks| ks.contains(k)) {
                        pending.insert(k.clone(), item.clone());
                        added = true;
                    }
                }
            }
            if added {
                sub.wake.notify_one();
            }
        }
    }

    #[cfg(feature = "postgresql")]
    /// The keys live subscribers want.
    pub fn scope(&self) -> Scope {
        let mut subs = lock(&self.subs);
        subs.retain(|s| !s.gone.load(Ordering::SeqCst));
        let mut keys = HashSet::new();
        for s in subs.iter() {
            match &s.keys {
                None => return Scope::All,
                Some(k) => keys.extend(k.iter().cloned()),
            }
        }
        Scope::Keys(keys)
    }

    /// Ends every subscription (receivers see the channel close) and
    /// refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(tx) = lock(&self.shutdown).as_ref() {
            let _ = tx.send(true);
        }
        lock(&self.subs).clear();
    }
}

async fn forward(sub: Arc<Sub>, tx: mpsc::Sender<Items>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            r = shutdown.wait_for(|s| *s) => { let _ = r; break }
            _ = sub.wake.notified() => {}
        }
        let batch = std::mem::take(&mut *lock(&sub.pending));
        if batch.is_empty() {
            continue;
        }
        // Waits only for this subscriber; publishers keep merging into
        // `pending` meanwhile.
        tokio::select! {
            r = tx.send(batch) => if r.is_err() { break },
            r = shutdown.wait_for(|s| *s) => { let _ = r; break }
        }
    }
    sub.gone.store(true, Ordering::SeqCst);
}
