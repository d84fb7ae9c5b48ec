//! SIGTERM with work in flight on every block: state writes over gRPC, a
//! shared-memory session writing state, a topic subscription holding
//! unacknowledged events, and mesh calls to a slow app. The runtime drains
//! what can finish within its grace period, tells every caller whose call
//! or stream it ends why, and writes nothing half: after a restart each key
//! holds a whole value, at least as new as the last write it acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_tests::invoke_app::InvokeApp;
use weft_tests::mesh::{request, MeshEnv};
use weft_tests::Weft;

const WRITERS: usize = 4;

fn value(writer: usize, seq: u64) -> Vec<u8> {
    // Large enough that a torn write would show.
    serde_json::json!({"writer": writer, "seq": seq, "pad": "p".repeat(4000)})
        .to_string()
        .into_bytes()
}

fn save(key: &str, data: Vec<u8>) -> pb::SaveStateRequest {
    pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![common::StateItem {
            key: key.into(),
            value: data,
            ..Default::default()
        }],
    }
}

fn get(key: &str) -> pb::GetStateRequest {
    pb::GetStateRequest {
        store_name: "statestore".into(),
        key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_work_in_flight_ends_every_call_cleanly() {
    let env = MeshEnv::new();
    let data = tempfile::tempdir().unwrap();
    let shm = env.path("term.shm");
    // The callee: a slow app behind its own runtime.
    let app_b = InvokeApp::new("b");
    let (b_port, _b_task) = app_b.serve().await;
    let _b = env
        .runtime("term-b", &["--app-port".into(), b_port.to_string()])
        .await;
    let mut a = Weft::start(
        env.options(
            "term-a",
            &[
                "--shm-socket".into(),
                shm.to_string_lossy().into_owned(),
                "--graceful-shutdown-seconds".into(),
                "8".into(),
            ],
        )
        .data_dir(data.path()),
    )
    .await
    .unwrap();

    // State writers over gRPC: each remembers its last acknowledged write.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = a.client().await;
        let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let key = format!("grpc-{w}");
            for seq in 1.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match c.save_state(save(&key, value(w, seq))).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key.clone(), seq);
                    }
                    Err(e) => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{:?}: {}", e.code(), e.message()));
                        break;
                    }
                }
            }
        }));
    }
    // A shared-memory session writing state too.
    let shm_writer = {
        let (shm, acked) = (shm.clone(), acked.clone());
        tokio::task::spawn_blocking(move || {
            let mut c = weft_shm::Client::connect(&shm, weft_shm::ClientOptions::new("term-a"))
                .expect("shm session");
            for seq in 1.. {
                match c.unary::<_, ()>(weft_shm::method::SAVE_STATE, &save("shm", value(99, seq))) {
                    Ok(()) => {
                        acked.lock().unwrap().insert("shm".into(), seq);
                    }
                    Err(e) => return e,
                }
            }
            unreachable!()
        })
    };
    // A subscription that holds everything it gets.
    let topic = "orders";
    let mut pc = a.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = pc
        .subscribe_topic_events_alpha1(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.subscribe_topic_events_response_type,
        Some(RespType::InitialResponse(_))
    ));
    for i in 0..5 {
        pc.publish_event(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            data: format!("event {i}").into_bytes(),
            data_content_type: "text/plain".into(),
            metadata: HashMap::from([("partitionKey".into(), "k".into())]),
        })
        .await
        .unwrap();
    }
    let held = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        held.subscribe_topic_events_response_type,
        Some(RespType::EventMessage(_))
    ));
    // Mesh calls that take 2 s, in flight at the signal.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut c = a.client().await;
        calls.push(tokio::spawn(async move {
            c.invoke_service(request("term-b", "sleep/2000", b"slow"))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_term = acked.lock().unwrap().clone();
    assert_eq!(
        before_term.len(),
        WRITERS + 1,
        "every writer wrote: {before_term:?}"
    );

    a.signal("TERM");
    // The subscription is ended with the reason.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription ends within 10 s of SIGTERM");
    let status = ended.expect_err("the subscription ends with a status, not a clean end");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("shutting down"), "{status}");
    // Mesh calls in flight finish within the grace period.
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_ok(), "a call in flight at SIGTERM finishes: {r:?}");
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let shm_end = tokio::time::timeout(Duration::from_secs(15), shm_writer)
        .await
        .expect("the shared-memory writer is told within 15 s")
        .unwrap();
    assert!(
        shm_end.message.contains("shutting down") || shm_end.message.contains("closed"),
        "the shared-memory session says why it ended: {shm_end:?}"
    );
    let status = a.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "exit {status}:\n{}", a.logs());
    for e in errors.lock().unwrap().iter() {
        assert!(
            e.starts_with("Unavailable"),
            "a write refused at shutdown says the runtime is unavailable: {e}"
        );
    }

    // Restart on the same data: every key holds a whole value, no older
    // than its last acknowledged write.
    let acked = acked.lock().unwrap().clone();
    let a2 = Weft::start(env.options("term-a", &[]).data_dir(data.path()))
        .await
        .unwrap();
    let mut c = a2.client().await;
    for (key, last) in &acked {
        let got = c.get_state(get(key)).await.unwrap().into_inner().data;
        let v: serde_json::Value = serde_json::from_slice(&got)
            .unwrap_or_else(|e| panic!("key {key}: the stored value is not whole JSON ({e})"));
        let seq = v["seq"].as_u64().expect("seq");
        assert_eq!(
            v["pad"].as_str().map(str::len),
            Some(4000),
            "key {key}: whole value"
        );
        assert!(
            seq == *last || seq == last + 1,
            "key {key}: stored seq {seq}, last acknowledged {last} (an unacknowledged write may have landed, nothing acknowledged may be missing)"
        );
    }
    eprintln!(
        "SIGTERM: {} keys checked after the restart ({acked:?}); {} writes refused; shm session: {}",
        acked.len(),
        errors.lock().unwrap().len(),
        shm_end.message
    );
}
