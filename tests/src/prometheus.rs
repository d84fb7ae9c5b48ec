//! Prometheus for tests: `WEFT_PROMETHEUS_URL` and
//! `WEFT_PROMETHEUS_TARGETS_DIR` (from `scripts/services.sh env`).
//!
//! The test server scrapes one job, `weft`, every second (path `/metrics`);
//! its targets come from file_sd files in the targets dir. A test lists the
//! runtimes it started with [`Prometheus::add_targets`] (the file goes away
//! with the returned guard) and reads what was scraped with
//! [`Prometheus::query`] or [`Prometheus::wait_for`].
//!
//! Tests that need it are marked
//! `#[cfg_attr(weft_no_prometheus, ignore = "needs Prometheus: scripts/services.sh start prometheus; eval \"$(scripts/services.sh env)\"")]`:
//! ignored, with the reason, when the build saw no server, and run (failing
//! in [`Prometheus::require`]) when `CI` or `WEFT_REQUIRE_SERVICES` is set
//! (components/build/services.rs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// One element of an instant vector: the series' labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// How long one HTTP request to the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The test Prometheus server.
#[derive(Debug, Clone)]
pub struct Prometheus {
    /// Base URL, e.g. `http://127.0.0.1:59090` (plain HTTP only).
    pub url: String,
    /// Where file_sd target files go (`<name>.json`).
    pub targets_dir: PathBuf,
}

/// An error answer of the HTTP API (`"status": "error"`).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// `bad_data`, `execution`, `timeout`, ...
    pub error_type: String,
    pub error: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "prometheus {}: {}", self.error_type, self.error)
    }
}

impl std::error::Error for ApiError {}

/// Removes its file_sd target file when dropped (Prometheus then stops
/// scraping those targets and marks their series stale).
#[derive(Debug)]
pub struct TargetsGuard {
    path: PathBuf,
}

impl TargetsGuard {
    /// The target file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TargetsGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Prometheus {
    pub fn new(url: &str, targets_dir: &Path) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            targets_dir: targets_dir.to_path_buf(),
        }
    }

    /// From `WEFT_PROMETHEUS_URL` and `WEFT_PROMETHEUS_TARGETS_DIR`; `None`
    /// when either is unset or empty.
    pub fn from_env() -> Option<Self> {
        let url = env_nonempty("WEFT_PROMETHEUS_URL")?;
        let dir = env_nonempty("WEFT_PROMETHEUS_TARGETS_DIR")?;
        Some(Self::new(&url, Path::new(&dir)))
    }

    /// [`Prometheus::from_env`], panicking when it is not set: for tests
    /// marked `cfg_attr(weft_no_prometheus, ignore = ...)`, which only run
    /// without it when `CI` or `WEFT_REQUIRE_SERVICES` demands every service.
    pub fn require() -> Self {
        Self::from_env().unwrap_or_else(|| {
            panic!(
                "WEFT_PROMETHEUS_URL / WEFT_PROMETHEUS_TARGETS_DIR are not set: start Prometheus (scripts/services.sh start prometheus) and export its environment (scripts/services.sh env)"
            )
        })
    }

    /// Writes `<targets_dir>/<job_file>.json` (temp file + rename, so the
    /// server never reads half a file) listing `targets` with `labels`; the
    /// job `weft` scrapes them from the next refresh (about 1 s). Label
    /// names must be valid Prometheus label names. Panics on I/O errors.
    pub fn add_targets(
        &self,
        job_file: &str,
        targets: &[SocketAddr],
        labels: &[(&str, &str)],
    ) -> TargetsGuard {
        assert!(
            !job_file.is_empty() && !job_file.starts_with('.') && !job_file.contains(['/', '\\']),
            "bad target file name {job_file:?}"
        );
        let text = targets_json(targets, labels);
        std::fs::create_dir_all(&self.targets_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.targets_dir.display()));
        let path = self.targets_dir.join(format!("{job_file}.json"));
        // A dot file not ending in .json: outside the server's `*.json` glob.
        let tmp = self
            .targets_dir
            .join(format!(".{job_file}.json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| {
            let _ = std::fs::remove_file(&tmp);
            panic!("rename {} to {}: {e}", tmp.display(), path.display())
        });
        TargetsGuard { path }
    }

    /// Evaluates `promql` now (`/api/v1/query`). An instant vector yields
    /// one sample per series; a scalar yields one sample without labels.
    /// An error answer of the API is an [`ApiError`] inside the result.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        self.query_within(promql, REQUEST_TIMEOUT).await
    }

    async fn query_within(&self, promql: &str, within: Duration) -> anyhow::Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = self
            .get(&path, within)
            .await
            .with_context(|| format!("query {promql:?} at {}", self.url))?;
        parse_query_response(status, &body).with_context(|| format!("query {promql:?}"))
    }

    /// Polls `promql` every 500 ms until `pred` accepts the result, and
    /// returns that result; fails after `timeout` with the last result or
    /// error, or at once when the query itself is malformed (`bad_data`).
    pub async fn wait_for(
        &self,
        promql: &str,
        pred: impl Fn(&[Sample]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match self
                .query_within(
                    promql,
                    left.clamp(Duration::from_millis(100), REQUEST_TIMEOUT),
                )
                .await
            {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(v) => format!("last result: {v:?}"),
                Err(e) => {
                    if e.downcast_ref::<ApiError>()
                        .is_some_and(|a| a.error_type == "bad_data")
                    {
                        return Err(e);
                    }
                    format!("last error: {e:#}")
                }
            };
            if Instant::now() >= deadline {
                bail!("{promql:?} did not reach the expected result within {timeout:?}; {last}");
            }
            tokio::time::sleep(Duration::from_millis(500).min(left)).await;
        }
    }

    /// HTTP/1.1 GET (Connection: close) of `path` below the base URL.
    async fn get(&self, path: &str, within: Duration) -> anyhow::Result<(u16, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported: {}", self.url))?;
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let prefix = prefix.trim_end_matches('/');
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(authority)
                .await
                .with_context(|| format!("connect to {authority}"))?;
            let req = format!(
                "GET {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            parse_http_response(&buf)
        };
        tokio::time::timeout(within, fut)
            .await
            .map_err(|_| anyhow!("no answer from {authority} within {within:?}"))?
    }
}

