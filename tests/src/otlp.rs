//! An OTLP trace receiver for tests: a real `TraceService` gRPC server
//! (OTLP/gRPC) and an HTTP/1.1 endpoint taking `POST /v1/traces` with a
//! protobuf body (OTLP/HTTP), both on 127.0.0.1, keeping every span they
//! receive with the service name of the resource that sent it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting resource (the runtime's app id).
    pub service: String,
    pub name: String,
    /// `SpanKind` as OTLP numbers it (2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: Vec<(String, String)>,
    /// How it arrived: `grpc` or `http`.
    pub via: &'static str,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Where spans are collected.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Spans {
    /// How many spans arrived.
    pub fn len(&self) -> usize {
        self.0.lock().expect("spans lock").len()
    }

    /// Forgets the spans received so far; returns how many there were.
    pub fn drain(&self) -> usize {
        std::mem::take(&mut *self.0.lock().expect("spans lock")).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<ReceivedSpan> {
        self.0.lock().expect("spans lock").clone()
    }

    /// Waits (bounded) until `pred` holds for the spans received so far;
    /// returns them, or every span received when it never held.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let end = Instant::now() + within;
        loop {
            let all = self.all();
            if pred(&all) {
                return Ok(all);
            }
            if Instant::now() > end {
                return Err(all);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until the spans of trace `trace_id` satisfy
    /// `enough`; returns them, or every span received when they never did.
    pub async fn trace(
        &self,
        trace_id: &str,
        within: Duration,
        enough: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let of = |all: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
            all.iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect()
        };
        self.wait_for(within, |all| enough(&of(all)))
            .await
            .map(|all| of(&all))
    }

    fn add(&self, req: ExportTraceServiceRequest, via: &'static str) {
        let mut out = self.0.lock().expect("spans lock");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| text_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: s
                            .attributes
                            .iter()
                            .filter_map(|kv| Some((kv.key.clone(), value_text(kv)?)))
                            .collect(),
                        via,
                    });
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_text(kv: &KeyValue) -> Option<String> {
    Some(match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

fn text_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(value_text)
}

struct Service(Spans);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(r.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub spans: Spans,
    /// `http://127.0.0.1:<port>` of the OTLP/gRPC server.
    pub grpc_endpoint: String,
    /// `http://127.0.0.1:<port>` of the OTLP/HTTP server (base URL; spans
    /// go to `/v1/traces`).
    pub http_endpoint: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Receiver {
    /// Starts both servers on free ports of 127.0.0.1.
    pub async fn start() -> Self {
        let spans = Spans::default();
        let grpc = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind OTLP/gRPC");
        let grpc_endpoint = format!("http://{}", grpc.local_addr().expect("addr"));
        let svc = TraceServiceServer::new(Service(spans.clone()));
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc))
                .await;
        });
        let http = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind OTLP/HTTP");
        let http_endpoint = format!("http://{}", http.local_addr().expect("addr"));
        let s = spans.clone();
        let http_task = tokio::spawn(async move {
            while let Ok((conn, _)) = http.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve_http(conn, s).await;
                });
            }
        });
        Self {
            spans,
            grpc_endpoint,
            http_endpoint,
            tasks: vec![grpc_task, http_task],
        }
    }
}

/// Serves OTLP/HTTP requests on one connection (keep-alive), each
/// `POST /v1/traces` with `Content-Length` and a protobuf body.
async fn serve_http(mut conn: tokio::net::TcpStream, spans: Spans) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        let (status, reply) = if head.starts_with("POST /v1/traces ") {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    spans.add(req, "http");
                    (
                        "200 OK",
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        } else {
            ("404 Not Found", Vec::new())
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        conn.write_all(resp.as_bytes()).await?;
        conn.write_all(&reply).await?;
    }
}
