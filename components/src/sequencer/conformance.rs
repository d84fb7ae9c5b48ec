//! The checks every sequencer store runs, one test each per backend
//! through [`sequencer_conformance!`](crate::sequencer_conformance). A
//! backend's setup gives a function that opens a store over the same
//! backing data each time it is called, as each runtime (or a runtime
//! restarted) would open it.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Increment, Segments, SequencerStore};

/// Opens one more store over the backend's shared data.
pub type Open = Arc<dyn Fn() -> Arc<dyn SequencerStore> + Send + Sync>;

/// A key of its own for one check.
pub fn key(check: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("conf-{}-{check}", &id[..8])
}

/// Writes one `#[tokio::test]` per check for a backend, in a module named
/// after it: `sequencer_conformance!(sqlite, sqlite_open())`, where the
/// second argument is an expression giving a future of an [`Open`].
/// Attributes before the name go on every test.
#[macro_export]
macro_rules! sequencer_conformance {
    ($(#[$attr:meta])* $backend:ident, $setup:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::sequencer_conformance!(@tests [$(#[$attr])*] $setup;
                reservations_start_at_one_and_do_not_overlap,
                strong_ids_from_several_runtimes_are_unique_and_gapless,
                weak_ids_from_several_runtimes_are_unique_and_grow_per_caller,
                weak_and_strong_mixed_grow_within_a_runtime,
                ids_grow_across_a_restart);
        }
    };
    (@tests $attrs:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        $crate::sequencer_conformance!(@one $attrs $setup; $check);
        $crate::sequencer_conformance!(@tests $attrs $setup; $($rest),*);
    };
    (@tests $attrs:tt $setup:expr;) => {};
    (@one [$(#[$attr:meta])*] $setup:expr; $check:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let open = $setup.await;
            let k = $crate::sequencer::conformance::key(stringify!($check));
            $crate::sequencer::conformance::$check(open, &k).await;
        }
    };
}

/// One runtime: a store and its segments.
struct Runtime {
    store: Arc<dyn SequencerStore>,
    segments: Segments,
}

impl Runtime {
    fn new(open: &Open, segment: u64) -> Arc<Self> {
        Arc::new(Self {
            store: open(),
            segments: Segments::new(segment),
        })
    }

    async fn next(&self, key: &str, inc: Increment) -> i64 {
        self.segments
            .next(key, inc, |n| {
                let (store, key) = (self.store.clone(), key.to_string());
                async move { store.reserve(&key, n).await }
            })
            .await
            .unwrap_or_else(|e| panic!("next id of {key} ({inc:?}): {e}"))
    }
}

/// The first reservation of a key starts at 1; each one starts where the
/// last ended, whichever store made it.
pub async fn reservations_start_at_one_and_do_not_overlap(open: Open, k: &str) {
    let (a, b) = (open(), open());
    assert_eq!(a.reserve(k, 1).await.unwrap(), 1, "[reserve] first id");
    assert_eq!(b.reserve(k, 5).await.unwrap(), 2, "[reserve] 5 more");
    assert_eq!(a.reserve(k, 1).await.unwrap(), 7, "[reserve] after 2..=6");
    let other = format!("{k}/other.key");
    assert_eq!(
        b.reserve(&other, 3).await.unwrap(),
        1,
        "[reserve] another key"
    );
    assert_eq!(b.reserve(k, 1).await.unwrap(), 8, "[reserve] keys apart");
}

/// Four runtimes, eight callers each, STRONG: every id once, each
/// caller's ids growing, and together exactly 1..=N (one reservation per
/// id leaves no gap).
pub async fn strong_ids_from_several_runtimes_are_unique_and_gapless(open: Open, k: &str) {
    let ids = race(&open, k, Increment::Strong, 1).await;
    let n = ids.len() as i64;
    let mut sorted = ids;
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=n).collect::<Vec<_>>(),
        "[strong] ids of {n} calls"
    );
}

/// Four runtimes, eight callers each, WEAK with small segments: every id
/// once, each caller's ids growing.
pub async fn weak_ids_from_several_runtimes_are_unique_and_grow_per_caller(open: Open, k: &str) {
    let ids = race(&open, k, Increment::Weak, 7).await;
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "[weak] an id was handed out twice");
    assert!(ids.iter().all(|&i| i > 0), "[weak] ids start at 1");
}

/// Runs 4 runtimes × 8 callers × 25 calls; checks each caller's ids grow
/// and returns them all.
async fn race(open: &Open, k: &str, inc: Increment, segment: u64) -> Vec<i64> {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let rt = Runtime::new(open, segment);
        for _ in 0..8 {
            let (rt, k) = (rt.clone(), k.to_string());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::with_capacity(25);
                for _ in 0..25 {
                    mine.push(rt.next(&k, inc).await);
                }
                mine
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "[{inc:?}] one caller's ids do not grow: {mine:?}"
        );
        all.extend(mine);
    }
    all
}

/// One runtime mixing WEAK and STRONG on a key while another runtime
/// takes STRONG ids of it: each id the first hands out is above the last.
pub async fn weak_and_strong_mixed_grow_within_a_runtime(open: Open, k: &str) {
    let rt = Runtime::new(&open, 5);
    let other = Runtime::new(&open, 5);
    let mut last = 0;
    for i in 0..60 {
        let inc = if i % 3 == 2 {
            Increment::Strong
        } else {
            Increment::Weak
        };
        let id = rt.next(k, inc).await;
        assert!(
            id > last,
            "[mixed] call {i} ({inc:?}) gave {id} after {last}"
        );
        last = id;
        if i % 4 == 0 {
            other.next(k, Increment::Strong).await;
        }
    }
}

/// A runtime restarted (its store closed, a new one opened, its segments
/// lost) hands out ids above every id handed out before, WEAK and STRONG.
pub async fn ids_grow_across_a_restart(open: Open, k: &str) {
    let first = Runtime::new(&open, 100);
    let mut high = 0;
    for _ in 0..10 {
        high = high.max(first.next(k, Increment::Weak).await);
    }
    high = high.max(first.next(k, Increment::Strong).await);
    first.store.close().await;
    drop(first);
    let again = Runtime::new(&open, 100);
    let weak = again.next(k, Increment::Weak).await;
    assert!(weak > high, "[restart] WEAK {weak} after {high}");
    let strong = again.next(k, Increment::Strong).await;
    assert!(strong > weak, "[restart] STRONG {strong} after {weak}");
}
