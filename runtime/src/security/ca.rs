//! A small certificate authority for the mesh: a root (ECDSA P-256) that
//! issues workload certificates carrying SPIFFE IDs. It backs `weft ca` and
//! the development mode of [`MeshTls`](super::tls::MeshTls).
//!
//! A root directory holds `ca.crt` (the root certificate, also the trust
//! bundle) and `ca.key` (its PKCS#8 key, mode 0600). The root's URI SAN is
//! the trust domain ID `spiffe://<trust-domain>`, so issuing reads the trust
//! domain back from the root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::time::ASN1Time;

use super::spiffe::{self, SpiffeId};
use super::SecurityError;

/// Default validity of a root: one year.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a workload certificate: one day.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Certificates start this long in the past, to absorb clock skew.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// File name of the root certificate in a CA directory.
pub const ROOT_CERT_FILE: &str = "ca.crt";
/// File name of the root key in a CA directory.
pub const ROOT_KEY_FILE: &str = "ca.key";

/// A root certificate and its key, ready to issue.
pub struct RootCa {
    trust_domain: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The root as rcgen's issuer: same subject and key as `cert_der`.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

/// A workload certificate and its key.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

// === impl RootCa ===

impl RootCa {
    /// Creates a new root for `trust_domain`, valid from a minute ago for
    /// `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, SecurityError> {
        spiffe::validate_trust_domain(trust_domain).map_err(|e| SecurityError::Other(e.0))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let now = SystemTime::now();
        let mut params = root_params(root_subject(trust_domain, &key));
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(rcgen_err)?,
        )];
        params.not_before = asn1_time(now - CLOCK_SKEW)?.to_datetime();
        params.not_after = asn1_time(now + validity)?.to_datetime();
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: cert,
            key,
        })
    }

    /// Loads a root from its certificate and PKCS#8 key (PEM), checking that
    /// they belong together and that the root names its trust domain.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SecurityError> {
        use rustls::pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| SecurityError::Certificate(format!("no root certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| SecurityError::Other(format!("unusable root key: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| SecurityError::Certificate(format!("unparseable root: {e}")))?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(SecurityError::Other(
                "the root key does not match the root certificate".into(),
            ));
        }
        if !x509.is_ca() {
            return Err(SecurityError::Certificate(
                "the root certificate is not a CA (basicConstraints CA:false)".into(),
            ));
        }
        let uris = spiffe::spiffe_uris(&x509)?;
        let [uri] = uris[..] else {
            return Err(SecurityError::Certificate(format!(
                "the root certificate must carry one URI SAN spiffe://<trust-domain>, found {}",
                uris.len()
            )));
        };
        let trust_domain = spiffe::parse_trust_domain_id(uri)
            .map_err(|e| SecurityError::Certificate(format!("the root's trust domain ID: {e}")))?;

        // rcgen signs with an issuer certificate: rebuild one with the root's
        // subject and key. Certificates it issues name the root's subject as
        // their issuer, which is checked below.
        let subject = copy_name(x509.subject())?;
        let issuer = root_params(subject).self_signed(&key).map_err(rcgen_err)?;
        let root = Self {
            trust_domain,
            cert_pem: cert_pem.to_string(),
            cert_der: cert_der.clone(),
            issuer,
            key,
        };
        let probe = root.issue(
            &SpiffeId::new(&root.trust_domain, "probe", "probe")?,
            Duration::from_secs(60),
        )?;
        let (_, probe) = x509_parser::parse_x509_certificate(&probe.cert_der)
            .map_err(|e| SecurityError::Other(format!("issued an unparseable certificate: {e}")))?;
        if probe.issuer().as_raw() != x509.subject().as_raw() {
            return Err(SecurityError::Certificate(
                "the root's subject name cannot be reproduced for issuing; use a root created by `weft ca init`".into(),
            ));
        }
        Ok(root)
    }

    /// The trust domain this root issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (PEM): the trust bundle of its workloads.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The root key (PKCS#8 PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a workload certificate for `id`, valid from a minute ago for
    /// `ttl`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedCert, SecurityError> {
        let now = SystemTime::now();
        self.issue_with_validity(id, now - CLOCK_SKEW, now + ttl)
    }

    /// Issues a workload certificate for `id` with an explicit validity
    /// window (tests use it for expired certificates).
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, SecurityError> {
        if id.trust_domain != self.trust_domain {
            return Err(SecurityError::Other(format!(
                "cannot issue {id}: this root is for trust domain '{}'",
                self.trust_domain
            )));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.app_id.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names =
            vec![SanType::URI(id.to_string().try_into().map_err(rcgen_err)?)];
        // A DNS name too, for TLS clients that want one, when the app id is one.
        if !id.app_id.contains('_') {
            params.subject_alt_names.push(SanType::DnsName(
                id.app_id
                    .to_ascii_lowercase()
                    .try_into()
                    .map_err(rcgen_err)?,
            ));
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = asn1_time(not_before)?.to_datetime();
        params.not_after = asn1_time(not_after)?.to_datetime();
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(rcgen_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_before,
            not_after,
        })
    }
}

