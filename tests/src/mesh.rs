//! Shared pieces of the service-invocation tests: a private mesh (a root
//! from `weft ca init`, certificates from `weft ca issue`, a local
//! name-resolution registry of its own) and the calling side.

use std::path::PathBuf;

use tonic::transport::Channel;
use tonic::Status;
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;

use crate::certs::{ca_init, ca_issue, flags};
use crate::{free_port, Weft, WeftOptions};

/// A test's directory: the registry, the root and the certificates.
pub struct MeshEnv {
    dir: tempfile::TempDir,
}

impl Default for MeshEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshEnv {
    pub fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        ca_init(&env.ca(), "public");
        env
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The root's directory.
    pub fn ca(&self) -> PathBuf {
        self.path("ca")
    }

    /// The local name-resolution registry (`WEFT_LOCAL_REGISTRY_DIR`).
    pub fn registry(&self) -> String {
        self.path("registry").to_string_lossy().into_owned()
    }

    /// Certificate flags for an instance of `app_id` called `name`.
    pub fn certs(&self, app_id: &str, name: &str) -> Vec<String> {
        flags(&ca_issue(
            &self.ca(),
            app_id,
            &self.path(&format!("certs/{name}")),
            "1h",
        ))
    }

    /// Options for a runtime of `app_id` in this mesh (certificates, any
    /// free mesh port, the registry), plus `extra`.
    pub fn options(&self, app_id: &str, extra: &[String]) -> WeftOptions {
        let mut opts = WeftOptions::new(app_id)
            .arg("--mesh-port")
            .arg(&free_port().to_string())
            .env("WEFT_LOCAL_REGISTRY_DIR", &self.registry());
        for a in self.certs(app_id, app_id).iter().chain(extra) {
            opts = opts.arg(a);
        }
        opts
    }

    /// A started runtime of `app_id` in this mesh.
    pub async fn runtime(&self, app_id: &str, extra: &[String]) -> Weft {
        Weft::start(self.options(app_id, extra))
            .await
            .expect("start weft")
    }
}

/// `InvokeService` of `method` on app `id` with `data`.
pub fn request(id: &str, method: &str, data: &[u8]) -> pb::InvokeServiceRequest {
    pb::InvokeServiceRequest {
        id: id.into(),
        message: Some(common::InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type: "application/octet-stream".into(),
            http_extension: None,
        }),
    }
}

/// Invokes `method` on app `id` with the data `ping`.
pub async fn call(
    c: &mut DaprClient<Channel>,
    id: &str,
    method: &str,
) -> Result<tonic::Response<common::InvokeResponse>, Status> {
    c.invoke_service(request(id, method, b"ping")).await
}

/// A response metadata value ("" when absent).
pub fn md(resp: &tonic::Response<common::InvokeResponse>, key: &str) -> String {
    resp.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Calls `sleep/20000` on app `id` with a 300 ms deadline: the call fails
/// with DEADLINE_EXCEEDED (or CANCELLED: tonic's server answers an expired
/// `grpc-timeout` so when its own timer fires first), long before the app
/// would have answered.
pub async fn assert_deadline_bounds_the_call(c: &mut DaprClient<Channel>, id: &str) {
    let mut req = tonic::Request::new(request(id, "sleep/20000", b""));
    req.set_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = c.invoke_service(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the call outlived its deadline: {:?}",
        started.elapsed()
    );
}

/// `callers` closed-loop callers of `method` on app `id` through `w` for
/// `secs`: the latencies (ms, sorted) of the calls that succeeded and the
/// count refused by load protection (RESOURCE_EXHAUSTED "load
/// protection"; any other error fails).
pub async fn closed_loop(
    w: &crate::Weft,
    id: &str,
    method: &str,
    callers: usize,
    secs: f64,
) -> (Vec<f64>, u64) {
    let started = std::time::Instant::now();
    let run_for = std::time::Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let mut c = w.client().await;
        let (id, method) = (id.to_string(), method.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut shed) = (Vec::new(), 0u64);
            while started.elapsed() < run_for {
                let t = std::time::Instant::now();
                match call(&mut c, &id, &method).await {
                    Ok(_) => ok.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                        assert!(e.message().contains("load protection"), "{e:?}");
                        shed += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            }
            (ok, shed)
        }));
    }
    let (mut all, mut shed) = (Vec::new(), 0);
    for t in tasks {
        let (o, s) = t.await.expect("caller task");
        all.extend(o);
        shed += s;
    }
    all.sort_by(f64::total_cmp);
    (all, shed)
}

/// The `q` quantile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
