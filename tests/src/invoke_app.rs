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
//! * anything else: NOT_FOUND from the app.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::app_callback_server::{AppCallback, AppCallbackServer};

/// Detail bytes the `fail` method attaches to its error.
pub const FAIL_DETAILS: &[u8] = b"\x08\x2a";

/// One app instance.
#[derive(Clone)]
pub struct InvokeApp {
    pub name: String,
    pub calls: Arc<AtomicU64>,
}

impl InvokeApp {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            calls: Arc::new(AtomicU64::new(0)),
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

#[tonic::async_trait]
impl AppCallback for InvokeApp {
    async fn on_invoke(
        &self,
        r: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
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
        let req = r.into_inner();
        let method = req.method.clone();
        if method == "fail" {
            return Err(Status::with_details(
                tonic::Code::FailedPrecondition,
                "app says no",
                FAIL_DETAILS.to_vec().into(),
            ));
        }
        if let Some(ms) = method.strip_prefix("sleep/") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| Status::invalid_argument("sleep/<ms>"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if method != "echo" {
            return Err(Status::not_found(format!("no method '{method}'")));
        }
        let mut resp = Response::new(common::InvokeResponse {
            data: req.data,
            content_type: req.content_type,
        });
        let md = resp.metadata_mut();
        md.insert("x-instance", self.name.parse().expect("ascii name"));
        for (k, v) in seen {
            if let (Ok(key), Ok(val)) = (
                format!("x-seen-{k}").parse::<tonic::metadata::MetadataKey<_>>(),
                v.parse(),
            ) {
                md.append(key, val);
            }
        }
        if let Some(ext) = req.http_extension {
            let verb = common::http_extension::Verb::try_from(ext.verb)
                .map(|v| v.as_str_name())
                .unwrap_or("?");
            md.insert("x-verb", verb.parse().expect("ascii"));
            if let Ok(q) = ext.querystring.parse() {
                md.insert("x-query", q);
            }
        }
        if let Some(d) = deadline.and_then(|d| d.parse().ok()) {
            md.insert("x-deadline", d);
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

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::ListInputBindingsResponse>, Status> {
        Ok(Response::new(pb::ListInputBindingsResponse::default()))
    }

    async fn on_binding_event(
        &self,
        _: Request<pb::BindingEventRequest>,
    ) -> Result<Response<pb::BindingEventResponse>, Status> {
        Err(Status::unimplemented("this app has no bindings"))
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<pb::TopicEventBulkRequest>,
    ) -> Result<Response<pb::TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("this app has no subscriptions"))
    }

    async fn on_job_event(
        &self,
        _: Request<pb::JobEventRequest>,
    ) -> Result<Response<pb::JobEventResponse>, Status> {
        Err(Status::unimplemented("this app has no jobs"))
    }
}
