//! The checks every lock store runs, one test each per backend through
//! [`lock_conformance!`](crate::lock_conformance). A backend's setup gives
//! two stores over the same backing data (as two runtimes would open it).

use std::sync::Arc;
use std::time::Duration;

use super::{LockStore, UnlockStatus};

/// A resource name of its own for one check.
pub fn resource(check: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("conf-{}-{check}", &id[..8])
}

/// Writes one `#[tokio::test]` per check for a backend, in a module named
/// after it: `lock_conformance!(sqlite, sqlite_pair())`, where the second
/// argument is an expression giving a future of two
/// `Arc<dyn LockStore>` sharing their locks. Attributes before the name go
/// on every test.
#[macro_export]
macro_rules! lock_conformance {
    ($(#[$attr:meta])* $backend:ident, $setup:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::lock_conformance!(@tests [$(#[$attr])*] $setup;
                one_owner_at_a_time, unlock_statuses, a_lease_ends_by_itself,
                concurrent_try_locks_have_one_winner, a_crashed_owner_loses_the_lock);
        }
    };
    (@tests $attrs:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        $crate::lock_conformance!(@one $attrs $setup; $check);
        $crate::lock_conformance!(@tests $attrs $setup; $($rest),*);
    };
    (@tests $attrs:tt $setup:expr;) => {};
    (@one [$(#[$attr:meta])*] $setup:expr; $check:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (a, b) = $setup.await;
            let r = $crate::lock::conformance::resource(stringify!($check));
            $crate::lock::conformance::$check(a, b, &r).await;
        }
    };
}

const LONG: Duration = Duration::from_secs(60);

/// While A holds the resource neither B nor A itself gets it; after A's
/// unlock B does. Another resource is independent.
pub async fn one_owner_at_a_time(a: Arc<dyn LockStore>, b: Arc<dyn LockStore>, r: &str) {
    assert!(
        a.try_lock(r, "owner-a", LONG).await.unwrap(),
        "[exclusive] first lock"
    );
    assert!(
        !b.try_lock(r, "owner-b", LONG).await.unwrap(),
        "[exclusive] B while A holds it"
    );
    assert!(
        !a.try_lock(r, "owner-a", LONG).await.unwrap(),
        "[exclusive] A again while holding it"
    );
    let other = format!("{r}-other");
    assert!(
        b.try_lock(&other, "owner-b", LONG).await.unwrap(),
        "[exclusive] another resource"
    );
    assert_eq!(a.unlock(r, "owner-a").await.unwrap(), UnlockStatus::Success);
    assert!(
        b.try_lock(r, "owner-b", LONG).await.unwrap(),
        "[exclusive] B after A's unlock"
    );
    assert_eq!(b.unlock(r, "owner-b").await.unwrap(), UnlockStatus::Success);
    assert_eq!(
        b.unlock(&other, "owner-b").await.unwrap(),
        UnlockStatus::Success
    );
}

/// Unlock answers Dapr's three statuses.
pub async fn unlock_statuses(a: Arc<dyn LockStore>, b: Arc<dyn LockStore>, r: &str) {
    assert_eq!(
        a.unlock(r, "owner-a").await.unwrap(),
        UnlockStatus::LockDoesNotExist,
        "[unlock] never locked"
    );
    assert!(a.try_lock(r, "owner-a", LONG).await.unwrap());
    assert_eq!(
        b.unlock(r, "owner-b").await.unwrap(),
        UnlockStatus::LockBelongsToOthers,
        "[unlock] someone else's"
    );
    assert_eq!(a.unlock(r, "owner-a").await.unwrap(), UnlockStatus::Success);
    assert_eq!(
        a.unlock(r, "owner-a").await.unwrap(),
        UnlockStatus::LockDoesNotExist,
        "[unlock] twice"
    );
}

/// A holder that never unlocks loses the resource when its lease ends
/// (bounded wait), and then cannot unlock it.
pub async fn a_lease_ends_by_itself(a: Arc<dyn LockStore>, b: Arc<dyn LockStore>, r: &str) {
    assert!(a
        .try_lock(r, "owner-a", Duration::from_secs(1))
        .await
        .unwrap());
    assert!(
        !b.try_lock(r, "owner-b", LONG).await.unwrap(),
        "[lease] before it ends"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if b.try_lock(r, "owner-b", LONG).await.unwrap() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "[lease] a 1 s lease still held after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        a.unlock(r, "owner-a").await.unwrap(),
        UnlockStatus::LockBelongsToOthers,
        "[lease] the old holder after expiry"
    );
    assert_eq!(b.unlock(r, "owner-b").await.unwrap(), UnlockStatus::Success);
}

/// Many owners racing through both stores: exactly one wins.
pub async fn concurrent_try_locks_have_one_winner(
    a: Arc<dyn LockStore>,
    b: Arc<dyn LockStore>,
    r: &str,
) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let r = r.to_string();
        tasks.push(tokio::spawn(async move {
            store
                .try_lock(&r, &format!("owner-{i}"), LONG)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "[race] winners among 16 owners");
}

/// A holder whose runtime ends without unlocking (its store closed and
/// dropped) loses the lock: at once for a store whose locks live in its
/// session ([`LockStore::releases_on_close`], taken for a minute here so
/// that only the session's end can free it), else when its lease ends.
pub async fn a_crashed_owner_loses_the_lock(a: Arc<dyn LockStore>, b: Arc<dyn LockStore>, r: &str) {
    let by_session = a.releases_on_close();
    let lease = if by_session {
        LONG
    } else {
        Duration::from_secs(2)
    };
    assert!(a.try_lock(r, "owner-a", lease).await.unwrap());
    assert!(
        !b.try_lock(r, "owner-b", LONG).await.unwrap(),
        "[crash] B while A holds it"
    );
    a.close().await;
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if b.try_lock(r, "owner-b", LONG).await.unwrap() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "[crash] the lock of a closed store still held after 15 s (ends with the session: {by_session})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.unlock(r, "owner-b").await.unwrap(), UnlockStatus::Success);
}
