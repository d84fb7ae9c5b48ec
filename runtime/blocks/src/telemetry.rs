//! Traces and metrics, shared by the blocks and the transports.
//!
//! **Traces** (OpenTelemetry): a transport starts the server span of an API
//! call with [`Telemetry::start_call`], which puts it in the call's
//! [`CallContext::trace`]; blocks and the mesh start child spans from there
//! ([`Telemetry::child`]) and propagate W3C `traceparent`/`tracestate`
//! ([`traceparent`]). With tracing off (no exporter, or a sampling rate of
//! 0) nothing here does any work beyond a branch: `CallContext::trace` stays
//! `None` and the trace context is only forwarded as the caller sent it.
//!
//! **Metrics** (Prometheus text at `/metrics`): [`Metrics`] holds every
//! family. Hot paths take pre-made handles ([`Metrics::api`] per transport
//! and method, [`OpMetrics`] per component operation) so that recording is
//! a few atomic adds; the shared-memory transport times one call in
//! [`SHM_TIMING_EVERY`] (counts are exact).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::context::{header, CallContext, TRACEPARENT, TRACESTATE};
use crate::error::{BlockError, Code};

/// The prefix of Weft's own metric names.
const PREFIX: &str = "weft";

/// The shared-memory transport times one call in this many.
pub const SHM_TIMING_EVERY: u64 = 8;

/// Labels as name/value pairs.
pub type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Latency buckets (seconds): 10 µs … 10 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

