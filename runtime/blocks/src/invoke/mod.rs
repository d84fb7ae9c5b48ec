//! Service invocation: an app calls another app by its app id.
//!
//! Outbound (`InvokeService` from the local app) the block validates the
//! request, adds W3C trace context and a deadline, and hands the call to a
//! [`RemoteInvoker`] (the mesh client) — or straight to the local app when it
//! calls itself. Inbound (a call from another runtime, with the caller's
//! verified identity) it checks the target and the caller's claim, applies
//! the access policy and calls the app through an [`AppInvoker`].
//!
//! Errors of the called app travel back unchanged: code, message and
//! details.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use weft_proto::common;
use weft_proto::mesh;
use weft_proto::runtime as pb;

pub mod access;
pub mod stream;

use self::access::{AccessPolicy, Caller as AccessCaller, Decision};
use self::stream::{InvocationStream, InvocationStreams};
use crate::app::{AppInvoker, Invoked};
use crate::context::{set_header, CallContext, Caller, PeerIdentity};
use crate::error::BlockError;
use crate::resiliency::{Policies, Target};
use crate::telemetry::{self, Telemetry};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// Header with the calling app's id, as Dapr sets it for the called app.
pub const CALLER_APP_ID_HEADER: &str = "dapr-caller-app-id";
/// Header with the called app's id, as Dapr sets it for the called app.
pub const CALLEE_APP_ID_HEADER: &str = "dapr-callee-app-id";

/// Content type of a mesh invocation that carries one whole frame of the
/// app's own RPC protocol (a Dubbo request frame: header and body) instead
/// of a Dapr `InvokeRequest` payload. The called runtime hands it to the
/// app's protocol channel ([`InvokeBlock::set_protocol_app`]) after the same
/// identity and access checks; `method` is the protocol's method name,
/// which access policies see as the operation.
pub const DUBBO_FRAME_CONTENT_TYPE: &str = "application/x-weft-dubbo-frame";

/// Reaches another app's runtime (implemented by the mesh client).
pub trait RemoteInvoker: Send + Sync + 'static {
    /// Sends `req` to one instance of `req.target_app_id`, within `timeout`.
    fn invoke(
        &self,
        req: mesh::InvokeRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Invoked, BlockError>>;
}

/// Settings of the invocation block.
#[derive(Debug, Clone)]
pub struct InvokeConfig {
    /// This app's namespace and trust domain: the identity callers in the
    /// plain-text development mesh are assumed to share.
    pub namespace: String,
    pub trust_domain: String,
    /// Longest a call may take when the caller set no shorter deadline.
    pub default_timeout: Duration,
    /// Who may call this app (Dapr's `accessControl`).
    pub access: AccessPolicy,
}

/// The service invocation block of one runtime.
pub struct InvokeBlock {
    app_id: String,
    config: InvokeConfig,
    telemetry: Arc<Telemetry>,
    remote: OnceLock<Arc<dyn RemoteInvoker>>,
    app: OnceLock<Arc<dyn AppInvoker>>,
    /// The app's Dubbo listener, for [`DUBBO_FRAME_CONTENT_TYPE`] calls.
    dubbo: OnceLock<Arc<dyn AppInvoker>>,
    /// Policies and flow rules for calls to other apps.
    resiliency: Arc<Policies>,
    /// Streams the app opened to receive invocations (`ServeInvocations`),
    /// used when it serves no AppCallback port.
    streams: Arc<InvocationStreams>,
}

