//! The same calls over gRPC and over shared memory with a call context
//! (docs/shm-protocol.md §5.1) give the same answers: code, message, error
//! details, response metadata; the caller's metadata and deadline reach the
//! called app over both.
//!
//! App A's runtime serves both transports; app B (the `InvokeApp` of the
//! invocation tests) sits behind its own runtime in a private mesh.

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Request;
use weft_proto::appchannel as ac;
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_shm::layout::features;
use weft_shm::method as m;
use weft_shm::{Client, ClientOptions};
use weft_tests::invoke_app::{InvokeApp, FAIL_DETAILS};
use weft_tests::mesh::{request, MeshEnv};
use weft_tests::Weft;

/// What a caller learns from one call, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    code: i32,
    message: String,
    details: Vec<u8>,
    /// Response metadata (headers, trailers) this test looks at.
    metadata: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Metadata keys compared: what app B answers, and the origin marker.
const KEYS: &[&str] = &[
    "x-instance",
    "x-seen-x-user",
    "x-seen-dapr-caller-app-id",
    "weft-error-origin",
];

fn pick(all: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut v: Vec<_> = all
        .into_iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .collect();
    v.sort();
    v
}

/// One call over gRPC: `metadata` as request metadata, `timeout` as its
/// deadline.
async fn over_grpc<Req, Resp, F, Fut>(
    call: F,
    req: Req,
    metadata: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Outcome
where
    Resp: Message,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut r = Request::new(req);
    for (k, v) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).unwrap();
        r.metadata_mut().insert(key, v.parse().unwrap());
    }
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    let md_pairs = |md: &tonic::metadata::MetadataMap| {
        pick(md.iter().filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                Some((k.to_string(), v.to_str().ok()?.to_string()))
            }
            _ => None,
        }))
    };
    match call(r).await {
        Ok(resp) => Outcome {
            code: 0,
            message: String::new(),
            details: Vec::new(),
            metadata: md_pairs(resp.metadata()),
            body: resp.into_inner().encode_to_vec(),
        },
        Err(s) => Outcome {
            code: s.code() as i32,
            message: s.message().to_string(),
            details: s.details().to_vec(),
            metadata: md_pairs(s.metadata()),
            body: Vec::new(),
        },
    }
}

/// The same call over shared memory, with a call context.
async fn over_shm(
    socket: &Path,
    method: u32,
    body: Vec<u8>,
    metadata: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Outcome {
    let ctx = ac::CallContext {
        timeout_micros: timeout.map_or(0, |t| t.as_micros() as u64),
        metadata: metadata
            .iter()
            .map(|(k, v)| ac::Metadata {
                key: k.to_string(),
                values: vec![v.to_string()],
            })
            .collect(),
        status_details: Vec::new(),
    }
    .encode_to_vec();
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut o = ClientOptions::new("ctx-a");
        o.call_timeout = Duration::from_secs(60);
        o.reconnect = false;
        let mut c = Client::connect(&socket, o).expect("shm connect");
        c.connect_now().expect("shm session");
        assert_eq!(
            c.features() & features::CONTEXT,
            features::CONTEXT,
            "the runtime advertises the CONTEXT feature"
        );
        let frame = c
            .call_with_context(method, &ctx, &body)
            .expect("shm call answered");
        let (context, rest) = frame.context().expect("well-formed answer");
        let context = context
            .map(|b| ac::CallContext::decode(b).expect("response call context decodes"))
            .unwrap_or_default();
        let status = frame.envelope.status as i32;
        Outcome {
            code: status,
            message: if status == 0 {
                String::new()
            } else {
                String::from_utf8_lossy(rest).into_owned()
            },
            details: context.status_details,
            metadata: pick(
                context
                    .metadata
                    .into_iter()
                    .flat_map(|m| m.values.into_iter().map(move |v| (m.key.clone(), v))),
            ),
            body: if status == 0 {
                rest.to_vec()
            } else {
                Vec::new()
            },
        }
    })
    .await
    .unwrap()
}

/// A `grpc-timeout` value (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout(raw: &str) -> Duration {
    let (n, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = n.parse().expect("grpc-timeout digits");
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("grpc-timeout unit {other}"),
    }
}

/// The timeout app B was given for an `echo` with deadline `t`, over gRPC.
async fn over_grpc_deadline(
    c: &mut weft_proto::runtime::dapr_client::DaprClient<tonic::transport::Channel>,
    t: Duration,
) -> Duration {
    let mut r = Request::new(request("ctx-b", "echo", b""));
    r.set_timeout(t);
    let resp = c.invoke_service(r).await.expect("echo");
    grpc_timeout(resp.metadata().get("x-deadline").unwrap().to_str().unwrap())
}

