//! Conformance suite every state store runs (from its tests).
//!
//! [`state_conformance!`](crate::state_conformance) writes one test per
//! check for a backend; [`run_all`] runs every check the store's
//! [`StateStore::features`] allow in one call; each check is also public. Checks use keys under a fresh random prefix,
//! so they can share a database with each other and with other runs. A
//! failing check panics with a message naming the check and what differed.
//!
//! Timing: nothing asserts that an operation is fast. The TTL check only
//! requires that an item written with a 1 s TTL disappears within a
//! generous bound, polling in between.

use std::time::{Duration, SystemTime};

use super::{
    Concurrency, Consistency, DeleteRequest, EntryRef, Feature, Operation, SetRequest, StateEntry,
    StateError, StateStore,
};

/// How long the TTL check waits for an item with a 1 s TTL to disappear.
const EXPIRY_BOUND: Duration = Duration::from_secs(15);
/// Tasks in the concurrency check.
const CONCURRENT_TASKS: usize = 20;
/// Attempts each task of the concurrency check gets before the check fails.
const MAX_ATTEMPTS: usize = 1_000;

/// What one conformance test runs its check on, and what to undo after it
/// (close the store, drop a test table).
#[async_trait::async_trait]
pub trait StateFixture: Send + Sync + Sized {
    fn store(&self) -> &dyn StateStore;
    async fn finish(self);
}

#[async_trait::async_trait]
impl StateFixture for std::sync::Arc<dyn StateStore> {
    fn store(&self) -> &dyn StateStore {
        self.as_ref()
    }

    async fn finish(self) {
        self.close().await;
    }
}

/// Writes one `#[tokio::test]` per check of this suite, in a module named
/// after the backend: `state_conformance!(sqlite, sqlite_store())`, where
/// the second argument is an expression (evaluated once per test) giving
/// a future of a [`StateFixture`]. Attributes before the name (for example
/// `#[cfg_attr(weft_no_pg, ignore = "needs PostgreSQL")]`) go on every
/// test. Checks of a capability ([`Feature`]) fail when the backend does not
/// advertise it: a backend without one lists its checks by hand.
#[macro_export]
macro_rules! state_conformance {
    ($(#[$attr:meta])* $backend:ident, $setup:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::state_conformance!(@tests [$(#[$attr])*] $setup;
                get_missing_is_none, round_trip_binary_values, overwrite_changes_etag,
                delete_missing_without_etag_succeeds, bulk_get_keeps_order,
                etag_first_write, etag_last_write, etag_unspecified, etag_delete,
                concurrent_increments, transaction_applies_all,
                transaction_is_all_or_nothing, transaction_sees_its_own_writes,
                ttl_expires, huge_ttl_is_accepted);
        }
    };
    (@tests $attrs:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        $crate::state_conformance!(@one $attrs $setup; $check);
        $crate::state_conformance!(@tests $attrs $setup; $($rest),*);
    };
    (@tests $attrs:tt $setup:expr;) => {};
    (@one [$(#[$attr:meta])*] $setup:expr; $check:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            use $crate::state::conformance::StateFixture as _;
            let fixture = $setup.await;
            $crate::state::conformance::$check(fixture.store()).await;
            fixture.finish().await;
        }
    };
}

/// Fails `check` unless `store` advertises `feature`.
fn requires(store: &dyn StateStore, feature: Feature, check: &str) {
    assert!(
        store.features().contains(&feature),
        "[{check}] the store does not advertise {feature:?}: run this backend's checks without the {feature:?} ones"
    );
}

/// Runs every check that applies to `store`.
pub async fn run_all(store: &dyn StateStore) {
    get_missing_is_none(store).await;
    round_trip_binary_values(store).await;
    overwrite_changes_etag(store).await;
    delete_missing_without_etag_succeeds(store).await;
    bulk_get_keeps_order(store).await;
    if store.features().contains(&Feature::Etag) {
        etag_first_write(store).await;
        etag_last_write(store).await;
        etag_unspecified(store).await;
        etag_delete(store).await;
        concurrent_increments(store).await;
    }
    if store.features().contains(&Feature::Transactional) {
        transaction_applies_all(store).await;
        transaction_is_all_or_nothing(store).await;
        if store.features().contains(&Feature::Etag) {
            transaction_sees_its_own_writes(store).await;
        }
    }
    if store.features().contains(&Feature::Ttl) {
        ttl_expires(store).await;
        huge_ttl_is_accepted(store).await;
    }
}

