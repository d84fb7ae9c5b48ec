//! What the runtime's telemetry costs per call, measured in-process on the
//! same handles the transports use (no runtime, no transport, so the
//! figures are not buried in a round trip's noise):
//!
//! * metrics, always on: an API call counted by code (`ApiMetrics::record`)
//!   untimed, timed (clock read + histogram), and as the shared-memory
//!   transport records (one call in `SHM_TIMING_EVERY` timed); a component
//!   operation (`OpMetrics::record`);
//! * tracing with sampling off: the same call with no tracer (what every
//!   call pays when tracing is not configured);
//! * tracing at 100 %: a traced state Get's spans (the API server span and
//!   the component's client span, started and ended) with the SDK's batch
//!   processor and an exporter that drops what it gets.
//!
//! ```sh
//! cargo build --release -p weft-tests --bin telemetry_bench
//! target/release/telemetry_bench [--iters 5000000]
//! ```

use std::time::Instant;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use weft_blocks::telemetry::{Metrics, Telemetry, SHM_TIMING_EVERY};
use weft_blocks::{CallContext, Code};

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// Best of three rounds of `iters` calls of `f`, in ns per call.
fn ns_per_call(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    for i in 0..iters / 10 {
        f(i);
    }
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iters: u64 = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);

    let metrics = Metrics::new();
    let api = metrics.api("shm", "GetState");
    let op = metrics.op("statestore", "state.sqlite", "get");
    let mut rows: Vec<(&str, f64)> = Vec::new();
    rows.push((
        "API call counted (code), untimed",
        ns_per_call(iters, |_| api.record(Code::Ok, None)),
    ));
    rows.push((
        "API call counted and timed (clock + histogram)",
        ns_per_call(iters, |_| api.record(Code::Ok, Some(Instant::now()))),
    ));
    rows.push((
        "API call as the shm transport records it (1 in 8 timed)",
        ns_per_call(iters, |i| {
            let timed = i.is_multiple_of(SHM_TIMING_EVERY);
            api.record(Code::Ok, timed.then(Instant::now));
        }),
    ));
    rows.push((
        "component operation counted, untimed",
        ns_per_call(iters, |_| op.record(true, None)),
    ));

    // A call's spans: off (no tracer), then on at 100 %.
    let spans = |telemetry: &Telemetry, i: u64| {
        let mut ctx = CallContext::app();
        ctx.timed = i.is_multiple_of(SHM_TIMING_EVERY);
        telemetry.start_call(
            &mut ctx,
            "weft-shm",
            "dapr.proto.runtime.v1.Dapr",
            "GetState",
        );
        let span = telemetry.child(&ctx, SpanKind::Client, || {
            (
                "state get".into(),
                vec![opentelemetry::KeyValue::new(
                    "weft.component.type",
                    "state.sqlite",
                )],
            )
        });
        Telemetry::end(span, Ok(()));
        telemetry.end_call(&ctx, Ok(()));
    };
    let off = Telemetry::disabled("bench");
    rows.push((
        "spans of a state Get, tracing off",
        ns_per_call(iters, |i| spans(&off, i)),
    ));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let on = Telemetry::new(
        "bench",
        Some(BoxedTracer::new(Box::new(provider.tracer("weft")))),
    );
    rows.push((
        "spans of a state Get, tracing at 100 % (server + component span)",
        ns_per_call(iters / 10, |i| spans(&on, i)),
    ));
    let _ = provider.shutdown();

    println!("| what | ns per call |");
    println!("|---|---:|");
    for (what, ns) in rows {
        println!("| {what} | {ns:.1} |");
    }
}