/// A root's subject, distinct for each key: a bundle listing an old and a
/// new root during a rotation names two different issuers.
fn root_subject(trust_domain: &str, key: &KeyPair) -> DistinguishedName {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.public_key_raw().hash(&mut h);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    dn.push(
        DnType::CommonName,
        format!("Weft root CA {trust_domain} {:08x}", h.finish() as u32),
    );
    dn
}

fn root_params(subject: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The root's subject as rcgen's name, keeping each value's string type so
/// the encoding is byte-for-byte the same.
fn copy_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, SecurityError> {
    let unsupported = || {
        SecurityError::Certificate(
            "the root's subject name cannot be reproduced for issuing; use a root created by `weft ca init`".into(),
        )
    };
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let [attr] = rdn.iter().collect::<Vec<_>>()[..] else {
            return Err(unsupported());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| unsupported())?;
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            Tag::PrintableString => {
                DnValue::PrintableString(text.try_into().map_err(|_| unsupported())?)
            }
            _ => return Err(unsupported()),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// A point in time as the certificate library's type.
fn asn1_time(t: SystemTime) -> Result<ASN1Time, SecurityError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    ASN1Time::from_timestamp(secs)
        .map_err(|e| SecurityError::Other(format!("time out of range for a certificate: {e}")))
}

fn rcgen_err(e: rcgen::Error) -> SecurityError {
    SecurityError::Other(format!("certificate generation failed: {e}"))
}

// === root directories ===

/// Paths of the root certificate and key in a CA directory.
pub fn root_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(ROOT_CERT_FILE), dir.join(ROOT_KEY_FILE))
}

/// Loads the root of a CA directory; `flag` names the directory in errors.
pub fn load_root(dir: &Path, flag: &'static str) -> Result<RootCa, SecurityError> {
    let (crt, key) = root_paths(dir);
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|e| SecurityError::file(flag, p, format!("cannot read: {e}")))
    };
    let (cert_pem, key_pem) = (read(&crt)?, read(&key)?);
    RootCa::from_pem(&cert_pem, &key_pem).map_err(|e| SecurityError::file(flag, dir, e))
}

/// Writes a root into `dir` (created if needed). Without `overwrite`, an
/// existing root is an error naming its file. Returns the paths written.
pub fn write_root(
    dir: &Path,
    root: &RootCa,
    overwrite: bool,
    flag: &'static str,
) -> Result<Vec<PathBuf>, SecurityError> {
    match place_root(dir, root, overwrite, flag)? {
        None => Ok(vec![dir.join(ROOT_CERT_FILE), dir.join(ROOT_KEY_FILE)]),
        Some(existing) => Err(root_exists(flag, &existing)),
    }
}

/// Loads the root of `dir`, creating one for `trust_domain` first when
/// there is none. Several processes may do this at once: exactly one root
/// is created and all of them return it.
pub fn load_or_create_root(
    dir: &Path,
    trust_domain: &str,
    flag: &'static str,
) -> Result<RootCa, SecurityError> {
    let (crt, key) = root_paths(dir);
    if !crt.exists() && !key.exists() {
        let root = RootCa::generate(trust_domain, DEFAULT_ROOT_VALIDITY)?;
        if place_root(dir, &root, false, flag)?.is_none() {
            tracing::info!(dir = %dir.display(), trust_domain, "created a development root CA");
            return Ok(root);
        }
    }
    // Another process created the root, or is creating it: it links the key
    // first, then the certificate.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while key.exists() && !crt.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    load_root(dir, flag)
}