/// The same over shared memory.
async fn over_shm_deadline(socket: &Path, t: Duration) -> Duration {
    let ctx = ac::CallContext {
        timeout_micros: t.as_micros() as u64,
        ..Default::default()
    }
    .encode_to_vec();
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(&socket, ClientOptions::new("ctx-a")).expect("shm connect");
        let frame = c
            .call_with_context(
                m::INVOKE_SERVICE,
                &ctx,
                &request("ctx-b", "echo", b"").encode_to_vec(),
            )
            .expect("echo");
        assert_eq!(frame.envelope.status, 0, "{frame:?}");
        let (context, _) = frame.context().unwrap();
        let context = ac::CallContext::decode(context.expect("response metadata")).unwrap();
        let raw = context
            .metadata
            .iter()
            .find(|m| m.key == "x-deadline")
            .and_then(|m| m.values.first())
            .expect("x-deadline")
            .clone();
        grpc_timeout(&raw)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_and_state_answer_alike_over_grpc_and_shared_memory() {
    let env = MeshEnv::new();
    let app = InvokeApp::new("b1");
    let (port, _serving) = app.serve().await;
    let _b = env
        .runtime("ctx-b", &["--app-port".into(), port.to_string()])
        .await;
    let res = env.path("resources");
    std::fs::create_dir_all(&res).unwrap();
    weft_tests::write_component(&res, "statestore", "state.in-memory", &[]);
    let socket = env.path("a-shm.sock");
    let a: Weft = Weft::start(
        env.options("ctx-a", &[])
            .resources(&res)
            .arg("--shm-socket")
            .arg(socket.to_str().unwrap()),
    )
    .await
    .unwrap();
    let mut grpc = a.client().await;

    // === invocation ===
    let user = [("x-user", "alice")];
    let cases: Vec<(&str, pb::InvokeServiceRequest)> = vec![
        ("echo with metadata", request("ctx-b", "echo", b"ping")),
        ("app error with details", request("ctx-b", "fail", b"")),
        ("unknown method", request("ctx-b", "nope", b"")),
        ("no target", request("", "echo", b"")),
        ("unknown app", request("ctx-nobody", "echo", b"")),
    ];
    for (what, req) in cases {
        let g = over_grpc(
            |r| grpc.invoke_service(r),
            req.clone(),
            &user,
            Some(Duration::from_secs(20)),
        )
        .await;
        let s = over_shm(
            &socket,
            m::INVOKE_SERVICE,
            req.encode_to_vec(),
            &user,
            Some(Duration::from_secs(20)),
        )
        .await;
        assert_eq!(g, s, "{what}: gRPC and shared memory differ");
        match what {
            "echo with metadata" => {
                assert_eq!(g.code, 0, "{g:?}");
                let resp = common::InvokeResponse::decode(&s.body[..]).unwrap();
                assert_eq!(resp.data.unwrap().value, b"ping");
                assert!(
                    s.metadata
                        .contains(&("x-seen-x-user".to_string(), "alice".to_string())),
                    "the caller's metadata reached the app: {s:?}"
                );
                assert!(
                    s.metadata
                        .contains(&("x-instance".to_string(), "b1".to_string())),
                    "the app's response metadata came back: {s:?}"
                );
            }
            "app error with details" => {
                assert_eq!(
                    (s.code, s.message.as_str()),
                    (tonic::Code::FailedPrecondition as i32, "app says no")
                );
                assert_eq!(s.details, FAIL_DETAILS, "error details pass through");
            }
            "unknown method" => assert_eq!(s.code, tonic::Code::NotFound as i32, "{s:?}"),
            "no target" => {
                assert_eq!(s.code, tonic::Code::InvalidArgument as i32);
                assert!(s.message.contains("InvokeServiceRequest.id"), "{s:?}");
            }
            _ => assert_eq!(s.code, tonic::Code::NotFound as i32, "{s:?}"),
        }
    }

    // The caller's deadline reaches the called app over both transports:
    // the app sees a grpc-timeout no longer than the caller's 30 s, not the
    // runtime's 60 s default.
    let g = over_grpc_deadline(&mut grpc, Duration::from_secs(30)).await;
    let s = over_shm_deadline(&socket, Duration::from_secs(30)).await;
    for (transport, seen) in [("gRPC", g), ("shm", s)] {
        assert!(
            seen > Duration::from_secs(1) && seen <= Duration::from_secs(30),
            "{transport}: the app was given {seen:?}"
        );
    }
    // …and bounds it: the app would sleep 20 s; both end at the deadline.
    let started = Instant::now();
    let s = over_shm(
        &socket,
        m::INVOKE_SERVICE,
        request("ctx-b", "sleep/20000", b"").encode_to_vec(),
        &[],
        Some(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(s.code, tonic::Code::DeadlineExceeded as i32, "{s:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the shared-memory call outlived its deadline: {:?}",
        started.elapsed()
    );
    weft_tests::mesh::assert_deadline_bounds_the_call(&mut grpc, "ctx-b").await;

    // === state ===
    let save = |key: &str, etag: Option<&str>| pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![common::StateItem {
            key: key.into(),
            value: b"v".to_vec(),
            etag: etag.map(|e| common::Etag { value: e.into() }),
            options: Some(common::StateOptions {
                concurrency: common::state_options::StateConcurrency::ConcurrencyFirstWrite as i32,
                consistency: 0,
            }),
            ..Default::default()
        }],
    };
    let get = |store: &str, key: &str| pb::GetStateRequest {
        store_name: store.into(),
        key: key.into(),
        ..Default::default()
    };
    // A first write, then the same first-write again: an etag conflict.
    let first = over_grpc(|r| grpc.save_state(r), save("k1", None), &[], None).await;
    assert_eq!(first.code, 0, "{first:?}");
    let g = over_grpc(|r| grpc.save_state(r), save("k1", None), &[], None).await;
    let s = over_shm(
        &socket,
        m::SAVE_STATE,
        save("k1", None).encode_to_vec(),
        &[],
        None,
    )
    .await;
    assert_eq!(g, s, "etag conflict");
    assert_eq!(g.code, tonic::Code::Aborted as i32, "{g:?}");
    let g = over_grpc(|r| grpc.save_state(r), save("k1", Some("bogus")), &[], None).await;
    let s = over_shm(
        &socket,
        m::SAVE_STATE,
        save("k1", Some("bogus")).encode_to_vec(),
        &[],
        None,
    )
    .await;
    assert_eq!(g, s, "etag mismatch");
    assert_eq!(g.code, tonic::Code::Aborted as i32, "{g:?}");
    for (what, req) in [
        ("unknown store", get("nostore", "k1")),
        ("no store", get("", "k1")),
        ("no key", get("statestore", "")),
        ("found", get("statestore", "k1")),
        ("missing", get("statestore", "k-none")),
    ] {
        let g = over_grpc(|r| grpc.get_state(r), req.clone(), &user, None).await;
        let s = over_shm(&socket, m::GET_STATE, req.encode_to_vec(), &user, None).await;
        assert_eq!(g, s, "GetState {what}: gRPC and shared memory differ");
        if what.starts_with("no") || what == "unknown store" {
            assert_eq!(g.code, tonic::Code::InvalidArgument as i32, "{what}: {g:?}");
        } else {
            assert_eq!(g.code, 0, "{what}: {g:?}");
        }
    }
}

/// The spec's call-context vectors are what the protobuf definitions say
/// (they were written by hand in runtime/shm/tests/vectors.rs).
#[test]
fn context_vectors_decode_as_the_protos() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shm-vectors/v1.json");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = |name: &str| -> Vec<u8> {
        let v = file["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("vector {name}"));
        let hex = v["body_hex"].as_str().unwrap();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let b = body("context_request");
    let (ctx, rest) = weft_shm::record::split_context(&b).unwrap();
    let ctx = ac::CallContext::decode(ctx).unwrap();
    assert_eq!(ctx.timeout_micros, 250_000);
    assert_eq!(ctx.metadata[0].key, "traceparent");
    let req = pb::InvokeServiceRequest::decode(rest).unwrap();
    assert_eq!(
        (req.id.as_str(), req.message.unwrap().method.as_str()),
        ("orders", "place")
    );
    let b = body("context_error_response");
    let (ctx, rest) = weft_shm::record::split_context(&b).unwrap();
    let ctx = ac::CallContext::decode(ctx).unwrap();
    assert_eq!(ctx.metadata[0].values, vec!["app".to_string()]);
    assert_eq!(
        ctx.status_details,
        [&[0x08, 9, 0x12, 11][..], b"app says no"].concat()
    );
    assert_eq!(rest, b"app says no");
}
