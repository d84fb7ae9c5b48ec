//! Setting up traces (the OTLP exporter), process metrics and logs.
//!
//! Tracing is on when an OTLP endpoint is known — `spec.tracing.otel.
//! endpointAddress` of the `--config` file (Dapr's spelling), else the
//! standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
//! — and the sampling rate (`spec.tracing.samplingRate`, default 1) is above
//! 0. The protocol is `spec.tracing.otel.protocol` (`grpc` or `http`), else
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`grpc`, `http/protobuf`), else gRPC. `OTEL_SDK_DISABLED=true` turns it
//! off. Sampling follows the caller's decision when it sent a trace
//! context and the rate otherwise (parent-based, trace-id ratio).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use weft_blocks::telemetry::Telemetry;

use crate::config::app_config::TracingSpec;
use crate::config::ConfigError;

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's URL.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Fraction of new traces recorded (0 < rate ≤ 1).
    pub sampling_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// What the configuration and the environment say about tracing; `None`
/// when it is off.
pub fn tracing_settings(
    spec: Option<&TracingSpec>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<TracingSettings>, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let rate = match spec.and_then(|s| s.sampling_rate.as_deref()) {
        None => 1.0,
        Some(raw) => match raw.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                return Err(ConfigError::setting(
                    "--config: spec.tracing.samplingRate",
                    format!("'{raw}' is not a number from 0 to 1"),
                ))
            }
        },
    };
    let otel = spec.and_then(|s| s.otel.as_ref());
    let protocol_word = otel
        .and_then(|o| o.protocol.clone())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    let protocol = match protocol_word.as_deref().map(str::trim) {
        None | Some("grpc") => OtlpProtocol::Grpc,
        Some("http") | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(other) => {
            return Err(ConfigError::setting(
                "spec.tracing.otel.protocol (or OTEL_EXPORTER_OTLP_PROTOCOL)",
                format!("'{other}' is not supported: use grpc or http/protobuf"),
            ))
        }
    };
    let endpoint = match otel.and_then(|o| o.endpoint_address.clone()) {
        Some(addr) => {
            if otel.and_then(|o| o.is_secure).unwrap_or(false) {
                return Err(ConfigError::setting(
                    "--config: spec.tracing.otel.isSecure",
                    "TLS to the collector is not supported: export to a collector on this host or network over plain OTLP (isSecure: false) and let it forward with TLS".to_string(),
                ));
            }
            let base = if addr.contains("://") {
                addr
            } else {
                format!("http://{addr}")
            };
            match protocol {
                OtlpProtocol::Grpc => base,
                OtlpProtocol::HttpProtobuf if base.ends_with("/v1/traces") => base,
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            }
        }
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => e,
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(e) if protocol == OtlpProtocol::HttpProtobuf => {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                }
                Some(e) => e,
                None => return Ok(None),
            },
        },
    };
    if endpoint.starts_with("https://") {
        return Err(ConfigError::setting(
            "OTLP endpoint",
            format!("'{endpoint}': TLS to the collector is not supported: use an http:// endpoint (a collector on this host or network that forwards with TLS)"),
        ));
    }
    if rate == 0.0 {
        return Ok(None);
    }
    Ok(Some(TracingSettings {
        endpoint,
        protocol,
        sampling_rate: rate,
    }))
}

/// A started tracer provider; flushed and shut down by [`Tracing::shutdown`].
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and provider (inside the runtime's tokio
    /// runtime: the exporters' connections live there) and the tracer.
    pub fn start(s: &TracingSettings, app_id: &str) -> anyhow::Result<(Self, BoxedTracer)> {
        let exporter = match s.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(s.endpoint.clone())
                .with_timeout(Duration::from_secs(5))
                .build()?,
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(OnRuntime {
                    client: HyperClient::with_default_connector(Duration::from_secs(5), None),
                    handle: tokio::runtime::Handle::current(),
                })
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(s.endpoint.clone())
                .with_timeout(Duration::from_secs(5))
                .build()?,
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                s.sampling_rate,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(app_id.to_string())
                    .with_attribute(opentelemetry::KeyValue::new(
                        "weft.app_id",
                        app_id.to_string(),
                    ))
                    .build(),
            )
            .build();
        let tracer = BoxedTracer::new(Box::new(provider.tracer("weft")));
        tracing::info!(endpoint = %s.endpoint, protocol = ?s.protocol, sampling_rate = s.sampling_rate, "tracing: exporting spans over OTLP");
        Ok((Self { provider }, tracer))
    }

    /// Exports what is buffered and stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(3)) {
            tracing::warn!(error = %e, "tracing: flushing spans at shutdown failed");
        }
    }
}

