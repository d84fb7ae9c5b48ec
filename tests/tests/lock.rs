//! The distributed lock block of real `weft` processes: two runtimes on
//! the embedded default `lockstore` (one SQLite file beside the local
//! registry) exclude each other; leases end by themselves; resources are
//! per app id; the same calls over shared memory; bad inputs named.

use std::time::{Duration, Instant};

use tonic::Code;
use weft_proto::runtime as pb;
use weft_proto::runtime::unlock_response::Status;
use weft_shm::{method as m, Client, ClientOptions};
use weft_tests::{Weft, WeftOptions};

fn lock(resource: &str, owner: &str, secs: i32) -> pb::TryLockRequest {
    pb::TryLockRequest {
        store_name: "lockstore".into(),
        resource_id: resource.into(),
        lock_owner: owner.into(),
        expiry_in_seconds: secs,
    }
}

fn unlock(resource: &str, owner: &str) -> pb::UnlockRequest {
    pb::UnlockRequest {
        store_name: "lockstore".into(),
        resource_id: resource.into(),
        lock_owner: owner.into(),
    }
}

#[tokio::test]
async fn runtimes_on_one_machine_share_the_default_lockstore() {
    // A registry directory of this test's own: the default lock database
    // sits beside it, shared by the runtimes started with it.
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let reg = registry.to_string_lossy().into_owned();
    let shm = dir.path().join("a-shm.sock");
    let start = |app: &str| WeftOptions::new(app).env("WEFT_LOCAL_REGISTRY_DIR", &reg);
    // Two instances of one app (same key prefix) and another app.
    let a = Weft::start(
        start("locker")
            .arg("--shm-socket")
            .arg(&shm.to_string_lossy()),
    )
    .await
    .expect("start a");
    let b = Weft::start(start("locker")).await.expect("start b");
    let other = Weft::start(start("other-app")).await.expect("start other");
    let (mut ca, mut cb, mut co) = (a.client().await, b.client().await, other.client().await);
    assert!(
        dir.path().join("registry.locks.db").exists(),
        "default lock database"
    );

    let r = "orders-batch";
    assert!(
        ca.try_lock_alpha1(lock(r, "a", 60))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(
        !cb.try_lock_alpha1(lock(r, "b", 60))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    // Another app's resource of the same name is its own.
    assert!(
        co.try_lock_alpha1(lock(r, "o", 60))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let st = |resp: tonic::Response<pb::UnlockResponse>| resp.into_inner().status;
    assert_eq!(
        st(cb.unlock_alpha1(unlock(r, "b")).await.unwrap()),
        Status::LockBelongsToOthers as i32
    );
    assert_eq!(
        st(ca.unlock_alpha1(unlock(r, "a")).await.unwrap()),
        Status::Success as i32
    );
    assert_eq!(
        st(ca.unlock_alpha1(unlock(r, "a")).await.unwrap()),
        Status::LockDoesNotExist as i32
    );
    assert!(
        cb.try_lock_alpha1(lock(r, "b", 60))
            .await
            .unwrap()
            .into_inner()
            .success
    );

    // A holder that never unlocks: its 1 s lease ends by itself.
    let lease = "short-lease";
    assert!(
        ca.try_lock_alpha1(lock(lease, "a", 1))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cb
        .try_lock_alpha1(lock(lease, "b", 60))
        .await
        .unwrap()
        .into_inner()
        .success
    {
        assert!(
            Instant::now() < deadline,
            "a 1 s lease still held after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same over shared memory (runtime A's session).
    let (got, status) = tokio::task::spawn_blocking(move || {
        let mut s = Client::connect(&shm, ClientOptions::new("locker")).expect("shm session");
        let got: pb::TryLockResponse = s
            .unary(m::TRY_LOCK_ALPHA1, &lock("shm-res", "a", 60))
            .unwrap();
        let un: pb::UnlockResponse = s.unary(m::UNLOCK_ALPHA1, &unlock("shm-res", "a")).unwrap();
        (got.success, un.status)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}\nruntime A's log:\n{}", a.logs()));
    assert!(got);
    assert_eq!(status, Status::Success as i32);

    // Bad inputs, each naming the field or the store.
    for (req, field) in [
        (lock("", "a", 5), "resource_id"),
        (lock("r", "", 5), "lock_owner"),
        (lock("r", "a", 0), "expiry_in_seconds"),
        (lock("r", "a", -3), "expiry_in_seconds"),
        (lock("r||x", "a", 5), "resource_id"),
    ] {
        let e = ca.try_lock_alpha1(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let e = ca
        .try_lock_alpha1(pb::TryLockRequest {
            store_name: "nolock".into(),
            ..lock("r", "a", 5)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("nolock") && e.message().contains("lockstore"),
        "{e:?}"
    );
    let e = ca.unlock_alpha1(unlock("r", "")).await.unwrap_err();
    assert!(e.message().contains("lock_owner"), "{e:?}");
}
