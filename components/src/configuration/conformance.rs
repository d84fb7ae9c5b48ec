//! Conformance suite every configuration backend runs.
//!
//! The configuration API is read-only, so the suite writes through a
//! backend-specific [`ConfigurationWriter`] (rewriting a file, running SQL,
//! ...). Each check uses its own key prefix (unique per run), so checks can
//! share one store and one run can share a store with other data. Checks
//! panic with a message naming the check on failure, like assertions.
//!
//! Waits are bounded by [`WAIT`] so a broken backend fails instead of
//! hanging; the bound is not a latency requirement.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ConfigurationItem, ConfigurationStore, Feature, Items, DELETED_METADATA_KEY};

/// Longest wait for an expected change.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait for changes that must not arrive.
pub const QUIET: Duration = Duration::from_millis(500);

/// Writes values to the backend behind a store, the way an operator would.
/// A write must be complete (visible to `get`) when the call returns.
#[async_trait]
pub trait ConfigurationWriter: Send + Sync {
    async fn put(&self, key: &str, value: &str);
    async fn delete(&self, key: &str);
}

/// What one conformance test runs its check on: a store, the writer behind
/// it, and what to undo afterwards.
#[async_trait]
pub trait ConfigurationFixture: Send + Sync + Sized {
    fn store(&self) -> &dyn ConfigurationStore;
    fn writer(&self) -> &dyn ConfigurationWriter;
    async fn finish(self);
}

/// A key prefix of its own for one check.
pub fn prefix(check: &str) -> String {
    let run = uuid::Uuid::new_v4().simple().to_string();
    format!("conf-{}-{check}-", &run[..8])
}

/// Writes one `#[tokio::test]` per check for a backend, in a module named
/// after it: `configuration_conformance!(file, file_fixture())`, where the
/// second argument is an expression giving a future of a
/// [`ConfigurationFixture`]. Attributes before the name go on every test.
/// The subscription checks fail for a store without [`Feature::Subscribe`].
#[macro_export]
macro_rules! configuration_conformance {
    ($(#[$attr:meta])* $backend:ident, $setup:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::configuration_conformance!(@tests [$(#[$attr])*] $setup;
                get_specific_and_all, missing_keys_are_absent, version_changes_with_value,
                subscribe_to_keys, subscribe_to_all, deletion_is_delivered, two_subscribers,
                dropped_receiver, burst_ends_with_final_value);
        }
    };
    (@tests $attrs:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        $crate::configuration_conformance!(@one $attrs $setup; $check);
        $crate::configuration_conformance!(@tests $attrs $setup; $($rest),*);
    };
    (@tests $attrs:tt $setup:expr;) => {};
    (@one [$(#[$attr:meta])*] $setup:expr; $check:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            use $crate::configuration::conformance::ConfigurationFixture as _;
            let fixture = $setup.await;
            let p = $crate::configuration::conformance::prefix(stringify!($check));
            $crate::configuration::conformance::$check(fixture.store(), fixture.writer(), &p).await;
            fixture.finish().await;
        }
    };
}

/// Fails `check` unless `store` pushes changes.
fn requires_subscribe(store: &dyn ConfigurationStore, check: &str) {
    assert!(
        store.features().contains(&Feature::Subscribe),
        "[{check}] the store does not advertise Subscribe: run this backend's checks without the subscription ones"
    );
}

/// Runs every check.
pub async fn run_all(store: &dyn ConfigurationStore, writer: &dyn ConfigurationWriter) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let p = |check: &str| format!("conf-{}-{check}-", &run[..8]);

    get_specific_and_all(store, writer, &p("get")).await;
    missing_keys_are_absent(store, writer, &p("missing")).await;
    version_changes_with_value(store, writer, &p("version")).await;
    if !store.features().contains(&Feature::Subscribe) {
        return;
    }
    subscribe_to_keys(store, writer, &p("subkeys")).await;
    subscribe_to_all(store, writer, &p("suball")).await;
    deletion_is_delivered(store, writer, &p("delete")).await;
    two_subscribers(store, writer, &p("two")).await;
    dropped_receiver(store, writer, &p("dropped")).await;
    burst_ends_with_final_value(store, writer, &p("burst")).await;
}