fn histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Every metric family of one runtime.
pub struct Metrics {
    registry: Mutex<Registry>,
    api_requests: Family<Labels, Counter>,
    api_duration: Family<Labels, Histogram, fn() -> Histogram>,
    component_ops: Family<Labels, Counter>,
    component_errors: Family<Labels, Counter>,
    component_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub pubsub_deliveries: Family<Labels, Counter>,
    pub pubsub_redeliveries: Family<Labels, Counter>,
    pub pubsub_dead_lettered: Family<Labels, Counter>,
    pub pubsub_in_flight: Family<Labels, Gauge>,
    pub shm_sessions: Gauge,
    pub shm_ring_full: Counter,
    pub shm_wakeups: Counter,
    pub mesh_connections: Gauge,
    pub mesh_handshakes: Family<Labels, Counter>,
    pub mesh_ejections: Counter,
    mesh_duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(histogram),
            component_ops: Family::default(),
            component_errors: Family::default(),
            component_duration: Family::new_with_constructor(histogram),
            pubsub_deliveries: Family::default(),
            pubsub_redeliveries: Family::default(),
            pubsub_dead_lettered: Family::default(),
            pubsub_in_flight: Family::default(),
            shm_sessions: Gauge::default(),
            shm_ring_full: Counter::default(),
            shm_wakeups: Counter::default(),
            mesh_connections: Gauge::default(),
            mesh_handshakes: Family::default(),
            mesh_ejections: Counter::default(),
            mesh_duration: Family::new_with_constructor(histogram),
        };
        {
            let mut root = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            let r = root.sub_registry_with_prefix(PREFIX);
            r.register(
                "api_requests",
                "API calls by transport, method and gRPC status code",
                m.api_requests.clone(),
            );
            r.register(
                "api_request_duration_seconds",
                "Time from a call's arrival to its answer, by transport and method",
                m.api_duration.clone(),
            );
            r.register(
                "component_operations",
                "Calls of a component by the building blocks",
                m.component_ops.clone(),
            );
            r.register(
                "component_errors",
                "Component calls that failed",
                m.component_errors.clone(),
            );
            r.register(
                "component_operation_duration_seconds",
                "Time a component call took",
                m.component_duration.clone(),
            );
            r.register(
                "pubsub_deliveries",
                "Events handed to the app",
                m.pubsub_deliveries.clone(),
            );
            r.register(
                "pubsub_redeliveries",
                "Events handed to the app again (attempt > 0)",
                m.pubsub_redeliveries.clone(),
            );
            r.register(
                "pubsub_dead_lettered",
                "Events the app dropped that went to the dead-letter topic",
                m.pubsub_dead_lettered.clone(),
            );
            r.register(
                "pubsub_in_flight",
                "Events out to the app and not yet acked",
                m.pubsub_in_flight.clone(),
            );
            r.register(
                "shm_sessions",
                "Open shared-memory sessions",
                m.shm_sessions.clone(),
            );
            r.register(
                "shm_ring_full",
                "Times the runtime found a response ring full and waited",
                m.shm_ring_full.clone(),
            );
            r.register(
                "shm_wakeups",
                "Wake-up bytes the runtime sent to sleeping apps",
                m.shm_wakeups.clone(),
            );
            r.register(
                "mesh_connections",
                "Open connections from other runtimes",
                m.mesh_connections.clone(),
            );
            r.register(
                "mesh_tls_handshakes",
                "TLS handshakes of mesh connections by side and result",
                m.mesh_handshakes.clone(),
            );
            r.register(
                "mesh_ejections",
                "Instances taken out of load balancing after failures",
                m.mesh_ejections.clone(),
            );
            r.register(
                "mesh_call_duration_seconds",
                "Time of calls to other runtimes, by called app",
                m.mesh_duration.clone(),
            );
        }
        m
    }

    /// Adds a collector read at every scrape (consumer lag); its metric
    /// names get the `weft_` prefix.
    pub fn register_collector(&self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sub_registry_with_prefix(PREFIX)
            .register_collector(c);
    }

    /// Adds a collector whose names stand as they are (the standard
    /// `process_*` metrics).
    pub fn register_unprefixed_collector(
        &self,
        c: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(c);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }

    /// Handles for the calls of `method` over `transport`.
    pub fn api(&self, transport: &'static str, method: &'static str) -> ApiMetrics {
        let l = labels(&[("transport", transport), ("method", method)]);
        ApiMetrics {
            duration_family: self.api_duration.clone(),
            duration: OnceLock::new(),
            family: self.api_requests.clone(),
            labels: l,
            by_code: Default::default(),
        }
    }

    /// Handles for operation `op` of a component.
    pub fn op(&self, component: &str, kind: &str, op: &'static str) -> OpMetrics {
        let l = labels(&[("component", component), ("type", kind), ("operation", op)]);
        OpMetrics {
            calls: self.component_ops.get_or_create(&l).clone(),
            errors: self.component_errors.get_or_create(&l).clone(),
            duration: self.component_duration.get_or_create(&l).clone(),
        }
    }

    /// The latency histogram of calls to `app_id` through the mesh.
    pub fn mesh_call(&self, app_id: &str) -> Histogram {
        self.mesh_duration
            .get_or_create(&labels(&[("app_id", app_id)]))
            .clone()
    }

    /// Labels of a pub/sub subscription's counters.
    pub fn topic_labels(component: &str, topic: &str) -> Labels {
        labels(&[("component", component), ("topic", topic)])
    }
}

/// `messaging.system` of a pub/sub component type, as OpenTelemetry's
/// conventions name the well-known brokers.
pub fn messaging_system(component_type: &str) -> String {
    match component_type {
        "pubsub.kafka" => "kafka".to_string(),
        other => other.to_string(),
    }
}

/// The gRPC name of a code, as metrics label it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Metric handles of one API method on one transport (a code's counter and
/// the latency histogram are made on first use, so methods and codes never
/// called do not show).
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    family: Family<Labels, Counter>,
    labels: Labels,
    by_code: [OnceLock<Counter>; 17],
    duration_family: Family<Labels, Histogram, fn() -> Histogram>,
    duration: OnceLock<Histogram>,
}

impl ApiMetrics {
    /// Records one answered call; `started` when it was timed.
    pub fn record(&self, code: Code, started: Option<Instant>) {
        self.by_code[code.as_i32() as usize]
            .get_or_init(|| {
                let mut l = self.labels.clone();
                l.push(("code", code_name(code).to_string()));
                self.family.get_or_create(&l).clone()
            })
            .inc();
        if let Some(t) = started {
            self.duration
                .get_or_init(|| self.duration_family.get_or_create(&self.labels).clone())
                .observe(t.elapsed().as_secs_f64());
        }
    }
}

