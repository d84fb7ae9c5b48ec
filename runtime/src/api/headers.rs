//! gRPC metadata ↔ the header list that service invocation forwards between
//! apps, and the `grpc-timeout` deadline. Shared by the app-facing API, the
//! app channel and the mesh.

use std::time::Duration;

use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tonic::metadata::MetadataMap;
use weft_proto::mesh::Header;

/// Headers that belong to one hop and are never forwarded.
pub fn is_hop_header(key: &str) -> bool {
    key.starts_with(':')
        || key.starts_with("grpc-")
        || matches!(
            key,
            "content-type"
                | "te"
                | "user-agent"
                | "host"
                | "connection"
                | "dapr-api-token"
                | "content-length"
                | "accept-encoding"
        )
}

/// The forwardable entries of `md` (values that are not valid UTF-8 are
/// dropped; `-bin` values stay in their base64 wire form).
pub fn from_metadata(md: &MetadataMap) -> Vec<Header> {
    let map: &HeaderMap = md.as_ref();
    let mut out: Vec<Header> = Vec::new();
    for key in map.keys() {
        let k = key.as_str();
        if is_hop_header(k) {
            continue;
        }
        let values: Vec<String> = map
            .get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if !values.is_empty() {
            out.push(Header {
                key: k.to_string(),
                values,
            });
        }
    }
    out
}

/// Adds `headers` to `md`, skipping hop headers and entries that are not
/// valid HTTP/2 header names or values.
pub fn extend_metadata(md: &mut MetadataMap, headers: &[Header]) {
    let map: &mut HeaderMap = md.as_mut();
    for h in headers {
        if is_hop_header(&h.key) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(h.key.as_bytes()) else {
            continue;
        };
        for v in &h.values {
            if let Ok(value) = HeaderValue::from_str(v) {
                map.append(name.clone(), value);
            }
        }
    }
}

/// The caller's deadline from `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`).
pub fn deadline(md: &MetadataMap) -> Option<Duration> {
    timeout_header(md.as_ref())
}

/// `grpc-timeout` of raw HTTP/2 headers.
pub fn timeout_header(h: &HeaderMap) -> Option<Duration> {
    let raw = h.get("grpc-timeout")?.to_str().ok()?;
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_skips_hop_headers() {
        let mut md = MetadataMap::new();
        md.insert("x-user", "alice".parse().unwrap());
        md.append("x-multi", "1".parse().unwrap());
        md.append("x-multi", "2".parse().unwrap());
        md.insert("dapr-api-token", "secret".parse().unwrap());
        md.insert("grpc-timeout", "5S".parse().unwrap());
        md.insert_bin(
            "x-blob-bin",
            tonic::metadata::MetadataValue::from_bytes(b"\x00\x01"),
        );
        let headers = from_metadata(&md);
        let keys: Vec<&str> = headers.iter().map(|h| h.key.as_str()).collect();
        assert!(keys.contains(&"x-user") && keys.contains(&"x-multi"));
        assert!(!keys.contains(&"dapr-api-token") && !keys.contains(&"grpc-timeout"));
        let mut back = MetadataMap::new();
        extend_metadata(&mut back, &headers);
        assert_eq!(back.get("x-user").unwrap(), "alice");
        assert_eq!(back.get_all("x-multi").iter().count(), 2);
        assert_eq!(
            back.get_bin("x-blob-bin").unwrap().to_bytes().unwrap(),
            &b"\x00\x01"[..]
        );
    }

    #[test]
    fn parses_grpc_timeout() {
        let with = |v: &str| {
            let mut md = MetadataMap::new();
            md.insert("grpc-timeout", v.parse().unwrap());
            deadline(&md)
        };
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("3S"), Some(Duration::from_secs(3)));
        assert_eq!(with("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(with("10x"), None);
        assert_eq!(with("m"), None);
        assert_eq!(deadline(&MetadataMap::new()), None);
    }
}