fn keys(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

async fn get(store: &dyn ConfigurationStore, ks: &[String], check: &str) -> Items {
    store
        .get(ks)
        .await
        .unwrap_or_else(|e| panic!("[{check}] get({ks:?}) failed: {e}"))
}

async fn subscribe(
    store: &dyn ConfigurationStore,
    ks: &[String],
    check: &str,
) -> mpsc::Receiver<Items> {
    store
        .subscribe(ks)
        .await
        .unwrap_or_else(|e| panic!("[{check}] subscribe({ks:?}) failed: {e}"))
}

/// Reads messages, merging them into `seen`, until `done(seen)` holds.
/// Panics after [`WAIT`].
async fn wait_until(
    rx: &mut mpsc::Receiver<Items>,
    seen: &mut HashMap<String, ConfigurationItem>,
    check: &str,
    what: &str,
    done: impl Fn(&HashMap<String, ConfigurationItem>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(items)) => seen.extend(items),
            Ok(None) => {
                panic!("[{check}] subscription ended while waiting for {what}; seen {seen:?}")
            }
            Err(_) => panic!("[{check}] no {what} within {WAIT:?}; seen {seen:?}"),
        }
    }
}

/// Reads whatever arrives within [`QUIET`].
async fn drain(rx: &mut mpsc::Receiver<Items>, seen: &mut HashMap<String, ConfigurationItem>) {
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(items)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        seen.extend(items);
    }
}

fn value_is<'a>(
    key: &'a str,
    value: &'a str,
) -> impl Fn(&HashMap<String, ConfigurationItem>) -> bool + 'a {
    move |seen| {
        seen.get(key)
            .is_some_and(|i| i.value == value && !is_deleted(i))
    }
}

fn is_deleted(item: &ConfigurationItem) -> bool {
    item.metadata.get(DELETED_METADATA_KEY).map(String::as_str) == Some("true")
}

/// `get` of listed keys returns exactly those that exist; `get` of no keys
/// returns everything.
pub async fn get_specific_and_all(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "get specific and all";
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    writer.put(&a, "value a").await;
    writer.put(&b, "value b").await;
    writer.put(&c, "value c").await;

    let items = get(store, &[a.clone(), b.clone()], check).await;
    assert_eq!(
        items.len(),
        2,
        "[{check}] expected exactly {a} and {b}: {items:?}"
    );
    assert_eq!(items[&a].value, "value a", "[{check}]");
    assert_eq!(items[&b].value, "value b", "[{check}]");
    assert!(
        !items[&a].version.is_empty(),
        "[{check}] items must have a version"
    );

    let all = get(store, &[], check).await;
    for (k, v) in [(&a, "value a"), (&b, "value b"), (&c, "value c")] {
        assert_eq!(
            all.get(k).map(|i| i.value.as_str()),
            Some(v),
            "[{check}] get(all) lacks {k}: {all:?}"
        );
    }
    assert_eq!(
        all[&a], items[&a],
        "[{check}] get(all) and get(keys) disagree"
    );
}

/// Keys that do not exist are absent, not errors.
pub async fn missing_keys_are_absent(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "missing keys";
    let (present, missing) = (format!("{p}present"), format!("{p}missing"));
    writer.put(&present, "here").await;
    let items = get(store, &[present.clone(), missing.clone()], check).await;
    assert_eq!(items.len(), 1, "[{check}] {items:?}");
    assert!(items.contains_key(&present), "[{check}] {items:?}");
    assert!(
        get(store, std::slice::from_ref(&missing), check)
            .await
            .is_empty(),
        "[{check}]"
    );

    writer.delete(&present).await;
    assert!(
        get(store, std::slice::from_ref(&present), check)
            .await
            .is_empty(),
        "[{check}] a deleted key must be absent"
    );
}

/// The version changes when the value changes.
pub async fn version_changes_with_value(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "version changes";
    let k = format!("{p}k");
    writer.put(&k, "one").await;
    let v1 = get(store, std::slice::from_ref(&k), check)
        .await
        .remove(&k)
        .expect("written key");
    writer.put(&k, "two").await;
    let v2 = get(store, std::slice::from_ref(&k), check)
        .await
        .remove(&k)
        .expect("written key");
    assert_eq!(v2.value, "two", "[{check}]");
    assert!(
        !v1.version.is_empty() && !v2.version.is_empty(),
        "[{check}] empty version"
    );
    assert_ne!(
        v1.version, v2.version,
        "[{check}] version must change with the value"
    );
}

