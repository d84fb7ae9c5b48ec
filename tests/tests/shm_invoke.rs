//! Service invocation into an app with no AppCallback port that receives
//! its invocations over the shared-memory transport
//! (`weft.runtime.v1.AppChannel/ServeInvocations`, method 0x10002): a gRPC
//! caller on runtime A invokes app B, whose runtime has no `--app-port`
//! and whose app answers from a shared-memory session. Also the refusals:
//! a stream not opened with `initial`, a runtime that has an app port, and
//! MORE records that break the protocol.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use weft_proto::appchannel as ac;
use weft_proto::appchannel::serve_invocations_request::Kind as In;
use weft_proto::appchannel::serve_invocations_response::Kind as Out;
use weft_proto::common;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_shm::method as m;
use weft_shm::{code, Client, ClientOptions, IdleConfig};
use weft_tests::invoke_app::FAIL_DETAILS;
use weft_tests::mesh::{call, md, request, MeshEnv as Env};
use weft_tests::{free_port, Weft, WeftOptions};

/// Bound for any single expected event (a failure, never a speed check).
const WAIT: Duration = Duration::from_secs(60);

/// `--shm-socket` and `--shm-dir` in `dir`; returns the flags and the socket.
fn shm_flags(dir: &Path) -> (Vec<String>, PathBuf) {
    let segments = dir.join("segments");
    std::fs::create_dir_all(&segments).unwrap();
    let socket = dir.join("shm.sock");
    let flags = vec![
        "--shm-socket".to_string(),
        socket.to_string_lossy().into_owned(),
        "--shm-dir".to_string(),
        segments.to_string_lossy().into_owned(),
    ];
    (flags, socket)
}

fn connect(socket: &Path, app_id: &str) -> Client {
    let mut o = ClientOptions::new(app_id);
    o.call_timeout = Duration::from_secs(20);
    o.reconnect = false;
    o.idle = IdleConfig::SLEEP;
    Client::connect(socket, o).unwrap()
}

fn initial() -> Vec<u8> {
    ac::ServeInvocationsRequest {
        kind: Some(In::Initial(ac::ServeInvocationsInitial {})),
    }
    .encode_to_vec()
}

fn result(r: ac::InvocationResult) -> Vec<u8> {
    ac::ServeInvocationsRequest {
        kind: Some(In::Result(r)),
    }
    .encode_to_vec()
}

/// The next message of the runtime's side of a ServeInvocations call.
fn next_message(c: &mut Client, corr: u64) -> ac::ServeInvocationsResponse {
    match c.next_item(corr, WAIT) {
        Ok(Some(body)) => ac::ServeInvocationsResponse::decode(&body[..]).unwrap(),
        other => panic!("expected a ServeInvocations message, got {other:?}"),
    }
}

/// Opens weft.ServeInvocations and waits for the initial response.
fn open_invocations(c: &mut Client) -> u64 {
    let corr = c
        .open_stream(m::WEFT_SERVE_INVOCATIONS, &initial())
        .unwrap();
    let first = next_message(c, corr);
    assert!(
        matches!(first.kind, Some(Out::InitialResponse(_))),
        "{first:?}"
    );
    corr
}

// === the app ===

/// What the app thread reports to the test.
#[derive(Debug)]
enum Seen {
    /// The stream is open: invocations reach the app from now on.
    Ready,
    Invocation(ac::Invocation),
}

/// What the test tells the app thread.
enum Cmd {
    /// End the stream with CANCEL and keep the session.
    Cancel,
    /// Close the session.
    Close,
}

fn metadata(key: &str, value: &str) -> ac::Metadata {
    ac::Metadata {
        key: key.into(),
        values: vec![value.into()],
    }
}