/// Pre-made metric handles of one component operation.
#[derive(Clone, Debug)]
pub struct OpMetrics {
    calls: Counter,
    errors: Counter,
    duration: Histogram,
}

impl OpMetrics {
    /// Records one call; `started` when it was timed.
    pub fn record(&self, ok: bool, started: Option<Instant>) {
        self.calls.inc();
        if !ok {
            self.errors.inc();
        }
        if let Some(t) = started {
            self.duration.observe(t.elapsed().as_secs_f64());
        }
    }
}

/// Tracing and metrics of one runtime.
pub struct Telemetry {
    /// `None`: tracing is off.
    tracer: Option<BoxedTracer>,
    app_id: String,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.tracer.is_some())
            .field("app_id", &self.app_id)
            .finish()
    }
}

impl Telemetry {
    /// `tracer` is `None` when tracing is off.
    pub fn new(app_id: &str, tracer: Option<BoxedTracer>) -> Arc<Self> {
        Arc::new(Self {
            tracer,
            app_id: app_id.to_string(),
            metrics: Metrics::new(),
        })
    }

    /// Metrics only (tests, tools).
    pub fn disabled(app_id: &str) -> Arc<Self> {
        Self::new(app_id, None)
    }

    pub fn tracing(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts the server span of an API call (`rpc.system`, `rpc.service`,
    /// `rpc.method`), as a child of the caller's `traceparent`, and makes it
    /// the call's current span. Nothing when tracing is off.
    pub fn start_call(
        &self,
        ctx: &mut CallContext,
        rpc_system: &'static str,
        service: &'static str,
        method: &'static str,
    ) {
        let Some(tracer) = &self.tracer else { return };
        let parent = remote_parent(ctx);
        let span = tracer
            .span_builder(format!("{service}/{method}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", rpc_system),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
                KeyValue::new("weft.app_id", self.app_id.clone()),
            ])
            .start_with_context(tracer, &parent);
        ctx.trace = Some(parent.with_span(span));
    }

    /// Ends the call's span with the outcome's status.
    pub fn end_call(&self, ctx: &CallContext, outcome: Result<(), &BlockError>) {
        if let Some(cx) = &ctx.trace {
            finish(&cx.span(), outcome);
            cx.span().end();
        }
    }

    /// A child span of the call's current span; `None` when the call is not
    /// traced. `span` gives its name and attributes, and runs only for a
    /// traced call (nothing is allocated otherwise). End it with
    /// [`Telemetry::end`].
    pub fn child(
        &self,
        ctx: &CallContext,
        kind: SpanKind,
        span: impl FnOnce() -> (Cow<'static, str>, Vec<KeyValue>),
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let parent = ctx.trace.as_ref()?;
        Some(self.start(tracer, parent, kind, span))
    }

    fn start(
        &self,
        tracer: &BoxedTracer,
        parent: &Context,
        kind: SpanKind,
        span: impl FnOnce() -> (Cow<'static, str>, Vec<KeyValue>),
    ) -> Context {
        let (name, mut attributes) = span();
        attributes.push(KeyValue::new("weft.app_id", self.app_id.clone()));
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        parent.with_span(span)
    }

    /// Runs one call of a component with its metrics and, in a traced
    /// call, its client span (`name`, with the component's type).
    pub async fn component_call<T, E: std::fmt::Display>(
        &self,
        ctx: &CallContext,
        name: &'static str,
        component_type: &str,
        metrics: &OpMetrics,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = ctx.timed.then(Instant::now);
        let span = self.child(ctx, SpanKind::Client, || {
            (
                name.into(),
                vec![KeyValue::new(
                    "weft.component.type",
                    component_type.to_string(),
                )],
            )
        });
        let r = call.await;
        metrics.record(r.is_ok(), started);
        if span.is_some() {
            let e = r
                .as_ref()
                .err()
                .map(|e| BlockError::Internal(e.to_string()));
            Telemetry::end(span, e.as_ref().map_or(Ok(()), Err));
        }
        r
    }

    /// A span whose parent is a trace context carried by a message or a
    /// request (`traceparent`, `tracestate`) rather than a call: pub/sub
    /// deliveries, mesh calls arriving. `None` when tracing is off (and then
    /// `span` does not run).
    pub fn start_from(
        &self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        kind: SpanKind,
        span: impl FnOnce() -> (Cow<'static, str>, Vec<KeyValue>),
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let parent = match traceparent.and_then(|tp| parse_traceparent(tp, tracestate)) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        Some(self.start(tracer, &parent, kind, span))
    }

    /// Ends a span from [`Telemetry::child`] or [`Telemetry::start_from`].
    pub fn end(span: Option<Context>, outcome: Result<(), &BlockError>) {
        if let Some(cx) = span {
            finish(&cx.span(), outcome);
            cx.span().end();
        }
    }
}

fn finish(span: &opentelemetry::trace::SpanRef<'_>, outcome: Result<(), &BlockError>) {
    match outcome {
        Ok(()) => span.set_status(Status::Ok),
        Err(e) => {
            span.set_attribute(KeyValue::new(
                "rpc.grpc.status_code",
                i64::from(e.code().as_i32()),
            ));
            span.set_status(Status::error(e.message().to_string()));
        }
    }
}

/// The caller's trace context from the call's metadata, as a parent.
fn remote_parent(ctx: &CallContext) -> Context {
    match ctx
        .header(TRACEPARENT)
        .and_then(|tp| parse_traceparent(tp, ctx.header(TRACESTATE)))
    {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// A W3C `traceparent` (version 00) with its `tracestate`.
pub fn parse_traceparent(raw: &str, state: Option<&str>) -> Option<SpanContext> {
    let mut parts = raw.trim().split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace_id.len() != 32 || parent.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = state
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// The `traceparent` (and `tracestate`, if any) that makes the receiver a
/// child of `cx`'s span.
pub fn traceparent(cx: &Context) -> Option<(String, Option<String>)> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let tp = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    let ts = sc.trace_state().header();
    Some((tp, (!ts.is_empty()).then_some(ts)))
}

/// Sets `traceparent`/`tracestate` in `headers` to make the receiver a
/// child of `cx`'s span.
pub fn inject(cx: &Context, headers: &mut Vec<weft_proto::mesh::Header>) {
    if let Some((tp, ts)) = traceparent(cx) {
        crate::context::set_header(headers, TRACEPARENT, &tp);
        if let Some(ts) = ts {
            crate::context::set_header(headers, TRACESTATE, &ts);
        }
    }
}

/// The trace id of the call's metadata, for log lines.
pub fn trace_id_of(ctx: &CallContext) -> Option<String> {
    if let Some(cx) = &ctx.trace {
        let span = cx.span();
        let id = span.span_context().trace_id();
        if id != TraceId::INVALID {
            return Some(id.to_string());
        }
    }
    header(&ctx.metadata, TRACEPARENT)
        .and_then(|tp| tp.split('-').nth(1))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let sc = parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("congo=t61rcWkgMzE"),
        )
        .unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "congo=t61rcWkgMzE");
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
    }

    #[test]
    fn api_handles_count_per_code_and_encode_as_prometheus_text() {
        let m = Metrics::new();
        let h = m.api("grpc", "GetState");
        h.record(Code::Ok, Some(Instant::now()));
        h.record(Code::NotFound, None);
        m.op("statestore", "state.sqlite", "get")
            .record(false, Some(Instant::now()));
        let text = m.encode();
        assert!(
            text.contains(
                "weft_api_requests_total{transport=\"grpc\",method=\"GetState\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("code=\"NOT_FOUND\"} 1"), "{text}");
        assert!(
            text.contains(
                "weft_api_request_duration_seconds_count{transport=\"grpc\",method=\"GetState\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("weft_component_errors_total{component=\"statestore\",type=\"state.sqlite\",operation=\"get\"} 1"), "{text}");
    }
}