/// The file_sd document for `targets` with `labels`.
fn targets_json(targets: &[SocketAddr], labels: &[(&str, &str)]) -> String {
    let mut label_map = serde_json::Map::new();
    for (k, v) in labels {
        let valid = k
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        assert!(valid && !k.is_empty(), "bad label name {k:?}");
        label_map.insert(k.to_string(), Value::String(v.to_string()));
    }
    let targets: Vec<String> = targets.iter().map(|a| a.to_string()).collect();
    serde_json::json!([{ "targets": targets, "labels": label_map }]).to_string()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Status code and body of a whole HTTP/1.1 response (chunked bodies
/// decoded, a Content-Length honoured).
fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("truncated HTTP response ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).context("HTTP header is not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            bail!("HTTP body truncated: {} of {n} bytes", body.len());
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// Decodes a `Transfer-Encoding: chunked` body (extensions and trailers
/// ignored).
fn decode_chunked(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size line"))?;
        let line = std::str::from_utf8(&data[..eol]).context("chunk size line is not UTF-8")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            bail!("truncated chunk of {size} bytes");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The samples of a `/api/v1/query` answer.
fn parse_query_response(status: u16, body: &[u8]) -> anyhow::Result<Vec<Sample>> {
    let v: Value = serde_json::from_slice(body).with_context(|| {
        format!(
            "HTTP {status}, not a JSON answer: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        )
    })?;
    if v["status"] != "success" {
        return Err(ApiError {
            error_type: v["errorType"].as_str().unwrap_or("unknown").to_string(),
            error: v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}: {v}")),
        }
        .into());
    }
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or_else(|| anyhow!("vector answer without a result array: {v}"))?
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .ok_or_else(|| anyhow!("sample without labels: {s}"))?
                    .iter()
                    .map(|(k, v)| {
                        let v = v
                            .as_str()
                            .ok_or_else(|| anyhow!("label {k} is not a string"))?;
                        Ok((k.clone(), v.to_string()))
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok((labels, sample_value(&s["value"])?))
            })
            .collect(),
        Some("scalar") => Ok(vec![(BTreeMap::new(), sample_value(&data["result"])?)]),
        other => bail!("expected an instant vector or a scalar, got {other:?}: {v}"),
    }
}

/// The value of a `[<unix time>, "<value>"]` pair ("NaN", "+Inf" included).
fn sample_value(pair: &Value) -> anyhow::Result<f64> {
    let s = pair[1]
        .as_str()
        .ok_or_else(|| anyhow!("bad sample value {pair}"))?;
    s.parse().with_context(|| format!("bad sample value {s:?}"))
}

/// `promtool` (shipped with Debian's prometheus): `WEFT_PROMTOOL`, else the
/// first `promtool` on `PATH`.
pub fn promtool() -> Option<PathBuf> {
    if let Some(p) = env_nonempty("WEFT_PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("promtool"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn percent_encodes_promql() {
        assert_eq!(
            percent_encode(r#"sum(rate(x{job="weft",a=~"b.*"}[5s])) > 0"#),
            "sum%28rate%28x%7Bjob%3D%22weft%22%2Ca%3D~%22b.%2A%22%7D%5B5s%5D%29%29%20%3E%200"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_http_response(raw).unwrap(), (200, b"hello".to_vec()));

        let raw = b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: Chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            parse_http_response(raw).unwrap(),
            (400, b"Wikipedia in \r\n\r\nchunks.".to_vec())
        );

        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"
        )
        .is_err());
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn parses_vector_scalar_and_error_answers() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","instance":"127.0.0.1:1","job":"weft"},"value":[1700000000.5,"1"]},
            {"metric":{},"value":[1700000000.5,"NaN"]},
            {"metric":{"a":"b"},"value":[1700000000.5,"+Inf"]},
            {"metric":{"a":"c"},"value":[1700000000.5,"-2.5e-3"]}]}}"#;
        let v = parse_query_response(200, body).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(
            v[0],
            (
                labels(&[
                    ("__name__", "up"),
                    ("instance", "127.0.0.1:1"),
                    ("job", "weft")
                ]),
                1.0
            )
        );
        assert!(v[1].0.is_empty() && v[1].1.is_nan());
        assert_eq!(v[2], (labels(&[("a", "b")]), f64::INFINITY));
        assert_eq!(v[3].1, -0.0025);

        let body =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
        assert_eq!(
            parse_query_response(200, body).unwrap(),
            vec![(BTreeMap::new(), 42.0)]
        );

        let body = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error"}"#;
        let e = parse_query_response(400, body).unwrap_err();
        let api = e.downcast_ref::<ApiError>().expect("an ApiError");
        assert_eq!(api.error_type, "bad_data");
        assert!(api.error.contains("parse error"));

        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_query_response(200, body).is_err());
        assert!(parse_query_response(502, b"Bad Gateway").is_err());
    }

    #[test]
    fn target_files_are_file_sd_and_removed_with_their_guard() {
        let dir = tempfile::tempdir().unwrap();
        let prom = Prometheus::new("http://127.0.0.1:1/", &dir.path().join("targets"));
        assert_eq!(prom.url, "http://127.0.0.1:1");
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:4000".parse().unwrap(),
            "[::1]:4001".parse().unwrap(),
        ];
        let first = prom.add_targets("app-a", &addrs, &[("app_id", "a"), ("run", "7")]);
        assert_eq!(first.path(), dir.path().join("targets/app-a.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(first.path()).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "targets": ["127.0.0.1:4000", "[::1]:4001"],
                "labels": {"app_id": "a", "run": "7"}
            }])
        );
        // Rewriting replaces the file; nothing else is left in the dir.
        let second = prom.add_targets("app-a", &addrs[..1], &[]);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("targets"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app-a.json")]);
        let path = second.path().to_path_buf();
        drop(second);
        assert!(!path.exists());
        drop(first);
    }

    #[test]
    #[should_panic(expected = "bad label name")]
    fn rejects_bad_label_names() {
        let dir = tempfile::tempdir().unwrap();
        Prometheus::new("http://127.0.0.1:1", dir.path()).add_targets("x", &[], &[("a-b", "c")]);
    }
}