/// A fresh key prefix for one check.
fn prefix(check: &str) -> String {
    format!("conformance-{check}-{}", uuid::Uuid::new_v4().simple())
}

fn set(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.to_string(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn set_with(key: &str, value: &[u8], concurrency: Concurrency, etag: Option<&str>) -> SetRequest {
    SetRequest {
        key: key.to_string(),
        value: value.to_vec(),
        etag: etag.map(str::to_string),
        concurrency,
        ..Default::default()
    }
}

fn delete_with(key: &str, concurrency: Concurrency, etag: Option<&str>) -> DeleteRequest {
    DeleteRequest {
        key: key.to_string(),
        etag: etag.map(str::to_string),
        concurrency,
        ..Default::default()
    }
}

/// Reads `key` with `get` and, when the store answers reads in place
/// ([`StateStore::get_now`]), checks that the lent item is the same.
async fn get(store: &dyn StateStore, check: &str, key: &str) -> Option<StateEntry> {
    let got = store
        .get(key, Consistency::Strong)
        .await
        .unwrap_or_else(|e| panic!("[{check}] get '{key}' failed: {e}"));
    let mut lent = None;
    let answered = store.get_now(key, Consistency::Strong, &mut |e: Option<EntryRef<'_>>| {
        lent = Some(e.map(|e| StateEntry {
            value: e.value.to_vec(),
            etag: e.etag.to_string(),
            expires_at: e.expires_at,
        }));
    });
    if let Some(r) = answered {
        r.unwrap_or_else(|e| panic!("[{check}] get_now '{key}' failed: {e}"));
        let lent = lent.unwrap_or_else(|| panic!("[{check}] get_now '{key}' never lent"));
        // An item may expire between the two reads.
        let expired_between = lent.is_none()
            && got
                .as_ref()
                .and_then(|e| e.expires_at)
                .is_some_and(|at| at <= SystemTime::now());
        assert!(
            lent == got || expired_between,
            "[{check}] get_now '{key}' lent {lent:?}, get returned {got:?}"
        );
    }
    got
}

/// Reads `key`, which must exist.
async fn get_existing(store: &dyn StateStore, check: &str, key: &str) -> StateEntry {
    get(store, check, key)
        .await
        .unwrap_or_else(|| panic!("[{check}] '{key}' should exist but get returned None"))
}

async fn must_set(store: &dyn StateStore, check: &str, req: SetRequest) {
    let what = format!(
        "{:?} set of '{}' (etag {:?})",
        req.concurrency, req.key, req.etag
    );
    if let Err(e) = store.set(req).await {
        panic!("[{check}] {what} should succeed but failed: {e}");
    }
}

/// Sets `key` to `value` unconditionally and returns the new entry.
async fn put(store: &dyn StateStore, check: &str, key: &str, value: &[u8]) -> StateEntry {
    must_set(store, check, set(key, value)).await;
    get_existing(store, check, key).await
}

fn assert_mismatch(check: &str, what: &str, key: &str, result: Result<(), StateError>) {
    match result {
        Err(StateError::EtagMismatch { key: k }) if k == key => {}
        other => {
            panic!("[{check}] {what} should fail with EtagMismatch for '{key}', got {other:?}")
        }
    }
}

/// A key that was never written reads as `None`.
pub async fn get_missing_is_none(store: &dyn StateStore) {
    let check = "get_missing_is_none";
    let key = prefix(check);
    assert_eq!(get(store, check, &key).await, None, "[{check}]");
}

/// Values round-trip byte for byte, including empty, non-UTF-8 and 1 MiB
/// values; items without a TTL report no expiry.
pub async fn round_trip_binary_values(store: &dyn StateStore) {
    let check = "round_trip_binary_values";
    let p = prefix(check);
    let big: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let values: [(&str, Vec<u8>); 4] = [
        ("empty", Vec::new()),
        ("text", b"hello, weft".to_vec()),
        ("binary", vec![0, 255, 0xc3, 0x28, 0, 10, 13, 0x80]),
        ("1mib", big),
    ];
    for (name, value) in values {
        let key = format!("{p}-{name}");
        let entry = put(store, check, &key, &value).await;
        assert!(
            entry.value == value,
            "[{check}] '{key}': read back {} bytes that differ from the {} written",
            entry.value.len(),
            value.len()
        );
        assert!(!entry.etag.is_empty(), "[{check}] '{key}': empty etag");
        assert_eq!(entry.expires_at, None, "[{check}] '{key}': no TTL was set");
    }
}

/// Every successful write gives the item a new etag.
pub async fn overwrite_changes_etag(store: &dyn StateStore) {
    let check = "overwrite_changes_etag";
    let key = prefix(check);
    let first = put(store, check, &key, b"one").await;
    let second = put(store, check, &key, b"two").await;
    assert_eq!(second.value, b"two", "[{check}] overwrite not visible");
    assert_ne!(first.etag, second.etag, "[{check}] etag did not change");
    let third = put(store, check, &key, b"two").await;
    assert_ne!(
        second.etag, third.etag,
        "[{check}] same value, etag must still change"
    );
}

/// Deleting a missing key without an etag succeeds, in every mode.
pub async fn delete_missing_without_etag_succeeds(store: &dyn StateStore) {
    let check = "delete_missing_without_etag_succeeds";
    let key = prefix(check);
    for concurrency in [
        Concurrency::Unspecified,
        Concurrency::FirstWrite,
        Concurrency::LastWrite,
    ] {
        if let Err(e) = store.delete(delete_with(&key, concurrency, None)).await {
            panic!("[{check}] {concurrency:?} delete of missing '{key}' failed: {e}");
        }
    }
    // And an existing key is deleted without an etag.
    put(store, check, &key, b"v").await;
    if let Err(e) = store
        .delete(delete_with(&key, Concurrency::Unspecified, None))
        .await
    {
        panic!("[{check}] delete of '{key}' without etag failed: {e}");
    }
    assert_eq!(get(store, check, &key).await, None, "[{check}] not deleted");
}

/// `bulk_get` answers in the order of the keys, with `None` for missing
/// keys.
pub async fn bulk_get_keeps_order(store: &dyn StateStore) {
    let check = "bulk_get_keeps_order";
    let p = prefix(check);
    let a = put(store, check, &format!("{p}-a"), b"A").await;
    let c = put(store, check, &format!("{p}-c"), b"C").await;
    let keys: Vec<String> = ["c", "missing", "a", "c"]
        .iter()
        .map(|k| format!("{p}-{k}"))
        .collect();
    let got = store
        .bulk_get(&keys)
        .await
        .unwrap_or_else(|e| panic!("[{check}] bulk_get failed: {e}"));
    assert_eq!(
        got,
        vec![Some(c.clone()), None, Some(a), Some(c)],
        "[{check}] bulk_get of {keys:?}"
    );
    let empty = store
        .bulk_get(&[])
        .await
        .unwrap_or_else(|e| panic!("[{check}] bulk_get of no keys failed: {e}"));
    assert!(empty.is_empty(), "[{check}] bulk_get of no keys");
}

/// `FirstWrite`: an etag must match; without one the key must not exist.
pub async fn etag_first_write(store: &dyn StateStore) {
    let check = "etag_first_write";
    requires(store, Feature::Etag, check);
    let key = prefix(check);
    let fw = Concurrency::FirstWrite;

    assert_mismatch(
        check,
        "FirstWrite set with an etag of a missing key",
        &key,
        store
            .set(set_with(&key, b"x", fw, Some("no-such-etag")))
            .await,
    );
    must_set(store, check, set_with(&key, b"1", fw, None)).await;
    let v1 = get_existing(store, check, &key).await;
    assert_eq!(v1.value, b"1", "[{check}] first write");

    assert_mismatch(
        check,
        "FirstWrite set without etag of an existing key",
        &key,
        store.set(set_with(&key, b"x", fw, None)).await,
    );
    must_set(store, check, set_with(&key, b"2", fw, Some(&v1.etag))).await;
    let v2 = get_existing(store, check, &key).await;
    assert_eq!(v2.value, b"2", "[{check}] write with the current etag");
    assert_ne!(v1.etag, v2.etag, "[{check}] etag did not change");

    assert_mismatch(
        check,
        "FirstWrite set with a stale etag",
        &key,
        store.set(set_with(&key, b"x", fw, Some(&v1.etag))).await,
    );
    assert_eq!(
        get_existing(store, check, &key).await,
        v2,
        "[{check}] a failed write changed the item"
    );
}

/// `LastWrite`: the etag is ignored.
pub async fn etag_last_write(store: &dyn StateStore) {
    let check = "etag_last_write";
    requires(store, Feature::Etag, check);
    let key = prefix(check);
    let lw = Concurrency::LastWrite;

    must_set(store, check, set_with(&key, b"1", lw, Some("no-such-etag"))).await;
    let v1 = get_existing(store, check, &key).await;
    must_set(store, check, set_with(&key, b"2", lw, None)).await;
    let v2 = get_existing(store, check, &key).await;
    must_set(store, check, set_with(&key, b"3", lw, Some(&v1.etag))).await;
    let v3 = get_existing(store, check, &key).await;
    assert_eq!(
        v3.value, b"3",
        "[{check}] LastWrite with a stale etag must win"
    );
    assert_ne!(v2.etag, v3.etag, "[{check}] etag did not change");
}

/// `Unspecified`: an etag must match; without one the write is
/// unconditional.
pub async fn etag_unspecified(store: &dyn StateStore) {
    let check = "etag_unspecified";
    requires(store, Feature::Etag, check);
    let key = prefix(check);
    let un = Concurrency::Unspecified;

    assert_mismatch(
        check,
        "set with an etag of a missing key",
        &key,
        store
            .set(set_with(&key, b"x", un, Some("no-such-etag")))
            .await,
    );
    must_set(store, check, set_with(&key, b"1", un, None)).await;
    let v1 = get_existing(store, check, &key).await;
    must_set(store, check, set_with(&key, b"2", un, Some(&v1.etag))).await;
    let v2 = get_existing(store, check, &key).await;
    assert_eq!(v2.value, b"2", "[{check}] write with the current etag");
    assert_mismatch(
        check,
        "set with a stale etag",
        &key,
        store.set(set_with(&key, b"x", un, Some(&v1.etag))).await,
    );
    must_set(store, check, set_with(&key, b"3", un, None)).await;
    assert_eq!(
        get_existing(store, check, &key).await.value,
        b"3",
        "[{check}]"
    );
}

/// Deletes: an etag must match (unless `LastWrite`); a missing key with an
/// etag is a mismatch.
pub async fn etag_delete(store: &dyn StateStore) {
    let check = "etag_delete";
    requires(store, Feature::Etag, check);
    let key = prefix(check);

    assert_mismatch(
        check,
        "delete with an etag of a missing key",
        &key,
        store
            .delete(delete_with(
                &key,
                Concurrency::Unspecified,
                Some("no-such-etag"),
            ))
            .await,
    );
    let v1 = put(store, check, &key, b"1").await;
    let v2 = put(store, check, &key, b"2").await;
    for concurrency in [Concurrency::Unspecified, Concurrency::FirstWrite] {
        assert_mismatch(
            check,
            &format!("{concurrency:?} delete with a stale etag"),
            &key,
            store
                .delete(delete_with(&key, concurrency, Some(&v1.etag)))
                .await,
        );
    }
    assert_eq!(
        get(store, check, &key).await,
        Some(v2.clone()),
        "[{check}] a failed delete changed the item"
    );
    if let Err(e) = store
        .delete(delete_with(&key, Concurrency::FirstWrite, Some(&v2.etag)))
        .await
    {
        panic!("[{check}] delete of '{key}' with the current etag failed: {e}");
    }
    assert_eq!(get(store, check, &key).await, None, "[{check}] not deleted");

    put(store, check, &key, b"3").await;
    if let Err(e) = store
        .delete(delete_with(&key, Concurrency::LastWrite, Some(&v1.etag)))
        .await
    {
        panic!("[{check}] LastWrite delete of '{key}' with a stale etag failed: {e}");
    }
    assert_eq!(get(store, check, &key).await, None, "[{check}] not deleted");
}

/// Tasks doing read-modify-write of one counter with `FirstWrite` and the
/// etag they read, retrying on mismatch, lose no increment.
pub async fn concurrent_increments(store: &dyn StateStore) {
    let check = "concurrent_increments";
    requires(store, Feature::Etag, check);
    let key = prefix(check);
    put(store, check, &key, b"0").await;

    let increment = |task: usize| {
        let key = key.clone();
        async move {
            for attempt in 0..MAX_ATTEMPTS {
                let current = get_existing(store, check, &key).await;
                let n: u64 = std::str::from_utf8(&current.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("[{check}] counter holds {:?}", current.value));
                let req = set_with(
                    &key,
                    (n + 1).to_string().as_bytes(),
                    Concurrency::FirstWrite,
                    Some(&current.etag),
                );
                match store.set(req).await {
                    Ok(()) => return,
                    Err(StateError::EtagMismatch { .. }) => {
                        // Let the others move; back off a little more each time.
                        let pause = Duration::from_millis((attempt as u64 % 10) + 1);
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => panic!("[{check}] task {task}: set failed: {e}"),
                }
            }
            panic!("[{check}] task {task}: no successful write in {MAX_ATTEMPTS} attempts");
        }
    };
    futures::future::join_all((0..CONCURRENT_TASKS).map(increment)).await;

    let end = get_existing(store, check, &key).await;
    assert_eq!(
        end.value,
        CONCURRENT_TASKS.to_string().as_bytes(),
        "[{check}] {CONCURRENT_TASKS} increments expected, counter is {:?}",
        String::from_utf8_lossy(&end.value)
    );
}

/// A transaction of sets and deletes applies all of them.
pub async fn transaction_applies_all(store: &dyn StateStore) {
    let check = "transaction_applies_all";
    requires(store, Feature::Transactional, check);
    let p = prefix(check);
    let gone = format!("{p}-gone");
    put(store, check, &gone, b"old").await;
    let ops = vec![
        Operation::Set(set(&format!("{p}-a"), b"A")),
        Operation::Set(set(&format!("{p}-b"), b"B")),
        Operation::Delete(delete_with(&gone, Concurrency::Unspecified, None)),
    ];
    if let Err(e) = store.transact(ops).await {
        panic!("[{check}] transaction failed: {e}");
    }
    assert_eq!(
        get_existing(store, check, &format!("{p}-a")).await.value,
        b"A"
    );
    assert_eq!(
        get_existing(store, check, &format!("{p}-b")).await.value,
        b"B"
    );
    assert_eq!(
        get(store, check, &gone).await,
        None,
        "[{check}] delete not applied"
    );
    if let Err(e) = store.transact(Vec::new()).await {
        panic!("[{check}] empty transaction failed: {e}");
    }
}

/// A transaction whose third operation fails leaves the first two
/// unapplied, and reports the failing key.
pub async fn transaction_is_all_or_nothing(store: &dyn StateStore) {
    let check = "transaction_is_all_or_nothing";
    requires(store, Feature::Transactional, check);
    let p = prefix(check);
    let (a, b, c) = (format!("{p}-a"), format!("{p}-b"), format!("{p}-c"));
    let b_before = put(store, check, &b, b"B0").await;
    let c_before = put(store, check, &c, b"C0").await;

    let ops = vec![
        Operation::Set(set(&a, b"A1")),
        Operation::Delete(delete_with(&b, Concurrency::Unspecified, None)),
        Operation::Set(set_with(
            &c,
            b"C1",
            Concurrency::FirstWrite,
            Some("stale-etag"),
        )),
    ];
    let result = store.transact(ops).await;
    if store.features().contains(&Feature::Etag) {
        assert_mismatch(check, "transaction with a stale etag in op 3", &c, result);
    } else {
        assert!(result.is_err(), "[{check}] transaction should have failed");
    }
    assert_eq!(
        get(store, check, &a).await,
        None,
        "[{check}] op 1 was applied"
    );
    assert_eq!(
        get(store, check, &b).await,
        Some(b_before),
        "[{check}] op 2 was applied"
    );
    assert_eq!(
        get(store, check, &c).await,
        Some(c_before),
        "[{check}] op 3 changed the item"
    );
}

/// Operations in a transaction see the earlier operations' effects.
pub async fn transaction_sees_its_own_writes(store: &dyn StateStore) {
    let check = "transaction_sees_its_own_writes";
    requires(store, Feature::Transactional, check);
    requires(store, Feature::Etag, check);
    let key = prefix(check);
    // The second FirstWrite finds the key the first one created.
    let ops = vec![
        Operation::Set(set_with(&key, b"1", Concurrency::FirstWrite, None)),
        Operation::Set(set_with(&key, b"2", Concurrency::FirstWrite, None)),
    ];
    assert_mismatch(
        check,
        "two first writes of one key",
        &key,
        store.transact(ops).await,
    );
    assert_eq!(
        get(store, check, &key).await,
        None,
        "[{check}] partly applied"
    );

    // Set then delete leaves nothing; delete then FirstWrite succeeds.
    let ops = vec![
        Operation::Set(set(&key, b"1")),
        Operation::Delete(delete_with(&key, Concurrency::Unspecified, None)),
    ];
    if let Err(e) = store.transact(ops).await {
        panic!("[{check}] set then delete failed: {e}");
    }
    assert_eq!(
        get(store, check, &key).await,
        None,
        "[{check}] set then delete"
    );
    put(store, check, &key, b"old").await;
    let ops = vec![
        Operation::Delete(delete_with(&key, Concurrency::Unspecified, None)),
        Operation::Set(set_with(&key, b"new", Concurrency::FirstWrite, None)),
    ];
    if let Err(e) = store.transact(ops).await {
        panic!("[{check}] delete then first write failed: {e}");
    }
    assert_eq!(
        get_existing(store, check, &key).await.value,
        b"new",
        "[{check}]"
    );
}

/// An item written with a 1 s TTL reports its expiry, disappears, and its
/// key then behaves as missing. Also checks TTLs set in a transaction.
pub async fn ttl_expires(store: &dyn StateStore) {
    let check = "ttl_expires";
    requires(store, Feature::Ttl, check);
    let p = prefix(check);
    let (key, tx_key, keep) = (format!("{p}-ttl"), format!("{p}-tx"), format!("{p}-keep"));
    let ttl = Duration::from_secs(1);

    let before = SystemTime::now();
    must_set(
        store,
        check,
        SetRequest {
            ttl: Some(ttl),
            ..set(&key, b"short-lived")
        },
    )
    .await;
    if store.features().contains(&Feature::Transactional) {
        let ops = vec![Operation::Set(SetRequest {
            ttl: Some(ttl),
            ..set(&tx_key, b"short-lived")
        })];
        if let Err(e) = store.transact(ops).await {
            panic!("[{check}] transaction with a TTL failed: {e}");
        }
    }
    put(store, check, &keep, b"forever").await;
    let after = SystemTime::now();

    // The item may already have expired on a very slow machine; if it is
    // still there it must report a plausible expiry (within a minute of
    // write time + TTL, allowing for clock skew with a database server).
    if let Some(entry) = get(store, check, &key).await {
        let at = entry.expires_at.unwrap_or_else(|| {
            panic!("[{check}] '{key}' was written with a TTL but reports no expiry")
        });
        let slack = Duration::from_secs(60);
        assert!(
            at + slack >= before + ttl && at <= after + ttl + slack,
            "[{check}] '{key}' expires at {at:?}, expected about {:?}",
            before + ttl
        );
    }

    let deadline = tokio::time::Instant::now() + EXPIRY_BOUND;
    loop {
        let entries = store
            .bulk_get(&[key.clone(), tx_key.clone()])
            .await
            .unwrap_or_else(|e| panic!("[{check}] bulk_get failed: {e}"));
        if entries.iter().all(Option::is_none) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "[{check}] items with a 1s TTL still readable after {EXPIRY_BOUND:?}: {:?}",
                entries.iter().map(Option::is_some).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(store, check, &key).await,
        None,
        "[{check}] get after expiry"
    );
    assert_eq!(
        get_existing(store, check, &keep).await.value,
        b"forever",
        "[{check}] an item without TTL disappeared"
    );

    // An expired key behaves as missing for conditional writes.
    if store.features().contains(&Feature::Etag) {
        assert_mismatch(
            check,
            "delete of an expired key with an etag",
            &key,
            store
                .delete(delete_with(
                    &key,
                    Concurrency::Unspecified,
                    Some("any-etag"),
                ))
                .await,
        );
        must_set(
            store,
            check,
            set_with(&key, b"again", Concurrency::FirstWrite, None),
        )
        .await;
        let entry = get_existing(store, check, &key).await;
        assert_eq!(entry.value, b"again", "[{check}] rewrite after expiry");
        assert_eq!(entry.expires_at, None, "[{check}] the rewrite has no TTL");
    }
}

/// A TTL far beyond any clock's range is accepted; the item stays readable.
pub async fn huge_ttl_is_accepted(store: &dyn StateStore) {
    let check = "huge_ttl_is_accepted";
    requires(store, Feature::Ttl, check);
    let key = prefix(check);
    must_set(
        store,
        check,
        SetRequest {
            ttl: Some(Duration::MAX),
            ..set(&key, b"v")
        },
    )
    .await;
    let entry = get_existing(store, check, &key).await;
    assert_eq!(entry.value, b"v", "[{check}]");
    if let Some(at) = entry.expires_at {
        assert!(
            at > SystemTime::now(),
            "[{check}] '{key}' reports an expiry in the past: {at:?}"
        );
    }
}