/// The app: one shared-memory session with one ServeInvocations stream.
/// `echo` answers with the data and content type it got plus metadata,
/// `fail` with an error, `hold` not at all; every invocation is reported.
fn shm_app(
    socket: PathBuf,
    app_id: String,
    seen: mpsc::UnboundedSender<Seen>,
) -> (std_mpsc::Sender<Cmd>, std::thread::JoinHandle<()>) {
    let (cmd_tx, cmds) = std_mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut c = connect(&socket, &app_id);
        let corr = open_invocations(&mut c);
        seen.send(Seen::Ready).unwrap();
        loop {
            match cmds.try_recv() {
                Ok(Cmd::Cancel) => {
                    c.cancel(corr).unwrap();
                    // Keep the session until told to close it.
                    let _ = cmds.recv();
                    return;
                }
                Ok(Cmd::Close) | Err(std_mpsc::TryRecvError::Disconnected) => return,
                Err(std_mpsc::TryRecvError::Empty) => {}
            }
            let msg = match c.next_item(corr, Duration::from_millis(100)) {
                Ok(Some(body)) => ac::ServeInvocationsResponse::decode(&body[..]).unwrap(),
                Err(e) if e.code == code::DEADLINE_EXCEEDED => continue,
                other => panic!("the invocation stream ended: {other:?}"),
            };
            let Some(Out::Invocation(inv)) = msg.kind else {
                panic!("expected an invocation, got {msg:?}");
            };
            let req = inv.request.clone().unwrap_or_default();
            let caller = inv
                .metadata
                .iter()
                .find(|md| md.key == "dapr-caller-app-id")
                .and_then(|md| md.values.first().cloned())
                .unwrap_or_default();
            let answer = match req.method.as_str() {
                "echo" => Some(ac::InvocationResult {
                    id: inv.id,
                    response: Some(common::InvokeResponse {
                        data: req.data,
                        content_type: req.content_type,
                    }),
                    metadata: vec![
                        metadata("x-served-by", "shm-app"),
                        metadata("x-seen-caller", &caller),
                    ],
                    ..Default::default()
                }),
                "fail" => Some(ac::InvocationResult {
                    id: inv.id,
                    code: Code::FailedPrecondition as i32,
                    message: "app says no".into(),
                    details: FAIL_DETAILS.to_vec(),
                    ..Default::default()
                }),
                "hold" => None,
                other => Some(ac::InvocationResult {
                    id: inv.id,
                    code: Code::NotFound as i32,
                    message: format!("no method {other}"),
                    ..Default::default()
                }),
            };
            seen.send(Seen::Invocation(inv)).unwrap();
            if let Some(r) = answer {
                c.send_more(m::WEFT_SERVE_INVOCATIONS, corr, &result(r))
                    .unwrap();
            }
        }
    });
    (cmd_tx, thread)
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the app reported nothing")
        .expect("the app thread ended")
}

async fn next_invocation(seen: &mut mpsc::UnboundedReceiver<Seen>) -> ac::Invocation {
    match next_seen(seen).await {
        Seen::Invocation(i) => i,
        other => panic!("expected an invocation, got {other:?}"),
    }
}

// === the caller ===

