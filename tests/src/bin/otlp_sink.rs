//! An OTLP trace receiver for benchmarks: takes spans over OTLP/gRPC and
//! OTLP/HTTP (the test harness's receiver), counts them, and prints the
//! count every 5 s and when stopped (Ctrl-C / SIGTERM). The endpoints are
//! printed first, as `OTEL_EXPORTER_OTLP_ENDPOINT=…` lines.
//!
//! ```sh
//! target/release/otlp_sink &
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port> target/release/shm_bench --only spin
//! ```

use std::time::Duration;

use weft_tests::otlp::Receiver;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let r = Receiver::start().await;
    println!(
        "OTEL_EXPORTER_OTLP_ENDPOINT={}  # OTLP/gRPC",
        r.grpc_endpoint
    );
    println!(
        "OTEL_EXPORTER_OTLP_ENDPOINT={} OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf  # OTLP/HTTP",
        r.http_endpoint
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut total = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                total += r.spans.drain();
                println!("spans received: {total}");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    total += r.spans.drain();
    println!("spans received: {total}");
}