impl InvokeBlock {
    pub fn new(
        app_id: &str,
        config: InvokeConfig,
        shutdown: tokio::sync::watch::Receiver<bool>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            app_id: app_id.to_string(),
            config,
            telemetry,
            remote: OnceLock::new(),
            app: OnceLock::new(),
            dubbo: OnceLock::new(),
            resiliency: Arc::new(Policies::default()),
            streams: Arc::new(InvocationStreams::new(shutdown)),
        }
    }

    /// Applies `resiliency` to calls to other apps.
    pub fn with_resiliency(mut self, resiliency: Arc<Policies>) -> Self {
        self.resiliency = resiliency;
        self
    }

    /// The trust domain this runtime's identity belongs to.
    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// Connects the mesh client, once the mesh is up.
    pub fn set_remote(&self, remote: Arc<dyn RemoteInvoker>) {
        let _ = self.remote.set(remote);
    }

    /// Connects the local app, when it serves `AppCallback` (--app-port).
    pub fn set_app(&self, app: Arc<dyn AppInvoker>) {
        let _ = self.app.set(app);
    }

    /// Connects the app's Dubbo listener (the runtime's Dubbo proxy), which
    /// receives the calls whose content type is [`DUBBO_FRAME_CONTENT_TYPE`].
    pub fn set_protocol_app(&self, app: Arc<dyn AppInvoker>) {
        let _ = self.dubbo.set(app);
    }

    /// The access policy's answer for a caller whose identity is unknown
    /// (a plain-text Dubbo consumer on the inbound listener): only the
    /// policy's global default applies.
    pub fn admit_anonymous(&self, operation: &str) -> Result<(), BlockError> {
        let caller = AccessCaller {
            trust_domain: &self.config.trust_domain,
            namespace: &self.config.namespace,
            app_id: "",
        };
        match self.config.access.check(&caller, operation, None) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(BlockError::PermissionDenied(why)),
        }
    }

    /// `ServeInvocations`: the app receives this runtime's invocations over
    /// a stream it opened. Refused when the app has an AppCallback port,
    /// which is where invocations go then.
    pub fn serve_invocations<S>(
        &self,
        _ctx: &CallContext,
        requests: S,
    ) -> Result<InvocationStream, BlockError>
    where
        S: futures::Stream<
                Item = Result<weft_proto::appchannel::ServeInvocationsRequest, BlockError>,
            > + Send
            + Unpin
            + 'static,
    {
        if self.app.get().is_some() {
            return Err(BlockError::FailedPrecondition(format!(
                "app '{}' receives invocations on its AppCallback port (--app-port/--app-socket); ServeInvocations is for apps without one",
                self.app_id
            )));
        }
        Ok(self.streams.serve(requests))
    }

    /// The time a call may take: the caller's deadline, capped by the
    /// runtime's timeout.
    fn timeout(&self, ctx: &CallContext) -> Duration {
        ctx.remaining().map_or(self.config.default_timeout, |d| {
            d.min(self.config.default_timeout)
        })
    }

    /// `InvokeService` from the local app: the call's metadata travels to
    /// the called app, with a new trace hop.
    pub async fn invoke_service(
        &self,
        ctx: &CallContext,
        req: pb::InvokeServiceRequest,
    ) -> Result<Invoked, BlockError> {
        if req.id.is_empty() {
            return Err(BlockError::invalid_argument(
                "InvokeServiceRequest.id (the target app id) is required and was empty",
            ));
        }
        let Some(message) = req.message else {
            return Err(BlockError::invalid_argument(
                "InvokeServiceRequest.message is required and was missing",
            ));
        };
        if message.method.is_empty() {
            return Err(BlockError::invalid_argument(
                "InvokeServiceRequest.message.method is required and was empty",
            ));
        }
        let timeout = self.timeout(ctx);
        let mut headers = ctx.metadata.clone();
        let local = req.id == self.app_id;
        // The hop's client span (traced runtimes), else a new parent id in
        // the caller's trace.
        let span = if local {
            self.app_span(ctx, &message.method)
        } else {
            self.telemetry.child(ctx, SpanKind::Client, || {
                (
                    "weft.internal.v1.Mesh/Invoke".into(),
                    vec![
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", "weft.internal.v1.Mesh"),
                        KeyValue::new("rpc.method", "Invoke"),
                        KeyValue::new("weft.invoke.app_id", req.id.clone()),
                        KeyValue::new("weft.invoke.method", message.method.clone()),
                    ],
                )
            })
        };
        match &span {
            Some(cx) => telemetry::inject(cx, &mut headers),
            None => trace_context::start_hop(&mut headers),
        }
        let r = if local {
            // Calling itself: no network hop, same headers as a remote call.
            set_header(&mut headers, CALLER_APP_ID_HEADER, &self.app_id);
            set_header(&mut headers, CALLEE_APP_ID_HEADER, &self.app_id);
            match self.app() {
                Ok(app) => app.on_invoke(message, headers, timeout).await,
                Err(e) => Err(e),
            }
        } else {
            match self.remote.get() {
                None => Err(BlockError::Unavailable(
                    "service invocation: the mesh is not started on this runtime".into(),
                )),
                Some(remote) => {
                    let call = mesh::InvokeRequest {
                        target_app_id: req.id,
                        caller_app_id: self.app_id.clone(),
                        message: Some(message),
                        headers,
                    };
                    let target = Target::App(&call.target_app_id);
                    match self.resiliency.active().filter(|r| r.covers(target)) {
                        Some(r) => {
                            let method = call.message.as_ref().map_or("", |m| m.method.as_str());
                            r.call(target, method, timeout, |t| remote.invoke(call.clone(), t))
                                .await
                        }
                        None => remote.invoke(call, timeout).await,
                    }
                }
            }
        };
        Telemetry::end(span, r.as_ref().map(|_| ()));
        r
    }

    /// The client span of a call into the local app (traced runtimes).
    fn app_span(&self, ctx: &CallContext, method: &str) -> Option<opentelemetry::Context> {
        self.telemetry.child(ctx, SpanKind::Client, || {
            (
                "dapr.proto.runtime.v1.AppCallback/OnInvoke".into(),
                vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "dapr.proto.runtime.v1.AppCallback"),
                    KeyValue::new("rpc.method", "OnInvoke"),
                    KeyValue::new("weft.invoke.method", method.to_string()),
                ],
            )
        })
    }

    /// A call from another runtime; `ctx.caller` is its identity as the
    /// mesh transport verified it.
    pub async fn handle_remote(
        &self,
        ctx: &CallContext,
        req: mesh::InvokeRequest,
    ) -> Result<Invoked, BlockError> {
        if req.target_app_id != self.app_id {
            return Err(BlockError::NotFound(format!(
                "this runtime serves app '{}', not '{}' (stale name resolution?)",
                self.app_id, req.target_app_id
            )));
        }
        let unverified = PeerIdentity::Unverified;
        let peer = match &ctx.caller {
            Caller::Runtime(peer) => peer,
            Caller::App => &unverified,
        };
        let (trust_domain, namespace, caller_app) = match peer {
            PeerIdentity::Verified {
                trust_domain,
                namespace,
                app_id,
            } => {
                if req.caller_app_id != *app_id {
                    return Err(BlockError::PermissionDenied(format!(
                        "caller claims app id '{}' but its certificate is for app '{app_id}'",
                        req.caller_app_id
                    )));
                }
                (trust_domain.as_str(), namespace.as_str(), app_id.as_str())
            }
            PeerIdentity::Unverified => (
                self.config.trust_domain.as_str(),
                self.config.namespace.as_str(),
                req.caller_app_id.as_str(),
            ),
        };
        if caller_app.is_empty() {
            return Err(BlockError::invalid_argument(
                "InvokeRequest.caller_app_id is required and was empty",
            ));
        }
        let Some(message) = req.message else {
            return Err(BlockError::invalid_argument(
                "InvokeRequest.message is required and was missing",
            ));
        };
        let verb = message
            .http_extension
            .as_ref()
            .and_then(|h| common::http_extension::Verb::try_from(h.verb).ok())
            .filter(|v| *v != common::http_extension::Verb::None)
            .map(|v| v.as_str_name());
        let caller = AccessCaller {
            trust_domain,
            namespace,
            app_id: caller_app,
        };
        if let Decision::Deny(why) = self.config.access.check(&caller, &message.method, verb) {
            tracing::info!(caller = caller_app, method = %message.method, "invocation denied: {why}");
            return Err(BlockError::PermissionDenied(why));
        }
        let mut headers = req.headers;
        set_header(&mut headers, CALLER_APP_ID_HEADER, caller_app);
        set_header(&mut headers, CALLEE_APP_ID_HEADER, &self.app_id);
        let timeout = self.timeout(ctx);
        let app = if message.content_type == DUBBO_FRAME_CONTENT_TYPE {
            self.dubbo.get().map(|a| a.as_ref()).ok_or_else(|| {
                BlockError::NotFound(format!(
                    "app '{}' publishes no Dubbo service through its runtime",
                    self.app_id
                ))
            })?
        } else {
            self.app()?
        };
        // Load protection: shed before the app is called.
        let admitted = match self.resiliency.active() {
            Some(r) => r.admit_inbound()?,
            None => None,
        };
        let span = self.app_span(ctx, &message.method);
        if let Some(cx) = &span {
            telemetry::inject(cx, &mut headers);
        }
        let r = app.on_invoke(message, headers, timeout).await;
        if let Some(p) = admitted {
            p.done(std::time::Instant::now());
        }
        Telemetry::end(span, r.as_ref().map(|_| ()));
        r
    }

    /// Where the app receives invocations: its AppCallback port, else the
    /// streams it opened.
    fn app(&self) -> Result<&dyn AppInvoker, BlockError> {
        if let Some(app) = self.app.get() {
            return Ok(app.as_ref());
        }
        if self.streams.any() {
            return Ok(self.streams.as_ref());
        }
        if self.streams.ever_opened() {
            // Between two streams (the app restarting): worth a retry.
            return Err(BlockError::Unavailable(format!(
                "app '{}' receives invocations over ServeInvocations and has no stream open right now",
                self.app_id
            )));
        }
        Err(BlockError::Unimplemented(format!(
            "app '{}' has no app channel: start its runtime with --app-port or --app-socket, or open AppChannel.ServeInvocations from the app, to receive invocations",
            self.app_id
        )))
    }
}

