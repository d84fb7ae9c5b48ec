//! The sequencer block of real `weft` processes: runtimes on one machine
//! share the embedded default `sequencer` (one SQLite file beside the local
//! registry); ids grow across runtimes and a restart; keys are per app id;
//! the same calls over shared memory; bad inputs named. With PostgreSQL and
//! ZooKeeper: `sequencer.postgresql`, `sequencer.zookeeper`, and a
//! `lock.zookeeper` lock freed when its holder's runtime is killed.

use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Code;
use weft_proto::sequencer as pb;
use weft_proto::sequencer::sequencer_client::SequencerClient;
use weft_proto::sequencer::sequencer_options::Increment;
use weft_shm::{method as m, Client, ClientOptions};
use weft_tests::{Weft, WeftOptions};

fn next(store: &str, key: &str, inc: Increment) -> pb::GetNextIdRequest {
    pb::GetNextIdRequest {
        store_name: store.into(),
        key: key.into(),
        options: Some(pb::SequencerOptions {
            increment: inc as i32,
        }),
        metadata: Default::default(),
    }
}

async fn client(w: &Weft) -> SequencerClient<Channel> {
    SequencerClient::new(w.channel().await)
}

async fn id(c: &mut SequencerClient<Channel>, store: &str, key: &str, inc: Increment) -> i64 {
    c.get_next_id(next(store, key, inc))
        .await
        .unwrap_or_else(|e| panic!("GetNextId {store}/{key} {inc:?}: {e:?}"))
        .into_inner()
        .next_id
}

