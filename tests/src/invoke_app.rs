//! An app that serves `AppCallback.OnInvoke` for the invocation tests and
//! the mesh benchmark.
//!
//! Methods:
//! * `echo`: answers the request's data and content type; the response
//!   metadata carries `x-instance` (this app's name), `x-seen-<key>` for
//!   each request header, `x-verb`/`x-query` from the HTTP extension and
//!   `x-deadline` (the `grpc-timeout` it received) when the call had one;
//! * `fail`: answers FAILED_PRECONDITION "app says no" with details;
//! * `sleep/<ms>`: waits, then echoes;
//! * `work/<ms>`: waits its turn (one `work` call at a time: an app of
//!   fixed capacity), works `<ms>`, then echoes;
//! * `flaky`: UNAVAILABLE "app is down" while [`InvokeApp::down`] is set or
//!   [`InvokeApp::fail_next`] is above zero (counting it down), else echoes;
//! * anything else: NOT_FOUND from the app.
//!
//! It serves AppCallback on a port or Unix socket, or receives the same
//! invocations over `weft.runtime.v1.AppChannel/ServeInvocations`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use weft_proto::appchannel as ac;
use weft_proto::appchannel::app_channel_client::AppChannelClient;
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::app_callback_server::AppCallbackServer;

/// Detail bytes the `fail` method attaches to its error.
pub const FAIL_DETAILS: &[u8] = b"\x08\x2a";

/// One app instance.
#[derive(Clone)]
pub struct InvokeApp {
    pub name: String,
    pub calls: Arc<AtomicU64>,
    /// Calls being answered now, and the most ever at once.
    pub in_flight: Arc<AtomicU64>,
    pub max_in_flight: Arc<AtomicU64>,
    /// `flaky` fails while set.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// `flaky` fails this many more times.
    pub fail_next: Arc<AtomicU64>,
    /// Held by a `work` call.
    pub worker: Arc<tokio::sync::Mutex<()>>,
}

impl InvokeApp {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            calls: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicU64::new(0)),
            max_in_flight: Arc::new(AtomicU64::new(0)),
            down: Arc::default(),
            fail_next: Arc::new(AtomicU64::new(0)),
            worker: Arc::default(),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Serves on a free port of 127.0.0.1 until the task is aborted; returns
    /// the port.
    pub async fn serve(&self) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind app port");
        let port = listener.local_addr().expect("app addr").port();
        let svc = AppCallbackServer::new(self.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                )
                .await;
        });
        (port, task)
    }

    /// Serves on a Unix socket at `path` until the task is aborted.
    pub async fn serve_unix(&self, path: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(path).expect("bind app socket");
        let svc = AppCallbackServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        })
    }
}

impl InvokeApp {
    /// Answers one invocation: the response and its metadata. `seen` is the
    /// request's metadata, `deadline` the timeout the app was given.
    pub async fn handle(
        &self,
        req: common::InvokeRequest,
        seen: Vec<(String, String)>,
        deadline: Option<String>,
    ) -> Result<(common::InvokeResponse, Vec<(String, String)>), Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let r = self.answer(req, seen, deadline).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    async fn answer(
        &self,
        req: common::InvokeRequest,
        seen: Vec<(String, String)>,
        deadline: Option<String>,
    ) -> Result<(common::InvokeResponse, Vec<(String, String)>), Status> {
        let method = req.method.clone();
        if method == "flaky" {
            let counted = self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if counted || self.down.load(Ordering::SeqCst) {
                return Err(Status::unavailable("app is down"));
            }
        }
        if method == "fail" {
            return Err(Status::with_details(
                tonic::Code::FailedPrecondition,
                "app says no",
                FAIL_DETAILS.to_vec().into(),
            ));
        }
        if let Some(ms) = method.strip_prefix("work/") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| Status::invalid_argument("work/<ms>"))?;
            let _turn = self.worker.lock().await;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if let Some(ms) = method.strip_prefix("sleep/") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| Status::invalid_argument("sleep/<ms>"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if method != "echo" && method != "flaky" {
            return Err(Status::not_found(format!("no method '{method}'")));
        }
        let mut md = vec![("x-instance".to_string(), self.name.clone())];
        md.extend(seen.into_iter().map(|(k, v)| (format!("x-seen-{k}"), v)));
        if let Some(ext) = req.http_extension {
            let verb = common::http_extension::Verb::try_from(ext.verb)
                .map(|v| v.as_str_name())
                .unwrap_or("?");
            md.push(("x-verb".into(), verb.into()));
            md.push(("x-query".into(), ext.querystring));
        }
        if let Some(d) = deadline {
            md.push(("x-deadline".into(), d));
        }
        let resp = common::InvokeResponse {
            data: req.data,
            content_type: req.content_type,
        };
        Ok((resp, md))
    }