/// W3C trace context (`traceparent`, `tracestate`) across invocations.
pub mod trace_context {
    use crate::context::{header, set_header};
    use weft_proto::mesh;

    pub use crate::context::TRACEPARENT;

    /// Makes the outgoing hop a child of the caller's span: keeps the trace
    /// id and flags of a valid `traceparent` with a new parent id, or starts
    /// a new sampled trace. `tracestate` passes through untouched.
    pub fn start_hop(headers: &mut Vec<mesh::Header>) {
        let span = format!("{:016x}", random_u64() | 1);
        let value = match header(headers, TRACEPARENT).and_then(parse) {
            Some((trace_id, flags)) => format!("00-{trace_id}-{span}-{flags}"),
            None => {
                let trace_id = format!("{:016x}{:016x}", random_u64(), random_u64() | 1);
                format!("00-{trace_id}-{span}-01")
            }
        };
        set_header(headers, TRACEPARENT, &value);
    }

    /// `(trace-id, flags)` of a version-00 traceparent.
    fn parse(raw: &str) -> Option<(&str, &str)> {
        let mut parts = raw.split('-');
        let (version, trace_id, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let ok = version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(parent, 16)
            && hex(flags, 2);
        ok.then_some((trace_id, flags))
    }

    fn random_u64() -> u64 {
        crate::ids::random_u64()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keeps_trace_id_and_flags_with_a_new_parent() {
            let mut h = Vec::new();
            set_header(
                &mut h,
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
            start_hop(&mut h);
            let v = header(&h, TRACEPARENT).unwrap();
            assert!(v.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{v}");
            assert!(v.ends_with("-01"));
            assert!(!v.contains("00f067aa0ba902b7"));
            assert_eq!(h.len(), 1);
        }

        #[test]
        fn starts_a_trace_when_missing_or_malformed() {
            for bad in [None, Some("garbage"), Some("00-0000-00f067aa0ba902b7-01")] {
                let mut h = Vec::new();
                if let Some(b) = bad {
                    set_header(&mut h, TRACEPARENT, b);
                }
                start_hop(&mut h);
                let v = header(&h, TRACEPARENT).unwrap().to_string();
                assert!(parse(&v).is_some(), "{v}");
            }
        }
    }
}
