//! The state API of a real `weft` process on its embedded defaults (SQLite),
//! over TCP and over a Unix socket.

use std::time::Duration;

use tonic::Code;
use weft_proto::common::{state_options::StateConcurrency, Etag, StateItem, StateOptions};
use weft_proto::runtime as pb;
use weft_tests::{http_get, Weft, WeftOptions};

fn item(key: &str, value: &[u8]) -> StateItem {
    StateItem {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn get(key: &str) -> pb::GetStateRequest {
    pb::GetStateRequest {
        store_name: "statestore".into(),
        key: key.into(),
        ..Default::default()
    }
}

fn save(items: Vec<StateItem>) -> pb::SaveStateRequest {
    pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: items,
    }
}

#[tokio::test]
async fn round_trip_over_tcp_and_uds() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("weft.sock");
    let weft = Weft::start(WeftOptions::new("state-e2e").uds(&sock))
        .await
        .unwrap();
    let mut tcp = weft.client().await;
    let mut uds = weft.uds_client().await;

    tcp.save_state(save(vec![
        item("greeting", b"hello"),
        item("bin", &[0, 255, 1]),
    ]))
    .await
    .unwrap();
    let got = uds.get_state(get("greeting")).await.unwrap().into_inner();
    assert_eq!(got.data, b"hello");
    assert!(!got.etag.is_empty());

    let bulk = uds
        .get_bulk_state(pb::GetBulkStateRequest {
            store_name: "statestore".into(),
            keys: vec!["bin".into(), "missing".into(), "greeting".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = bulk
        .items
        .iter()
        .map(|i| (i.key.as_str(), i.data.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("bin", vec![0, 255, 1]),
            ("missing", vec![]),
            ("greeting", b"hello".to_vec())
        ]
    );

    tcp.delete_bulk_state(pb::DeleteBulkStateRequest {
        store_name: "statestore".into(),
        states: vec![item("bin", b""), item("never-existed", b"")],
    })
    .await
    .unwrap();
    tcp.delete_state(pb::DeleteStateRequest {
        store_name: "statestore".into(),
        key: "greeting".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(uds
        .get_state(get("greeting"))
        .await
        .unwrap()
        .into_inner()
        .data
        .is_empty());
    assert!(uds
        .get_state(get("bin"))
        .await
        .unwrap()
        .into_inner()
        .etag
        .is_empty());
}

#[tokio::test]
async fn etags_follow_dapr_semantics() {
    let weft = Weft::start(WeftOptions::new("etag-e2e")).await.unwrap();
    let mut c = weft.client().await;
    c.save_state(save(vec![item("k", b"1")])).await.unwrap();
    let first = c.get_state(get("k")).await.unwrap().into_inner().etag;
    c.save_state(save(vec![item("k", b"2")])).await.unwrap();

    let first_write = Some(StateOptions {
        concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
        consistency: 0,
    });
    let mut stale = item("k", b"3");
    stale.etag = Some(Etag {
        value: first.clone(),
    });
    stale.options = first_write;
    let err = c.save_state(save(vec![stale.clone()])).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message().contains("etag mismatch") && err.message().contains("statestore"),
        "{}",
        err.message()
    );

    // First-write with no etag on an existing key fails too.
    let mut no_etag = item("k", b"3");
    no_etag.options = first_write;
    assert_eq!(
        c.save_state(save(vec![no_etag])).await.unwrap_err().code(),
        Code::Aborted
    );

    // Last-write ignores the stale etag.
    stale.options = Some(StateOptions {
        concurrency: StateConcurrency::ConcurrencyLastWrite as i32,
        consistency: 0,
    });
    c.save_state(save(vec![stale])).await.unwrap();
    let now = c.get_state(get("k")).await.unwrap().into_inner();
    assert_eq!(now.data, b"3");

    // The current etag works with first-write.
    let mut fresh = item("k", b"4");
    fresh.etag = Some(Etag { value: now.etag });
    fresh.options = first_write;
    c.save_state(save(vec![fresh])).await.unwrap();

    // Deleting with a stale etag fails and leaves the item.
    let err = c
        .delete_state(pb::DeleteStateRequest {
            store_name: "statestore".into(),
            key: "k".into(),
            etag: Some(Etag { value: first }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(c.get_state(get("k")).await.unwrap().into_inner().data, b"4");
}

#[tokio::test]
async fn transactions_are_all_or_nothing() {
    let weft = Weft::start(WeftOptions::new("tx-e2e")).await.unwrap();
    let mut c = weft.client().await;
    c.save_state(save(vec![item("a", b"old-a"), item("gone", b"x")]))
        .await
        .unwrap();
    let op = |t: &str, it: StateItem| pb::TransactionalStateOperation {
        operation_type: t.into(),
        request: Some(it),
    };
    let mut stale = item("a", b"never");
    stale.etag = Some(Etag {
        value: "not-the-etag".into(),
    });
    let err = c
        .execute_state_transaction(pb::ExecuteStateTransactionRequest {
            store_name: "statestore".into(),
            operations: vec![
                op("upsert", item("b", b"b")),
                op("delete", item("gone", b"")),
                op("upsert", stale),
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        c.get_state(get("b"))
            .await
            .unwrap()
            .into_inner()
            .data
            .is_empty(),
        "b must not be written"
    );
    assert_eq!(
        c.get_state(get("gone")).await.unwrap().into_inner().data,
        b"x"
    );

    c.execute_state_transaction(pb::ExecuteStateTransactionRequest {
        store_name: "statestore".into(),
        operations: vec![
            op("upsert", item("b", b"b")),
            op("delete", item("gone", b"")),
            op("upsert", item("a", b"new-a")),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        c.get_state(get("a")).await.unwrap().into_inner().data,
        b"new-a"
    );
    assert_eq!(c.get_state(get("b")).await.unwrap().into_inner().data, b"b");
    assert!(c
        .get_state(get("gone"))
        .await
        .unwrap()
        .into_inner()
        .etag
        .is_empty());
}

#[tokio::test]
async fn ttl_expires_items() {
    let weft = Weft::start(WeftOptions::new("ttl-e2e")).await.unwrap();
    let mut c = weft.client().await;
    let mut it = item("short", b"lived");
    it.metadata.insert("ttlInSeconds".into(), "1".into());
    c.save_state(save(vec![it])).await.unwrap();
    let got = c.get_state(get("short")).await.unwrap().into_inner();
    assert!(
        got.metadata.contains_key("ttlExpireTime"),
        "{:?}",
        got.metadata
    );
    let mut gone = false;
    for _ in 0..100 {
        if c.get_state(get("short"))
            .await
            .unwrap()
            .into_inner()
            .etag
            .is_empty()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "item with a 1 s TTL still readable after 10 s");
}

#[tokio::test]
async fn bad_requests_name_the_field_and_the_runtime_stays_up() {
    let weft = Weft::start(
        WeftOptions::new("bad-e2e")
            .arg("--max-body-size")
            .arg("65536"),
    )
    .await
    .unwrap();
    let mut c = weft.client().await;

    let err = c
        .get_state(pb::GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("'nope'") && err.message().contains("statestore"),
        "{}",
        err.message()
    );

    let err = c.get_state(get("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("key"), "{}", err.message());

    let err = c
        .get_state(pb::GetStateRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("store_name"), "{}", err.message());

    let err = c
        .save_state(save(vec![item("a||b", b"")]))
        .await
        .unwrap_err();
    assert!(err.message().contains("states[0].key"), "{}", err.message());

    let mut bad_ttl = item("t", b"");
    bad_ttl.metadata.insert("ttlInSeconds".into(), "-5".into());
    let err = c.save_state(save(vec![bad_ttl])).await.unwrap_err();
    assert!(err.message().contains("ttlInSeconds"), "{}", err.message());

    let err = c
        .execute_state_transaction(pb::ExecuteStateTransactionRequest {
            store_name: "statestore".into(),
            operations: vec![pb::TransactionalStateOperation {
                operation_type: "upsert".into(),
                request: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("operations[0].request"),
        "{}",
        err.message()
    );

    // Oversized: refused with the limit in the message.
    let err = c
        .save_state(save(vec![item("big", &vec![7u8; 100_000])]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );
    assert!(err.message().contains("65536"), "{}", err.message());

    // An unknown pub/sub is named, with the configured ones.
    let err = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "p".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pub/sub 'p'"), "{}", err.message());

    // Blocks that are not built yet say which.
    let err = c
        .invoke_binding(pb::InvokeBindingRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("bindings"), "{}", err.message());

    // Still serving.
    c.save_state(save(vec![item("after", b"ok")]))
        .await
        .unwrap();
    assert_eq!(
        c.get_state(get("after")).await.unwrap().into_inner().data,
        b"ok"
    );
}

#[tokio::test]
async fn sqlite_state_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    {
        let mut weft = Weft::start(WeftOptions::new("persist-e2e").data_dir(data.path()))
            .await
            .unwrap();
        weft.client()
            .await
            .save_state(save(vec![item("durable", b"yes")]))
            .await
            .unwrap();
        weft.signal("TERM");
        assert!(weft
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap()
            .success());
    }
    let weft = Weft::start(WeftOptions::new("persist-e2e").data_dir(data.path()))
        .await
        .unwrap();
    let got = weft
        .client()
        .await
        .get_state(get("durable"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, b"yes");
    // Another app id sharing the store cannot see it (keys are namespaced).
    drop(weft);
    let other = Weft::start(WeftOptions::new("other-app").data_dir(data.path()))
        .await
        .unwrap();
    assert!(other
        .client()
        .await
        .get_state(get("durable"))
        .await
        .unwrap()
        .into_inner()
        .etag
        .is_empty());
}

#[tokio::test]
async fn api_token_is_enforced() {
    let weft = Weft::start(WeftOptions::new("token-e2e").env("DAPR_API_TOKEN", "s3cret"))
        .await
        .unwrap();
    let mut c = weft.client().await;
    let err = c.get_state(get("k")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("dapr-api-token"),
        "{}",
        err.message()
    );
    let mut wrong = tonic::Request::new(get("k"));
    wrong
        .metadata_mut()
        .insert("dapr-api-token", "nope".parse().unwrap());
    assert_eq!(
        c.get_state(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(get("k"));
    right
        .metadata_mut()
        .insert("dapr-api-token", "s3cret".parse().unwrap());
    c.get_state(right).await.unwrap();
    // Weft's own AppChannel service checks the same token.
    let mut channel =
        weft_proto::appchannel::app_channel_client::AppChannelClient::new(weft.channel().await);
    let err = channel
        .serve_invocations(tokio_stream::iter(Vec::<
            weft_proto::appchannel::ServeInvocationsRequest,
        >::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Health needs no token; metadata does.
    assert_eq!(
        http_get(weft.http_port, "/v1.0/healthz", &[])
            .await
            .unwrap()
            .0,
        204
    );
    assert_eq!(
        http_get(weft.http_port, "/v1.0/metadata", &[])
            .await
            .unwrap()
            .0,
        401
    );
    let (status, body) = http_get(
        weft.http_port,
        "/v1.0/metadata",
        &[("dapr-api-token", "s3cret")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn metadata_health_and_shutdown() {
    let mut weft = Weft::start(WeftOptions::new("meta-e2e")).await.unwrap();
    let mut c = weft.client().await;
    let md = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.id, "meta-e2e");
    assert!(!md.runtime_version.is_empty());
    let mut comps: Vec<_> = md
        .registered_components
        .iter()
        .map(|c| (c.name.as_str(), c.r#type.as_str()))
        .collect();
    comps.sort();
    assert_eq!(
        comps,
        vec![
            ("configstore", "configuration.file"),
            ("lockstore", "lock.sqlite"),
            ("pubsub", "pubsub.embedded"),
            ("sequencer", "sequencer.sqlite"),
            ("statestore", "state.sqlite")
        ]
    );

    assert_eq!(
        http_get(weft.http_port, "/v1.0/healthz/outbound", &[])
            .await
            .unwrap()
            .0,
        204
    );
    let (status, body) = http_get(weft.http_port, "/v1.0/metadata", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["id"], "meta-e2e");
    assert_eq!(json["components"].as_array().unwrap().len(), 5);

    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
    let status = weft.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "exit {status}: {}", weft.logs());
}

#[tokio::test]
async fn sigterm_finishes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut weft = Weft::start(WeftOptions::new("term-e2e").uds(&sock))
        .await
        .unwrap();
    assert!(sock.exists());
    weft.signal("TERM");
    let status = weft.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "exit {status}: {}", weft.logs());
    assert!(
        !sock.exists(),
        "the Unix socket should be removed on shutdown"
    );
}