#[tokio::test]
async fn runtimes_on_one_machine_share_the_default_sequencer() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let reg = registry.to_string_lossy().into_owned();
    let shm = dir.path().join("a-shm.sock");
    let start = |app: &str| WeftOptions::new(app).env("WEFT_LOCAL_REGISTRY_DIR", &reg);
    let a_opts = || {
        start("numbers")
            .data_dir(&dir.path().join("a-data"))
            .arg("--shm-socket")
            .arg(&shm.to_string_lossy())
    };
    let a = Weft::start(a_opts()).await.expect("start a");
    let b = Weft::start(start("numbers")).await.expect("start b");
    let other = Weft::start(start("other-app")).await.expect("start other");
    let (mut ca, mut cb, mut co) = (client(&a).await, client(&b).await, client(&other).await);
    assert!(
        dir.path().join("registry.sequencer.db").exists(),
        "default sequencer database"
    );

    // STRONG: one sequence across both runtimes, in call order.
    let s = "sequencer";
    assert_eq!(id(&mut ca, s, "orders", Increment::Strong).await, 1);
    assert_eq!(id(&mut cb, s, "orders", Increment::Strong).await, 2);
    assert_eq!(id(&mut ca, s, "orders", Increment::Strong).await, 3);
    // WEAK: each runtime serves its own reserved range, above the STRONG
    // ids, growing within the runtime; never the same id twice.
    let wa = id(&mut ca, s, "orders", Increment::Weak).await;
    let wb = id(&mut cb, s, "orders", Increment::Weak).await;
    let wa2 = id(&mut ca, s, "orders", Increment::Weak).await;
    assert!(wa > 3 && wb > 3 && wa != wb, "{wa} {wb}");
    assert_eq!(wa2, wa + 1, "A's next WEAK id comes from its segment");
    // A STRONG id after them is above both ranges' starts, and A's next
    // WEAK id is above it.
    let sa = id(&mut ca, s, "orders", Increment::Strong).await;
    assert!(sa > wa2 && sa > wb, "{sa}");
    let wa3 = id(&mut ca, s, "orders", Increment::Weak).await;
    assert!(wa3 > sa, "WEAK {wa3} after STRONG {sa} in one runtime");
    // Another app's key of the same name is its own sequence.
    assert_eq!(id(&mut co, s, "orders", Increment::Strong).await, 1);
    // A request without options is WEAK.
    let plain = ca
        .get_next_id(pb::GetNextIdRequest {
            store_name: s.into(),
            key: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_id;
    assert_eq!(plain, wa3 + 1);

    // The same over shared memory (runtime A's session).
    let sock = shm.clone();
    let (shm_weak, shm_strong, errors) = tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(&sock, ClientOptions::new("numbers")).expect("shm session");
        let w: pb::GetNextIdResponse = c
            .unary(
                m::WEFT_GET_NEXT_ID,
                &next("sequencer", "orders", Increment::Weak),
            )
            .unwrap();
        let st: pb::GetNextIdResponse = c
            .unary(
                m::WEFT_GET_NEXT_ID,
                &next("sequencer", "orders", Increment::Strong),
            )
            .unwrap();
        let mut errors = Vec::new();
        for req in [
            next("sequencer", "", Increment::Weak),
            next("nostore", "k", Increment::Weak),
        ] {
            let e = c
                .unary::<_, pb::GetNextIdResponse>(m::WEFT_GET_NEXT_ID, &req)
                .unwrap_err();
            errors.push((e.code, e.message));
        }
        (w.next_id, st.next_id, errors)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}\nruntime A's log:\n{}", a.logs()));
    assert_eq!(shm_weak, plain + 1, "shm and gRPC share A's segment");
    assert!(shm_strong > shm_weak);
    assert_eq!(errors[0].0, Code::InvalidArgument as u32, "{errors:?}");
    assert!(errors[0].1.contains("key"), "{errors:?}");
    assert_eq!(errors[1].0, Code::InvalidArgument as u32, "{errors:?}");
    assert!(
        errors[1].1.contains("nostore") && errors[1].1.contains("sequencer"),
        "{errors:?}"
    );

    // Restart A: its unused segment is skipped, never handed out again.
    let high = shm_strong.max(wb);
    a.signal("TERM");
    let mut a = a;
    a.wait_exit(Duration::from_secs(10)).await.expect("A exits");
    drop(a);
    let a = Weft::start(a_opts()).await.expect("restart a");
    let mut ca = client(&a).await;
    let after = id(&mut ca, s, "orders", Increment::Weak).await;
    assert!(after > high, "WEAK {after} after restart, {high} before");
    let strong = id(&mut ca, s, "orders", Increment::Strong).await;
    assert!(strong > after, "STRONG {strong} after {after}");

    // Bad inputs over gRPC, each naming the field or the store.
    for (req, field) in [
        (next(s, "", Increment::Weak), "key"),
        (next("", "k", Increment::Weak), "store_name"),
        (next(s, "a||b", Increment::Strong), "key"),
        (
            pb::GetNextIdRequest {
                options: Some(pb::SequencerOptions { increment: 7 }),
                ..next(s, "k", Increment::Weak)
            },
            "options.increment",
        ),
    ] {
        let e = ca.get_next_id(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    let e = ca
        .get_next_id(next("nostore", "k", Increment::Weak))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("nostore") && e.message().contains("sequencer"),
        "{e:?}"
    );
}

/// `sequencer.postgresql` and `sequencer.zookeeper` through two runtimes,
/// and a `lock.zookeeper` lock whose holder's runtime is killed: freed
/// when its ZooKeeper session expires, long before its lease would end.
#[tokio::test]
#[cfg_attr(
    any(weft_no_pg, weft_no_zk),
    ignore = "needs PostgreSQL and ZooKeeper: scripts/services.sh start postgres zookeeper; eval \"$(scripts/services.sh env)\""
)]
async fn networked_sequencers_and_a_zookeeper_lock_across_runtimes() {
    use weft_proto::runtime as dapr;
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir_all(&res).unwrap();
    let zk = std::env::var("WEFT_TEST_ZK_SERVERS").expect("WEFT_TEST_ZK_SERVERS");
    let root = format!("/weft-e2e-{}", std::process::id());
    weft_tests::write_component(
        &res,
        "seq-pg",
        "sequencer.postgresql",
        &[
            ("connectionString", &weft_tests::pg_url()),
            ("tableName", "weft_sequences_e2e"),
            ("segmentSize", "50"),
        ],
    );
    weft_tests::write_component(
        &res,
        "seq-zk",
        "sequencer.zookeeper",
        &[("servers", &zk), ("root", &format!("{root}-seq"))],
    );
    weft_tests::write_component(
        &res,
        "lock-zk",
        "lock.zookeeper",
        &[
            ("servers", &zk),
            ("root", &format!("{root}-locks")),
            ("sessionTimeout", "2s"),
        ],
    );
    let a = Weft::start(WeftOptions::new("net-seq").resources(&res))
        .await
        .expect("start a");
    let b = Weft::start(WeftOptions::new("net-seq").resources(&res))
        .await
        .expect("start b");
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let key = format!("k-{}", std::process::id());
    for store in ["seq-pg", "seq-zk"] {
        let one = id(&mut ca, store, &key, Increment::Strong).await;
        let two = id(&mut cb, store, &key, Increment::Strong).await;
        assert!(two > one, "{store}: {one} then {two}");
        let wa = id(&mut ca, store, &key, Increment::Weak).await;
        let wb = id(&mut cb, store, &key, Increment::Weak).await;
        assert!(wa > two && wb > two && wa != wb, "{store}: {wa} {wb}");
        assert_eq!(id(&mut ca, store, &key, Increment::Weak).await, wa + 1);
    }

    // A takes a lock for an hour, then its process dies.
    let lock = |owner: &str| dapr::TryLockRequest {
        store_name: "lock-zk".into(),
        resource_id: "batch".into(),
        lock_owner: owner.into(),
        expiry_in_seconds: 3600,
    };
    let (mut la, mut lb) = (a.client().await, b.client().await);
    assert!(
        la.try_lock_alpha1(lock("a"))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(
        !lb.try_lock_alpha1(lock("b"))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    a.signal("KILL");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lb
        .try_lock_alpha1(lock("b"))
        .await
        .unwrap()
        .into_inner()
        .success
    {
        assert!(
            Instant::now() < deadline,
            "the killed runtime's lock still held after 30 s (session timeout 2 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