/// Calls `echo` until the runtime says the app has no stream open (bounded):
/// UNAVAILABLE, as for an app restarting, since it had one. A call racing
/// the stream's end may still be handed to it and fail with UNAVAILABLE
/// "closed before it answered".
async fn until_no_stream(c: &mut DaprClient<Channel>, id: &str) -> Status {
    for _ in 0..200 {
        match call(c, id, "echo").await {
            Err(e) if e.code() == Code::Unavailable && e.message().contains("no stream open") => {
                return e
            }
            Err(e) if e.code() == Code::Unavailable => {}
            other => panic!("expected no open stream, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the app's invocation stream is still registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shm_app_without_an_app_port_serves_invocations_from_the_mesh() {
    let env = Env::new();
    let (shm, socket) = shm_flags(&env.path("b"));
    let _b = env.runtime("shm-inv-b", &shm).await;
    let a = env.runtime("shm-inv-a", &[]).await;
    let mut ca = a.client().await;

    // No app channel yet.
    let err = call(&mut ca, "shm-inv-b", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (app, app_thread) = shm_app(socket.clone(), "shm-inv-b".into(), seen_tx.clone());
    assert!(matches!(next_seen(&mut seen).await, Seen::Ready));

    // The call reaches the app's stream with everything the caller sent.
    let mut req = Request::new(request("shm-inv-b", "echo", b"hello"));
    req.metadata_mut()
        .insert("x-user", "alice".parse().unwrap());
    let resp = ca.invoke_service(req).await.unwrap();
    let inv = next_invocation(&mut seen).await;
    let sent = inv.request.clone().unwrap();
    assert_eq!(sent.method, "echo");
    assert_eq!(sent.data.unwrap().value, b"hello");
    assert_eq!(sent.content_type, "application/octet-stream");
    let seen_md = |key: &str| {
        inv.metadata
            .iter()
            .find(|md| md.key == key)
            .map(|md| md.values.clone())
            .unwrap_or_default()
    };
    assert_eq!(seen_md("dapr-caller-app-id"), ["shm-inv-a"], "{inv:?}");
    assert_eq!(seen_md("dapr-callee-app-id"), ["shm-inv-b"], "{inv:?}");
    assert_eq!(seen_md("x-user"), ["alice"], "{inv:?}");
    assert!(inv.timeout_ms > 0, "{inv:?}");
    // And the app's answer comes back to the caller.
    assert_eq!(md(&resp, "x-served-by"), "shm-app");
    assert_eq!(md(&resp, "x-seen-caller"), "shm-inv-a");
    let body = resp.into_inner();
    assert_eq!(body.data.unwrap().value, b"hello");
    assert_eq!(body.content_type, "application/octet-stream");

    // An app's error comes back with its code, message and details.
    let err = call(&mut ca, "shm-inv-b", "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "app says no");
    assert_eq!(err.details(), FAIL_DETAILS);
    assert_eq!(
        next_invocation(&mut seen).await.request.unwrap().method,
        "fail"
    );
    let err = call(&mut ca, "shm-inv-b", "nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no method nope");
    next_invocation(&mut seen).await;

    // CANCEL ends the stream: the call the app did not answer fails, and
    // then the app has no stream open.
    let mut c2 = ca.clone();
    let held = tokio::spawn(async move { call(&mut c2, "shm-inv-b", "hold").await });
    assert_eq!(
        next_invocation(&mut seen).await.request.unwrap().method,
        "hold"
    );
    app.send(Cmd::Cancel).unwrap();
    let err = held.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("'hold'"), "{err:?}");
    let err = until_no_stream(&mut ca, "shm-inv-b").await;
    assert!(err.message().contains("ServeInvocations"), "{err:?}");
    app.send(Cmd::Close).unwrap();
    app_thread.join().unwrap();

    // A new session serves again; closing it ends its stream the same way.
    let (app, app_thread) = shm_app(socket, "shm-inv-b".into(), seen_tx);
    assert!(matches!(next_seen(&mut seen).await, Seen::Ready));
    let resp = call(&mut ca, "shm-inv-b", "echo").await.unwrap();
    assert_eq!(resp.into_inner().data.unwrap().value, b"ping");
    next_invocation(&mut seen).await;
    let mut c2 = ca.clone();
    let held = tokio::spawn(async move { call(&mut c2, "shm-inv-b", "hold").await });
    assert_eq!(
        next_invocation(&mut seen).await.request.unwrap().method,
        "hold"
    );
    app.send(Cmd::Close).unwrap();
    app_thread.join().unwrap();
    let err = held.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    until_no_stream(&mut ca, "shm-inv-b").await;
}

// === refusals ===

/// A runtime on its defaults with the shared-memory transport.
async fn shm_runtime(app: &str, dir: &Path, extra: &[&str]) -> (Weft, PathBuf) {
    let (shm, socket) = shm_flags(dir);
    let mut opts = WeftOptions::new(app);
    for a in shm.iter().map(String::as_str).chain(extra.iter().copied()) {
        opts = opts.arg(a);
    }
    (Weft::start(opts).await.unwrap(), socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_serve_invocations_streams_are_refused_over_shm() {
    let dir = tempfile::tempdir().unwrap();
    let (weft, socket) = shm_runtime("shm-inv-bad", dir.path(), &[]).await;
    tokio::task::spawn_blocking(move || {
        let mut c = connect(&socket, "shm-inv-bad");

        // The first message is not `initial`: END with INVALID_ARGUMENT.
        let not_initial = result(ac::InvocationResult {
            id: 1,
            ..Default::default()
        });
        let corr = c
            .open_stream(m::WEFT_SERVE_INVOCATIONS, &not_initial)
            .unwrap();
        let err = c.next_item(corr, WAIT).unwrap_err();
        assert_eq!(err.code, code::INVALID_ARGUMENT, "{err}");
        assert!(err.message.contains("must be 'initial'"), "{err}");
        // `initial` again, as a MORE record: the call ends the same way.
        let corr = open_invocations(&mut c);
        c.send_more(m::WEFT_SERVE_INVOCATIONS, corr, &initial())
            .unwrap();
        let err = c.next_item(corr, WAIT).unwrap_err();
        assert_eq!(err.code, code::INVALID_ARGUMENT, "{err}");
        assert!(err.message.contains("again"), "{err}");
        // Neither ended the session; a MORE for a call that is not open is
        // ignored.
        c.send_more(m::WEFT_SERVE_INVOCATIONS, 4242, &initial())
            .unwrap();
        assert_eq!(c.call(m::WEFT_ECHO, b"ok").unwrap(), b"ok");

        // A MORE whose body does not decode ends the session.
        let corr = open_invocations(&mut c);
        c.send_more(m::WEFT_SERVE_INVOCATIONS, corr, &[0xff, 0xff, 0xff, 0xff])
            .unwrap();
        let reason = c.wait_for_goodbye(WAIT).expect("session not closed");
        assert_eq!(reason.code, code::INVALID_ARGUMENT, "{reason}");
        assert!(
            reason
                .message
                .contains("cannot decode the weft.ServeInvocations message (MORE)"),
            "{reason}"
        );
        assert!(c.call(m::WEFT_ECHO, b"x").is_err());

        // So does a MORE of another bidirectional method on an open
        // ServeInvocations call.
        let mut c = connect(&socket, "shm-inv-bad");
        let corr = open_invocations(&mut c);
        c.send_more(m::SUBSCRIBE_TOPIC_EVENTS_ALPHA1, corr, &[])
            .unwrap();
        let reason = c.wait_for_goodbye(WAIT).expect("session not closed");
        assert_eq!(reason.code, code::INVALID_ARGUMENT, "{reason}");
        assert!(
            reason
                .message
                .contains("which is a weft.ServeInvocations call"),
            "{reason}"
        );
    })
    .await
    .unwrap();
    assert!(weft.logs().contains("protocol error"), "{}", weft.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_invocations_is_refused_when_the_app_has_a_port() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the runtime never needs to reach it here.
    let port = free_port().to_string();
    let (_weft, socket) = shm_runtime("shm-inv-port", dir.path(), &["--app-port", &port]).await;
    tokio::task::spawn_blocking(move || {
        let mut c = connect(&socket, "shm-inv-port");
        let corr = c
            .open_stream(m::WEFT_SERVE_INVOCATIONS, &initial())
            .unwrap();
        let err = c.next_item(corr, WAIT).unwrap_err();
        assert_eq!(err.code, code::FAILED_PRECONDITION, "{err}");
        assert!(err.message.contains("AppCallback port"), "{err}");
        assert_eq!(c.call(m::WEFT_ECHO, b"ok").unwrap(), b"ok");
    })
    .await
    .unwrap();
}