    /// Receives invocations over `AppChannel.ServeInvocations` on the
    /// runtime behind `channel` instead of serving a port. Returns once the
    /// runtime has registered the stream; dropping the handle closes it.
    pub async fn serve_stream(
        &self,
        channel: tonic::transport::Channel,
    ) -> Result<StreamApp, Status> {
        use ac::serve_invocations_request::Kind as In;
        use ac::serve_invocations_response::Kind as Out;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(ac::ServeInvocationsRequest {
            kind: Some(In::Initial(ac::ServeInvocationsInitial {})),
        });
        let mut client = AppChannelClient::new(channel);
        let mut incoming = client
            .serve_invocations(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        match incoming.message().await? {
            Some(ac::ServeInvocationsResponse {
                kind: Some(Out::InitialResponse(_)),
            }) => {}
            other => {
                return Err(Status::internal(format!(
                    "expected the initial response, got {other:?}"
                )))
            }
        }
        let app = self.clone();
        let results = tx.clone();
        // The calls run in a set owned by the reading task: aborting it
        // (dropping the handle) ends them too, and with them every sender
        // of the app's half, so the runtime sees the stream end.
        let task = tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            while let Ok(Some(msg)) = incoming.message().await {
                while calls.try_join_next().is_some() {}
                let Some(Out::Invocation(inv)) = msg.kind else {
                    continue;
                };
                let app = app.clone();
                let results = results.clone();
                calls.spawn(async move {
                    let seen = inv
                        .metadata
                        .iter()
                        .flat_map(|m| m.values.iter().map(|v| (m.key.clone(), v.clone())))
                        .collect();
                    let deadline = Some(format!("{}m", inv.timeout_ms));
                    let req = inv.request.unwrap_or_default();
                    let result = match app.handle(req, seen, deadline).await {
                        Ok((response, md)) => ac::InvocationResult {
                            id: inv.id,
                            response: Some(response),
                            metadata: md
                                .into_iter()
                                .map(|(key, v)| ac::Metadata {
                                    key,
                                    values: vec![v],
                                })
                                .collect(),
                            ..Default::default()
                        },
                        Err(status) => ac::InvocationResult {
                            id: inv.id,
                            code: status.code() as i32,
                            message: status.message().to_string(),
                            details: status.details().to_vec(),
                            ..Default::default()
                        },
                    };
                    let _ = results.send(ac::ServeInvocationsRequest {
                        kind: Some(In::Result(result)),
                    });
                });
            }
        });
        Ok(StreamApp { _tx: tx, task })
    }
}

/// An app instance receiving invocations over a stream it opened.
pub struct StreamApp {
    _tx: tokio::sync::mpsc::UnboundedSender<ac::ServeInvocationsRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

crate::app_callback!(InvokeApp {
    async fn on_invoke(
        &self,
        r: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        let seen: Vec<(String, String)> = r
            .metadata()
            .as_ref()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let deadline = r
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (body, md) = self.handle(r.into_inner(), seen, deadline).await?;
        let mut resp = Response::new(body);
        let map = resp.metadata_mut();
        for (k, v) in md {
            if let (Ok(key), Ok(val)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                map.append(key, val);
            }
        }
        Ok(resp)
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(pb::ListTopicSubscriptionsResponse::default()))
    }

    async fn on_topic_event(
        &self,
        _: Request<pb::TopicEventRequest>,
    ) -> Result<Response<pb::TopicEventResponse>, Status> {
        Err(Status::unimplemented("this app has no subscriptions"))
    }
});

/// An echo app over shared memory: a thread holding a client of the
/// runtime at `socket` that opened `weft.ServeInvocations` and answers
/// every invocation with its data and content type. Returns once the
/// runtime has registered the stream. When the stream ends, other than by
/// the runtime's goodbye, `on_end` gets the reason.
pub fn serve_shm_echo(
    socket: &std::path::Path,
    options: weft_shm::ClientOptions,
    on_end: impl FnOnce(weft_shm::Status) + Send + 'static,
) -> anyhow::Result<()> {
    use ac::serve_invocations_request::Kind as In;
    use ac::serve_invocations_response::Kind as Out;
    use anyhow::{bail, Context};
    use prost::Message;
    use weft_shm::method::WEFT_SERVE_INVOCATIONS;
    let app = options.app_id.clone();
    let mut client = weft_shm::Client::connect(socket, options)
        .map_err(|e| anyhow::anyhow!("app {app} over shared memory: {e:?}"))?;
    let open = ac::ServeInvocationsRequest {
        kind: Some(In::Initial(ac::ServeInvocationsInitial {})),
    };
    let stream = client
        .open_stream(WEFT_SERVE_INVOCATIONS, &open.encode_to_vec())
        .map_err(|e| anyhow::anyhow!("ServeInvocations: {e:?}"))?;
    let first = client
        .next_item(stream, Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("ServeInvocations: {e:?}"))?
        .context("ServeInvocations ended at once")?;
    let first = ac::ServeInvocationsResponse::decode(first.as_slice())?;
    if !matches!(first.kind, Some(Out::InitialResponse(_))) {
        bail!("ServeInvocations: expected the initial response, got {first:?}");
    }
    std::thread::spawn(move || loop {
        let item = match client.next_item(stream, Duration::from_secs(3600)) {
            Ok(Some(item)) => item,
            Ok(None) => return,
            Err(e) if e.code == weft_shm::code::DEADLINE_EXCEEDED => continue,
            Err(e) => return on_end(e),
        };
        let Ok(ac::ServeInvocationsResponse {
            kind: Some(Out::Invocation(inv)),
        }) = ac::ServeInvocationsResponse::decode(item.as_slice())
        else {
            continue;
        };
        let req = inv.request.unwrap_or_default();
        let result = ac::ServeInvocationsRequest {
            kind: Some(In::Result(ac::InvocationResult {
                id: inv.id,
                response: Some(common::InvokeResponse {
                    data: req.data,
                    content_type: req.content_type,
                }),
                ..Default::default()
            })),
        };
        if let Err(e) = client.send_more(WEFT_SERVE_INVOCATIONS, stream, &result.encode_to_vec()) {
            return on_end(e);
        }
    });
    Ok(())
}
