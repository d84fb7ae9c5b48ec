//! SPIFFE identities of runtimes: `spiffe://<trust-domain>/ns/<namespace>/<app-id>`,
//! the shape Dapr uses, carried as the one `spiffe://` URI SAN of a
//! runtime's certificate.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

use super::SecurityError;

const SCHEME: &str = "spiffe://";

/// The identity of one app's runtimes in a trust domain and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub app_id: String,
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Builds an ID from its parts, validating each.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        app_id: impl Into<String>,
    ) -> Result<Self, SecurityError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            app_id: app_id.into(),
        };
        let invalid = |reason: InvalidName| SecurityError::SpiffeId {
            id: id.to_string(),
            reason: reason.0,
        };
        validate_trust_domain(&id.trust_domain).map_err(&invalid)?;
        validate_segment("namespace", &id.namespace).map_err(&invalid)?;
        validate_segment("app id", &id.app_id).map_err(&invalid)?;
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/<app-id>`.
    pub fn parse(raw: &str) -> Result<Self, SecurityError> {
        let invalid = |reason: &str| SecurityError::SpiffeId {
            id: raw.to_string(),
            reason: reason.to_string(),
        };
        let rest = raw
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("it does not start with 'spiffe://'"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("it has no path; expected /ns/<namespace>/<app-id>"))?;
        let segments: Vec<&str> = path.split('/').collect();
        let [ns, namespace, app_id] = segments[..] else {
            return Err(invalid("the path must be exactly /ns/<namespace>/<app-id>"));
        };
        if ns != "ns" {
            return Err(invalid("the path must start with /ns/"));
        }
        Self::new(trust_domain, namespace, app_id).map_err(|e| match e {
            SecurityError::SpiffeId { reason, .. } => SecurityError::SpiffeId {
                id: raw.to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Reads the SPIFFE ID of a DER certificate: its one `spiffe://` URI
    /// SAN. Other URI SANs are ignored; none or several SPIFFE IDs is an
    /// error.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, SecurityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SecurityError::Certificate(format!("unparseable certificate: {e}")))?;
        let ids = spiffe_uris(&cert)?;
        match ids[..] {
            [one] => Self::parse(one),
            [] => Err(SecurityError::Certificate(format!(
                "certificate '{}' has no spiffe:// URI SAN: it carries no SPIFFE ID",
                cert.subject()
            ))),
            _ => Err(SecurityError::Certificate(format!(
                "certificate '{}' has {} spiffe:// URI SANs ({}); exactly one is required",
                cert.subject(),
                ids.len(),
                ids.join(", ")
            ))),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// === validation ===

/// A trust domain, namespace or app id that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// Checks a trust domain name: 1-255 lowercase letters, digits, `.`, `-`
/// or `_`.
pub fn validate_trust_domain(td: &str) -> Result<(), InvalidName> {
    if td.is_empty() {
        return Err(InvalidName("the trust domain is empty".into()));
    }
    if td.len() > 255 {
        return Err(InvalidName(
            "the trust domain is longer than 255 characters".into(),
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(InvalidName(format!(
            "the trust domain '{td}' contains '{c}': use lowercase letters, digits, '.', '-' or '_'"
        )));
    }
    Ok(())
}

/// Checks one path segment (namespace or app id): letters, digits, `.`,
/// `-` or `_`, and not `.` or `..`.
pub fn validate_segment(what: &str, segment: &str) -> Result<(), InvalidName> {
    if segment.is_empty() {
        return Err(InvalidName(format!("the {what} is empty")));
    }
    if segment == "." || segment == ".." {
        return Err(InvalidName(format!("the {what} cannot be '{segment}'")));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(InvalidName(format!(
            "the {what} '{segment}' contains '{c}': use letters, digits, '.', '-' or '_'"
        )));
    }
    Ok(())
}

/// The trust domain of a trust domain ID `spiffe://<trust-domain>` (the URI
/// SAN of a root CA).
pub(crate) fn parse_trust_domain_id(raw: &str) -> Result<String, InvalidName> {
    let td = raw
        .strip_prefix(SCHEME)
        .ok_or_else(|| InvalidName(format!("'{raw}' does not start with 'spiffe://'")))?;
    validate_trust_domain(td)?;
    Ok(td.to_string())
}

/// The `spiffe://` URI SANs of a certificate.
pub(crate) fn spiffe_uris<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
) -> Result<Vec<&'a str>, SecurityError> {
    let san = cert.subject_alternative_name().map_err(|e| {
        SecurityError::Certificate(format!(
            "certificate '{}' has an unreadable subjectAltName: {e}",
            cert.subject()
        ))
    })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let id = SpiffeId::parse("spiffe://public/ns/default/orders").unwrap();
        assert_eq!(
            id,
            SpiffeId {
                trust_domain: "public".into(),
                namespace: "default".into(),
                app_id: "orders".into()
            }
        );
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");
        let id: SpiffeId = "spiffe://corp.example_1/ns/team-a/Order_Svc.v2"
            .parse()
            .unwrap();
        assert_eq!(id.app_id, "Order_Svc.v2");
    }

    #[test]
    fn refuses_malformed_ids() {
        for (raw, expect) in [
            ("http://public/ns/default/orders", "spiffe://"),
            ("spiffe://public", "no path"),
            ("spiffe://public/ns/default", "exactly /ns/"),
            ("spiffe://public/ns/default/orders/extra", "exactly /ns/"),
            (
                "spiffe://public/namespace/default/orders",
                "start with /ns/",
            ),
            ("spiffe:///ns/default/orders", "trust domain is empty"),
            ("spiffe://Public/ns/default/orders", "contains 'P'"),
            ("spiffe://public/ns//orders", "namespace is empty"),
            ("spiffe://public/ns/default/", "app id is empty"),
            ("spiffe://public/ns/../orders", "cannot be '..'"),
            ("spiffe://public/ns/default/orders?x=1", "contains '?'"),
        ] {
            let err = SpiffeId::parse(raw).unwrap_err().to_string();
            assert!(err.contains(expect), "{raw}: {err}");
            assert!(err.contains(raw), "{raw}: {err}");
        }
    }

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.to_string().try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_one_spiffe_uri_san() {
        let der = cert_with_uris(&["https://example.com/", "spiffe://td/ns/n/a"]);
        assert_eq!(
            SpiffeId::from_cert_der(&der).unwrap().to_string(),
            "spiffe://td/ns/n/a"
        );

        let err = SpiffeId::from_cert_der(&cert_with_uris(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no spiffe:// URI SAN"), "{err}");

        let der = cert_with_uris(&["spiffe://td/ns/n/a", "spiffe://td/ns/n/b"]);
        let err = SpiffeId::from_cert_der(&der).unwrap_err().to_string();
        assert!(err.contains("2 spiffe:// URI SANs"), "{err}");

        let der = cert_with_uris(&["spiffe://td/a/b"]);
        let err = SpiffeId::from_cert_der(&der).unwrap_err().to_string();
        assert!(err.contains("invalid SPIFFE ID 'spiffe://td/a/b'"), "{err}");

        let err = SpiffeId::from_cert_der(b"junk").unwrap_err().to_string();
        assert!(err.contains("unparseable certificate"), "{err}");
    }
}