/// Links a root's files into place (renames them with `overwrite`).
/// Returns the file that already exists when another root is in the way.
///
/// Both files are first written to temporary files, then linked into place
/// key first: a link fails when its target exists, so of several processes
/// racing exactly one places its key, and a reader never sees a partly
/// written file.
fn place_root(
    dir: &Path,
    root: &RootCa,
    overwrite: bool,
    flag: &'static str,
) -> Result<Option<PathBuf>, SecurityError> {
    let (crt, key) = root_paths(dir);
    create_dir(dir, flag)?;
    if !overwrite {
        if let Some(p) = [&key, &crt].into_iter().find(|p| p.exists()) {
            return Ok(Some(p.clone()));
        }
    }
    let tmp_key = write_temp(dir, ROOT_KEY_FILE, root.key_pem().as_bytes(), 0o600, flag)?;
    let tmp_crt = match write_temp(dir, ROOT_CERT_FILE, root.cert_pem().as_bytes(), 0o644, flag) {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&tmp_key);
            return Err(e);
        }
    };
    let place = |tmp: &Path, dest: &Path| -> Result<Option<PathBuf>, SecurityError> {
        let res = if overwrite {
            fs::rename(tmp, dest)
        } else {
            fs::hard_link(tmp, dest)
        };
        match res {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Some(dest.to_path_buf())),
            Err(e) => Err(SecurityError::file(
                flag,
                dest,
                format!("cannot write: {e}"),
            )),
        }
    };
    let res = match place(&tmp_key, &key) {
        Ok(None) => place(&tmp_crt, &crt),
        other => other,
    };
    let _ = fs::remove_file(&tmp_key);
    let _ = fs::remove_file(&tmp_crt);
    res
}

fn root_exists(flag: &'static str, path: &Path) -> SecurityError {
    SecurityError::file(
        flag,
        path,
        "a root already exists; pass --force to replace it (certificates it issued will no longer validate)",
    )
}

/// `weft ca init`: creates a root for `trust_domain` in `dir`.
pub fn init_dir(
    dir: &Path,
    trust_domain: &str,
    validity: Duration,
    force: bool,
) -> Result<Vec<PathBuf>, SecurityError> {
    let root = RootCa::generate(trust_domain, validity)
        .map_err(|e| SecurityError::Other(format!("--trust-domain: {e}")))?;
    write_root(dir, &root, force, "--dir")
}

/// `weft ca issue`: issues a certificate for `app_id` in `namespace` from
/// the root in `ca_dir`, and writes `cert.pem`, `key.pem` (mode 0600) and
/// `ca.pem` (the trust bundle) into `out`. Files are replaced atomically, so
/// a running runtime never reads a half-written one.
pub fn issue_to_dir(
    ca_dir: &Path,
    app_id: &str,
    namespace: &str,
    ttl: Duration,
    out: &Path,
) -> Result<Vec<PathBuf>, SecurityError> {
    let root = load_root(ca_dir, "--ca-dir")?;
    let id = SpiffeId::new(root.trust_domain(), namespace, app_id)?;
    let issued = root.issue(&id, ttl)?;
    create_dir(out, "--out")?;
    let files = [
        ("cert.pem", issued.cert_pem.as_str(), 0o644),
        ("key.pem", issued.key_pem.as_str(), 0o600),
        ("ca.pem", root.cert_pem(), 0o644),
    ];
    let mut written = Vec::new();
    for (name, content, mode) in files {
        let dest = out.join(name);
        let tmp = write_temp(out, name, content.as_bytes(), mode, "--out")?;
        fs::rename(&tmp, &dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            SecurityError::file("--out", &dest, format!("cannot write: {e}"))
        })?;
        written.push(dest);
    }
    Ok(written)
}