/// A subscription to some keys sees their changes and no others.
pub async fn subscribe_to_keys(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "subscribe to keys";
    requires_subscribe(store, check);
    let (mine, other) = (format!("{p}mine"), format!("{p}other"));
    writer.put(&mine, "0").await;
    writer.put(&other, "0").await;
    let mut rx = subscribe(store, std::slice::from_ref(&mine), check).await;

    writer.put(&other, "1").await;
    writer.put(&mine, "1").await;
    let mut seen = HashMap::new();
    wait_until(
        &mut rx,
        &mut seen,
        check,
        "change to the subscribed key",
        value_is(&mine, "1"),
    )
    .await;
    assert!(
        !seen[&mine].version.is_empty(),
        "[{check}] pushed items carry a version"
    );
    writer.put(&other, "2").await;
    drain(&mut rx, &mut seen).await;
    assert!(
        !seen.contains_key(&other),
        "[{check}] received a change to an unsubscribed key: {seen:?}"
    );
}

/// A subscription to all keys sees a change to any key.
pub async fn subscribe_to_all(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "subscribe to all";
    requires_subscribe(store, check);
    let mut rx = subscribe(store, &[], check).await;
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    writer.put(&a, "x").await;
    writer.put(&b, "y").await;
    let mut seen = HashMap::new();
    wait_until(&mut rx, &mut seen, check, "changes to two new keys", |s| {
        value_is(&a, "x")(s) && value_is(&b, "y")(s)
    })
    .await;
}

/// A removed key is delivered with an empty value and `deleted=true`.
pub async fn deletion_is_delivered(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "deletion";
    requires_subscribe(store, check);
    let k = format!("{p}k");
    writer.put(&k, "doomed").await;
    let mut rx = subscribe(store, &keys(&[&k]), check).await;
    writer.delete(&k).await;
    let mut seen = HashMap::new();
    wait_until(&mut rx, &mut seen, check, "deletion", |s| {
        s.get(&k).is_some_and(is_deleted)
    })
    .await;
    assert_eq!(
        seen[&k].value, "",
        "[{check}] a deleted item has an empty value"
    );
}

/// Two subscribers to one key both receive its change.
pub async fn two_subscribers(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "two subscribers";
    requires_subscribe(store, check);
    let k = format!("{p}k");
    writer.put(&k, "0").await;
    let mut rx1 = subscribe(store, &keys(&[&k]), check).await;
    let mut rx2 = subscribe(store, &[], check).await;
    writer.put(&k, "1").await;
    let (mut s1, mut s2) = (HashMap::new(), HashMap::new());
    wait_until(
        &mut rx1,
        &mut s1,
        check,
        "change (first subscriber)",
        value_is(&k, "1"),
    )
    .await;
    wait_until(
        &mut rx2,
        &mut s2,
        check,
        "change (second subscriber)",
        value_is(&k, "1"),
    )
    .await;
}

/// Dropping one receiver does not disturb another subscriber.
pub async fn dropped_receiver(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "dropped receiver";
    requires_subscribe(store, check);
    let k = format!("{p}k");
    writer.put(&k, "0").await;
    let dropped = subscribe(store, &keys(&[&k]), check).await;
    let mut rx = subscribe(store, &keys(&[&k]), check).await;
    drop(dropped);
    let mut seen = HashMap::new();
    for v in ["1", "2"] {
        writer.put(&k, v).await;
        wait_until(
            &mut rx,
            &mut seen,
            check,
            "change after another receiver was dropped",
            value_is(&k, v),
        )
        .await;
    }
}

/// After a burst of writes to one key, the last value a subscriber sees is
/// the final one (intermediate values may be coalesced or skipped).
pub async fn burst_ends_with_final_value(
    store: &dyn ConfigurationStore,
    writer: &dyn ConfigurationWriter,
    p: &str,
) {
    let check = "burst";
    requires_subscribe(store, check);
    let k = format!("{p}k");
    writer.put(&k, "start").await;
    let mut rx = subscribe(store, &keys(&[&k]), check).await;
    for i in 0..50 {
        writer.put(&k, &format!("v{i}")).await;
    }
    let mut seen = HashMap::new();
    wait_until(
        &mut rx,
        &mut seen,
        check,
        "the final value of the burst",
        value_is(&k, "v49"),
    )
    .await;
    drain(&mut rx, &mut seen).await;
    assert_eq!(
        seen[&k].value, "v49",
        "[{check}] a stale value arrived after the final one"
    );
    let current = get(store, std::slice::from_ref(&k), check).await;
    assert_eq!(
        current[&k], seen[&k],
        "[{check}] last pushed item differs from get()"
    );
}