/// The OTLP/HTTP client, run on the runtime's tokio runtime: the SDK's
/// batch processor exports from a thread of its own, where hyper (which
/// needs a tokio reactor) cannot run.
#[derive(Debug, Clone)]
struct OnRuntime {
    client: HyperClient,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, HttpError> {
        let client = self.client.clone();
        self.handle
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// The telemetry of a runtime: tracing as configured, metrics always.
pub fn telemetry(
    settings: Option<&TracingSettings>,
    app_id: &str,
) -> anyhow::Result<(Arc<Telemetry>, Option<Tracing>)> {
    let (tracing, tracer) = match settings {
        Some(s) => {
            let (t, tracer) = Tracing::start(s, app_id)?;
            (Some(t), Some(tracer))
        }
        None => (None, None),
    };
    let telemetry = Telemetry::new(app_id, tracer);
    telemetry
        .metrics
        .register_unprefixed_collector(Box::new(ProcessCollector));
    Ok((telemetry, tracing))
}

/// `process_*` metrics read from /proc at scrape time (resident memory, CPU
/// time, open file descriptors, start time), named as Prometheus' client
/// libraries name them.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read_process() else {
            return Ok(());
        };
        ConstGauge::new(p.resident_bytes).encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(p.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(p.open_fds).encode(encoder.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(p.threads).encode(encoder.encode_descriptor(
            "process_threads",
            "Number of OS threads",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

struct ProcessStats {
    resident_bytes: i64,
    cpu_seconds: f64,
    open_fds: i64,
    threads: i64,
}

fn read_process() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime are fields 14 and 15 of stat (11, 12 here); threads 20
    // (17); rss 24 (21), in pages.
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let threads: i64 = f.get(17)?.parse().ok()?;
    let rss_pages: i64 = f.get(21)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    Some(ProcessStats {
        resident_bytes: rss_pages * 4096,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::app_config::OtelSpec;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint_or_with_rate_zero() {
        assert_eq!(tracing_settings(None, env_of(&[])).unwrap(), None);
        let spec = TracingSpec {
            sampling_rate: Some("0".into()),
            otel: Some(OtelSpec {
                endpoint_address: Some("127.0.0.1:4317".into()),
                is_secure: None,
                protocol: None,
            }),
        };
        assert_eq!(tracing_settings(Some(&spec), env_of(&[])).unwrap(), None);
        const ON: &[(&str, &str)] = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")];
        assert!(
            tracing_settings(None, env_of(&[("OTEL_SDK_DISABLED", "true")]))
                .unwrap()
                .is_none()
        );
        assert!(tracing_settings(None, env_of(ON)).unwrap().is_some());
    }

    #[test]
    fn daprs_configuration_and_the_environment() {
        let spec = TracingSpec {
            sampling_rate: Some("0.5".into()),
            otel: Some(OtelSpec {
                endpoint_address: Some("127.0.0.1:4318".into()),
                is_secure: Some(false),
                protocol: Some("http".into()),
            }),
        };
        let s = tracing_settings(Some(&spec), env_of(&[])).unwrap().unwrap();
        assert_eq!(
            s,
            TracingSettings {
                endpoint: "http://127.0.0.1:4318/v1/traces".into(),
                protocol: OtlpProtocol::HttpProtobuf,
                sampling_rate: 0.5,
            }
        );
        let s = tracing_settings(
            None,
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        let bad = TracingSpec {
            sampling_rate: Some("often".into()),
            otel: None,
        };
        let e = tracing_settings(Some(&bad), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.tracing.samplingRate"), "{e}");
        let e = tracing_settings(
            None,
            env_of(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("carrier-pigeon"), "{e}");
    }

    #[test]
    fn process_metrics_read_proc() {
        let p = read_process().expect("/proc/self");
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.threads > 0);
    }
}
