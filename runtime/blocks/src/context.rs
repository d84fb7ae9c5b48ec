//! The transport-neutral context of one call: who is calling, until when,
//! with which metadata. Every transport (gRPC, HTTP, shared memory, the
//! mesh) fills one [`CallContext`] per call and hands it to the block
//! method with the request, so blocks never look at a transport's types.

use std::time::{Duration, Instant};

use weft_proto::mesh::Header;

/// W3C trace context header: version, trace id, parent span id, flags.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context header: vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// Who is calling, as the transport established it.
#[derive(Debug, Clone, Default)]
pub enum Caller {
    /// The local app, through one of the app-facing transports.
    #[default]
    App,
    /// Another runtime, over the mesh.
    Runtime(PeerIdentity),
}

/// A calling runtime's identity.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// Verified from the caller's certificate.
    Verified {
        trust_domain: String,
        namespace: String,
        app_id: String,
    },
    /// Plain-text development mesh: nothing is verified.
    Unverified,
}

/// How the call passed the API token check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Authentication {
    /// The runtime has no API token.
    #[default]
    NotRequired,
    /// The call presented the runtime's API token.
    Token,
    /// A call from another runtime, authenticated by mutual TLS (or by
    /// nothing in the plain-text development mesh).
    Mesh,
}

/// The context of one call.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub caller: Caller,
    pub authentication: Authentication,
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
    /// The call's metadata (gRPC metadata, HTTP headers, the shared-memory
    /// call context), without the transport's own hop headers. Holds the
    /// W3C trace context (`traceparent`, `tracestate`) when the caller sent
    /// one.
    pub metadata: Vec<Header>,
    /// The call's current span when it is traced (`telemetry`); `None`
    /// with tracing off.
    pub trace: Option<opentelemetry::Context>,
    /// Whether the call's latencies are measured (always over gRPC; one in
    /// a few over shared memory).
    pub timed: bool,
}

impl CallContext {
    /// A call of the local app with nothing but its request.
    pub fn app() -> Self {
        Self::default()
    }

    /// Sets the deadline `timeout` from now.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.deadline = timeout.map(|t| Instant::now() + t);
        self
    }

    pub fn with_metadata(mut self, metadata: Vec<Header>) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_authentication(mut self, authentication: Authentication) -> Self {
        self.authentication = authentication;
        self
    }

    /// How long the caller still waits; `None` when it set no deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The first value of metadata `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        header(&self.metadata, key)
    }

    /// The caller's `traceparent`, if it sent one.
    pub fn traceparent(&self) -> Option<&str> {
        self.header(TRACEPARENT)
    }
}

/// Replaces every value of `key` with `value`.
pub fn set_header(headers: &mut Vec<Header>, key: &str, value: &str) {
    headers.retain(|h| h.key != key);
    headers.push(Header {
        key: key.to_string(),
        values: vec![value.to_string()],
    });
}

/// The first value of `key`, if any.
pub fn header<'a>(headers: &'a [Header], key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.values.first())
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_down_and_saturates() {
        let ctx = CallContext::app().with_timeout(Some(Duration::from_secs(60)));
        let left = ctx.remaining().unwrap();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        let past = CallContext::app().with_timeout(Some(Duration::ZERO));
        assert_eq!(past.remaining(), Some(Duration::ZERO));
        assert_eq!(CallContext::app().remaining(), None);
    }

    #[test]
    fn headers_are_replaced_not_repeated() {
        let mut h = Vec::new();
        set_header(&mut h, TRACEPARENT, "a");
        set_header(&mut h, TRACEPARENT, "b");
        assert_eq!(h.len(), 1);
        assert_eq!(header(&h, TRACEPARENT), Some("b"));
        let ctx = CallContext::app().with_metadata(h);
        assert_eq!(ctx.traceparent(), Some("b"));
    }
}