/// Creates the directory of a root (mode 0700) if needed, and refuses one
/// that another user owns or others may write to: whoever can write there
/// can replace the root every runtime trusts.
fn create_dir(dir: &Path, flag: &'static str) -> Result<(), SecurityError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SecurityError::file(flag, dir, format!("cannot create directory: {e}")))?;
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| SecurityError::file(flag, dir, format!("cannot read directory: {e}")))?;
    if !meta.is_dir() {
        return Err(SecurityError::file(
            flag,
            dir,
            "is not a directory (a symbolic link?)",
        ));
    }
    let me = fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if meta.uid() != me && me != 0 {
        return Err(SecurityError::file(
            flag,
            dir,
            format!(
                "is owned by user {}, not by this user ({me}): a CA directory must be this user's own",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SecurityError::file(
            flag,
            dir,
            format!(
                "may be written by other users (mode {:o}): make it 0700",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

/// Writes `content` to a new, uniquely named temporary file beside `name`
/// in `dir`, synced to disk.
fn write_temp(
    dir: &Path,
    name: &str,
    content: &[u8],
    mode: u32,
    flag: &'static str,
) -> Result<PathBuf, SecurityError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SecurityError::file(flag, &tmp, format!("cannot write: {e}"))
    })?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("corp", "default", app).unwrap()
    }

    #[test]
    fn issues_workload_certificates() {
        let root = RootCa::generate("corp", DEFAULT_ROOT_VALIDITY).unwrap();
        assert_eq!(root.trust_domain(), "corp");
        let issued = root.issue(&id("orders"), DEFAULT_WORKLOAD_TTL).unwrap();
        assert_eq!(
            SpiffeId::from_cert_der(&issued.cert_der).unwrap(),
            id("orders")
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
        assert!(!x509.is_ca());
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let v = x509.validity();
        let now = ASN1Time::now().timestamp();
        assert!(v.not_before.timestamp() <= now - 59);
        assert!((v.not_after.timestamp() - now - 24 * 3600).abs() < 5);

        let err = root
            .issue(
                &SpiffeId::new("other", "default", "a").unwrap(),
                DEFAULT_WORKLOAD_TTL,
            )
            .err()
            .unwrap();
        assert!(err.to_string().contains("trust domain 'corp'"), "{err}");
    }

    #[test]
    fn a_loaded_root_issues_certificates_that_chain_to_it() {
        let root = RootCa::generate("corp", DEFAULT_ROOT_VALIDITY).unwrap();
        let loaded = RootCa::from_pem(root.cert_pem(), &root.key_pem()).unwrap();
        assert_eq!(loaded.trust_domain(), "corp");
        let issued = loaded.issue(&id("orders"), DEFAULT_WORKLOAD_TTL).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.cert_der().clone()).unwrap();
        let parsed = rustls::server::ParsedCertificate::try_from(&issued.cert_der).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            rustls::pki_types::UnixTime::now(),
            algs.all,
        )
        .unwrap();

        let other = RootCa::generate("corp", DEFAULT_ROOT_VALIDITY).unwrap();
        let err = RootCa::from_pem(root.cert_pem(), &other.key_pem())
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let written = init_dir(&ca, "corp", DEFAULT_ROOT_VALIDITY, false).unwrap();
        assert_eq!(written, vec![ca.join("ca.crt"), ca.join("ca.key")]);
        let mode = fs::metadata(ca.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = fs::read(ca.join("ca.crt")).unwrap();

        let err = init_dir(&ca, "corp", DEFAULT_ROOT_VALIDITY, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dir") && err.contains("ca.key"), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(fs::read(ca.join("ca.crt")).unwrap(), first);

        init_dir(&ca, "corp", DEFAULT_ROOT_VALIDITY, true).unwrap();
        assert_ne!(fs::read(ca.join("ca.crt")).unwrap(), first);
        let leftovers = fs::read_dir(&ca).unwrap().count();
        assert_eq!(leftovers, 2, "temporary files are removed");

        let err = init_dir(&ca, "Corp", DEFAULT_ROOT_VALIDITY, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--trust-domain"), "{err}");
    }

    #[test]
    fn issue_writes_cert_key_and_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let out = dir.path().join("orders");
        init_dir(&ca, "corp", DEFAULT_ROOT_VALIDITY, false).unwrap();
        let written =
            issue_to_dir(&ca, "orders", "team-a", Duration::from_secs(3600), &out).unwrap();
        assert_eq!(
            written,
            vec![
                out.join("cert.pem"),
                out.join("key.pem"),
                out.join("ca.pem")
            ]
        );
        let mode = fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read(out.join("ca.pem")).unwrap(),
            fs::read(ca.join("ca.crt")).unwrap()
        );
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_file(out.join("cert.pem")).unwrap();
        assert_eq!(
            SpiffeId::from_cert_der(&cert).unwrap().to_string(),
            "spiffe://corp/ns/team-a/orders"
        );

        let err = issue_to_dir(&ca, "bad/id", "default", DEFAULT_WORKLOAD_TTL, &out)
            .err()
            .unwrap();
        assert!(err.to_string().contains("app id"), "{err}");
        let err = issue_to_dir(
            &dir.path().join("missing"),
            "a",
            "default",
            DEFAULT_WORKLOAD_TTL,
            &out,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--ca-dir") && err.contains("ca.crt"), "{err}");
    }
}
