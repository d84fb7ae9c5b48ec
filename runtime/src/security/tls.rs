//! Mutual TLS between runtimes: one runtime's certificate, key and trust
//! bundle, as rustls configurations that follow certificate rotation.
//!
//! Each configuration is built once, around a resolver and verifiers that
//! read the *current* material on every handshake. Replacing the material
//! therefore affects new handshakes only: established connections keep
//! running on the keys they negotiated.
//!
//! Peers are authenticated by chain and validity against the trust bundle;
//! the server's DNS name is not checked. Callers check the peer's SPIFFE ID
//! ([`peer_identity`]) after the handshake.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert, ServerConfig,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::task::JoinHandle;

use super::ca::{self, RootCa};
use super::spiffe::SpiffeId;
use super::SecurityError;

/// How often [`MeshTls::spawn_reloader`] looks at the files by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where a runtime's mesh certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files (`--mtls-cert`, `--mtls-key`, `--mtls-trust-bundle`),
    /// reloaded when they change. The bundle may hold several roots, so a
    /// CA rotation can overlap.
    Files {
        cert: PathBuf,
        key: PathBuf,
        trust_bundle: PathBuf,
    },
    /// Development only: a root CA in `dir` (created by the first runtime
    /// that needs it) issues this runtime a certificate for `identity`, in
    /// memory, renewed before it expires.
    DevCa { dir: PathBuf, identity: SpiffeId },
}

/// The reloadable TLS state of one runtime on the mesh.
pub struct MeshTls {
    live: Arc<Live>,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    origin: Origin,
}

/// What [`MeshTls::reload`] reloads from.
#[allow(clippy::large_enum_variant)] // one per runtime
enum Origin {
    Files {
        paths: FilePaths,
        /// Fingerprint of the file contents in force.
        loaded: Mutex<u64>,
    },
    DevCa {
        dir: PathBuf,
        root: RootCa,
        identity: SpiffeId,
    },
}

/// The outcome of one reload attempt.
enum Reload {
    Unchanged,
    Installed,
    /// The new material does not validate; `fingerprint` identifies it.
    Failed {
        fingerprint: u64,
        error: SecurityError,
    },
}

// === impl MeshTls ===

impl MeshTls {
    /// Loads and validates the material, and builds the rustls
    /// configurations around it. Blocking: it reads files, generates keys
    /// and, in development mode, may wait a few seconds for another runtime
    /// that is creating the root.
    pub fn load(source: TlsSource) -> Result<Arc<Self>, SecurityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (material, origin) = match source {
            TlsSource::Files {
                cert,
                key,
                trust_bundle,
            } => {
                let paths = FilePaths {
                    cert,
                    key,
                    trust_bundle,
                };
                let files = paths.read()?;
                let material = paths.material(&files, &provider)?;
                let loaded = Mutex::new(files.fingerprint());
                (material, Origin::Files { paths, loaded })
            }
            TlsSource::DevCa { dir, identity } => {
                tracing::warn!(
                    dir = %dir.display(),
                    "mesh mTLS uses the DEVELOPMENT CA in {}: every runtime of this user on this machine \
                     that uses this directory trusts the others, and anyone who can read it can mint \
                     identities. For development only: in production pass --mtls-cert, --mtls-key and \
                     --mtls-trust-bundle",
                    dir.display()
                );
                let root = ca::load_or_create_root(&dir, &identity.trust_domain, "--dev-ca-dir")?;
                if root.trust_domain() != identity.trust_domain {
                    return Err(SecurityError::file(
                        "--dev-ca-dir",
                        &dir,
                        format!(
                            "the development root is for trust domain '{}', not '{}' (--trust-domain)",
                            root.trust_domain(),
                            identity.trust_domain
                        ),
                    ));
                }
                let material = dev_material(&dir, &root, &identity, &provider)?;
                let origin = Origin::DevCa {
                    dir,
                    root,
                    identity,
                };
                (material, origin)
            }
        };
        tracing::info!(
            identity = %material.identity,
            expires = %fmt_time(material.not_after),
            "mesh certificate loaded"
        );
        let live = Arc::new(Live {
            current: RwLock::new(Arc::new(material)),
            algs: provider.signature_verification_algorithms,
        });
        let tls_err = |e: rustls::Error| SecurityError::Other(format!("TLS configuration: {e}"));

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(live.clone())
            .with_cert_resolver(live.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: every handshake verifies the peer against the
        // bundle in force.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(live.clone())
            .with_client_cert_resolver(live.clone());
        client.alpn_protocols = vec![b"h2".to_vec()];
        client.resumption = Resumption::disabled();

        Ok(Arc::new(Self {
            live,
            provider,
            server: Arc::new(server),
            client: Arc::new(client),
            origin,
        }))
    }

    /// This runtime's SPIFFE ID, from its current certificate.
    pub fn identity(&self) -> SpiffeId {
        self.live.get().identity.clone()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.live.get().not_after.max(0) as u64)
    }

    /// Server side: requires a client certificate that chains to the current
    /// bundle, presents the current certificate; ALPN `h2`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Client side: presents the current certificate, requires a server
    /// certificate that chains to the current bundle (the server name passed
    /// to the connector is not checked); ALPN `h2`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// Reloads now. With files: when their content changed, validates the
    /// new set and swaps it in (`Ok(true)`); a set that does not validate
    /// is an error and the current material stays in force. With the
    /// development CA: renews the certificate once two thirds of its
    /// lifetime have passed. Reads files synchronously (they are small).
    pub fn reload(&self) -> Result<bool, SecurityError> {
        match self.try_reload() {
            Reload::Unchanged => Ok(false),
            Reload::Installed => Ok(true),
            Reload::Failed { error, .. } => Err(error),
        }
    }

    /// Reloads every `interval` in a tokio task (see [`reload`](Self::reload)),
    /// logging each swap at INFO. A new set that still fails to validate one
    /// interval later (so not merely half-written) is logged as an ERROR,
    /// once. The task ends when the last `Arc<MeshTls>` is dropped, or when
    /// the returned handle is aborted.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // The failing set last seen, and whether it was reported.
            let mut failing: Option<(u64, bool)> = None;
            // The last expiry notice logged: (certificate's end, notice).
            let mut noticed: Option<(i64, Expiry)> = None;
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                match tls.try_reload() {
                    Reload::Unchanged | Reload::Installed => failing = None,
                    Reload::Failed { fingerprint, error } => match &mut failing {
                        Some((seen, reported)) if *seen == fingerprint => {
                            if !*reported {
                                *reported = true;
                                tracing::error!(
                                    error = %error,
                                    identity = %tls.identity(),
                                    "mesh certificate reload failed; the current certificate stays in force"
                                );
                            }
                        }
                        _ => {
                            tracing::debug!(error = %error, "mesh certificate files changed but do not validate yet");
                            failing = Some((fingerprint, false));
                        }
                    },
                }
                if let Origin::Files { .. } = tls.origin {
                    let current = tls.live.get();
                    let notice = expiry(current.not_before, current.not_after, unix_now());
                    if notice != Expiry::Fine && noticed != Some((current.not_after, notice)) {
                        noticed = Some((current.not_after, notice));
                        let expires = fmt_time(current.not_after);
                        if notice == Expiry::Expired {
                            tracing::error!(identity = %current.identity, expired = %expires, "mesh certificate has EXPIRED and was not replaced: other runtimes refuse this one until --mtls-cert is renewed (weft ca issue)");
                        } else {
                            tracing::warn!(identity = %current.identity, expires = %expires, "mesh certificate is past two thirds of its lifetime and was not replaced: renew --mtls-cert (weft ca issue) before it expires");
                        }
                    }
                }
            }
        })
    }

    fn try_reload(&self) -> Reload {
        let failed = |fingerprint, error| Reload::Failed { fingerprint, error };
        match &self.origin {
            Origin::Files { paths, loaded } => {
                let files = match paths.read() {
                    Ok(f) => f,
                    Err(e) => return failed(0, e),
                };
                let fingerprint = files.fingerprint();
                let mut loaded = loaded.lock().unwrap_or_else(PoisonError::into_inner);
                if *loaded == fingerprint {
                    return Reload::Unchanged;
                }
                match paths.material(&files, &self.provider) {
                    Ok(material) => {
                        *loaded = fingerprint;
                        self.install(material);
                        Reload::Installed
                    }
                    Err(e) => failed(fingerprint, e),
                }
            }
            Origin::DevCa {
                dir,
                root,
                identity,
            } => {
                let current = self.live.get();
                if !renewal_due(current.not_before, current.not_after, unix_now()) {
                    return Reload::Unchanged;
                }
                match dev_material(dir, root, identity, &self.provider) {
                    Ok(material) => {
                        self.install(material);
                        Reload::Installed
                    }
                    Err(e) => failed(0, e),
                }
            }
        }
    }

    fn install(&self, material: Material) {
        tracing::info!(
            identity = %material.identity,
            expires = %fmt_time(material.not_after),
            "mesh certificate reloaded: new handshakes use it"
        );
        *self
            .live
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(material);
    }
}

/// The SPIFFE ID of a peer, from the certificate chain it presented (the
/// leaf first), e.g. `connection.peer_certificates()`.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, SecurityError> {
    let leaf = certs.first().ok_or_else(|| {
        SecurityError::Certificate("the peer presented no certificate".to_string())
    })?;
    SpiffeId::from_cert_der(leaf)
}

/// Renew once two thirds of the lifetime have passed.
fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    now >= not_before + (not_after - not_before) * 2 / 3
}

/// How close a certificate is to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Fine,
    /// Past the point where it should have been renewed.
    Due,
    Expired,
}

fn expiry(not_before: i64, not_after: i64, now: i64) -> Expiry {
    if now >= not_after {
        Expiry::Expired
    } else if renewal_due(not_before, not_after, now) {
        Expiry::Due
    } else {
        Expiry::Fine
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn fmt_time(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map_or_else(|_| unix.to_string(), |t| t.to_string())
}

// === material ===

/// One consistent set: own certificate and key, trust bundle.
struct Material {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    identity: SpiffeId,
    /// Validity of the own certificate, in Unix seconds.
    not_before: i64,
    not_after: i64,
}

/// Why a set does not make a [`Material`].
enum Flaw {
    /// The key is unusable or not the certificate's.
    Key(String),
    /// The certificate has no usable SPIFFE ID.
    Identity(String),
    /// The certificate does not chain to the bundle, or is not valid now.
    Chain(String),
}

impl Material {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, Flaw> {
        let leaf = chain[0].clone();
        let identity = SpiffeId::from_cert_der(&leaf).map_err(|e| Flaw::Identity(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                Flaw::Key("the key does not belong to the certificate".into())
            }
            e => Flaw::Key(format!("unusable private key: {e}")),
        })?;
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| Flaw::Chain(e.to_string()))?;

        // The certificate serves both ends of a connection: check both.
        let now = UnixTime::now();
        let parsed = ParsedCertificate::try_from(&leaf).map_err(|e| Flaw::Chain(e.to_string()))?;
        let intermediates = &certified.cert[1..];
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| Flaw::Chain(e.to_string()))?;
        client_verifier
            .verify_client_cert(&leaf, intermediates, now)
            .map_err(|e| Flaw::Chain(e.to_string()))?;

        let (_, x509) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| Flaw::Chain(format!("unparseable certificate: {e}")))?;
        let validity = x509.validity();
        Ok(Self {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            key: Arc::new(certified),
            roots,
            client_verifier,
            identity,
        })
    }
}

/// A fresh certificate from the development root.
fn dev_material(
    dir: &Path,
    root: &RootCa,
    identity: &SpiffeId,
    provider: &Arc<CryptoProvider>,
) -> Result<Material, SecurityError> {
    let fail = |reason: String| SecurityError::file("--dev-ca-dir", dir, reason);
    let issued = root.issue(identity, ca::DEFAULT_WORKLOAD_TTL)?;
    let mut roots = RootCertStore::empty();
    roots
        .add(root.cert_der().clone())
        .map_err(|e| fail(format!("unusable root: {e}")))?;
    Material::new(
        vec![issued.cert_der],
        PrivateKeyDer::Pkcs8(issued.key_der),
        roots,
        provider,
    )
    .map_err(|flaw| match flaw {
        Flaw::Key(r) | Flaw::Identity(r) | Flaw::Chain(r) => fail(r),
    })
}

/// The three files of [`TlsSource::Files`].
struct FilePaths {
    cert: PathBuf,
    key: PathBuf,
    trust_bundle: PathBuf,
}

/// The contents of the three files, read together.
struct FileSet {
    cert: Vec<u8>,
    key: Vec<u8>,
    trust_bundle: Vec<u8>,
}

impl FileSet {
    fn fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        (&self.cert, &self.key, &self.trust_bundle).hash(&mut h);
        h.finish()
    }
}

impl FilePaths {
    fn read(&self) -> Result<FileSet, SecurityError> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| SecurityError::file(flag, path, format!("cannot read: {e}")))
        };
        Ok(FileSet {
            cert: read("--mtls-cert", &self.cert)?,
            key: read("--mtls-key", &self.key)?,
            trust_bundle: read("--mtls-trust-bundle", &self.trust_bundle)?,
        })
    }

    /// Parses and validates a set of files; errors name the file at fault.
    fn material(
        &self,
        files: &FileSet,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Material, SecurityError> {
        let cert_err = |reason: String| SecurityError::file("--mtls-cert", &self.cert, reason);
        let bundle_err =
            |reason: String| SecurityError::file("--mtls-trust-bundle", &self.trust_bundle, reason);

        let chain = pem_certs(&files.cert).map_err(cert_err)?;
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
            SecurityError::file(
                "--mtls-key",
                &self.key,
                format!("no private key (PKCS#8, SEC1 or PKCS#1 PEM): {e}"),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for (i, root) in pem_certs(&files.trust_bundle)
            .map_err(bundle_err)?
            .into_iter()
            .enumerate()
        {
            roots.add(root).map_err(|e| {
                bundle_err(format!("certificate #{} is not a usable root: {e}", i + 1))
            })?;
        }
        Material::new(chain, key, roots, provider).map_err(|flaw| match flaw {
            Flaw::Key(r) => SecurityError::file(
                "--mtls-key",
                &self.key,
                format!("{r} (--mtls-cert {})", self.cert.display()),
            ),
            Flaw::Identity(r) => cert_err(r),
            Flaw::Chain(r) => cert_err(format!(
                "does not chain to a root of --mtls-trust-bundle {}, or is not valid now: {r}",
                self.trust_bundle.display()
            )),
        })
    }
}

/// The certificates of a PEM file, at least one.
fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

// === impl Live ===

/// The material in force, read by the resolvers and verifiers of both
/// configurations at each handshake.
struct Live {
    current: RwLock<Arc<Material>>,
    algs: WebPkiSupportedAlgorithms,
}

impl Live {
    fn get(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.get().identity.to_string())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Live {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get().key.clone())
    }
}

impl ResolvesClientCert for Live {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Live {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the bundle changes, and a peer has one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ServerCertVerifier for Live {
    /// Chain and validity against the current bundle; the server name is
    /// not checked (the caller checks the SPIFFE ID).
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.get().roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

    use super::*;
    use crate::security::ca::{IssuedCert, DEFAULT_ROOT_VALIDITY, DEFAULT_WORKLOAD_TTL};

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("corp", "default", app).unwrap()
    }

    fn root() -> RootCa {
        RootCa::generate("corp", DEFAULT_ROOT_VALIDITY).unwrap()
    }

    /// A directory with cert.pem, key.pem and bundle.pem.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(issued: &IssuedCert, bundle: &[&RootCa]) -> Self {
            let files = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            files.write_cert(issued);
            files.write_bundle(bundle);
            files
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write_cert(&self, issued: &IssuedCert) {
            std::fs::write(self.path("cert.pem"), &issued.cert_pem).unwrap();
            std::fs::write(self.path("key.pem"), &issued.key_pem).unwrap();
        }

        fn write_bundle(&self, roots: &[&RootCa]) {
            let pem: String = roots.iter().map(|r| r.cert_pem()).collect();
            std::fs::write(self.path("bundle.pem"), pem).unwrap();
        }

        fn source(&self) -> TlsSource {
            TlsSource::Files {
                cert: self.path("cert.pem"),
                key: self.path("key.pem"),
                trust_bundle: self.path("bundle.pem"),
            }
        }

        fn load(&self) -> Arc<MeshTls> {
            MeshTls::load(self.source()).unwrap()
        }
    }

    fn files_for(root: &RootCa, app: &str, bundle: &[&RootCa]) -> Files {
        Files::new(&root.issue(&id(app), DEFAULT_WORKLOAD_TTL).unwrap(), bundle)
    }

    type Pair = (
        io::Result<client::TlsStream<TcpStream>>,
        io::Result<server::TlsStream<TcpStream>>,
    );

    /// A TLS handshake over a loopback TCP connection.
    async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Pair {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(server).accept(tcp).await
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("weft.mesh").unwrap();
            TlsConnector::from(client).connect(name, tcp).await
        };
        tokio::join!(connect, accept)
    }

    async fn connected(
        server: &MeshTls,
        client: &MeshTls,
    ) -> (client::TlsStream<TcpStream>, server::TlsStream<TcpStream>) {
        let (c, s) = handshake(server.server_config(), client.client_config()).await;
        (c.unwrap(), s.unwrap())
    }

    /// The server's error of a refused handshake.
    async fn refused_by_server(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> String {
        let (_, s) = handshake(server, client).await;
        s.expect_err("the server accepted the handshake")
            .to_string()
    }

    fn server_leaf(stream: &client::TlsStream<TcpStream>) -> CertificateDer<'static> {
        stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    async fn ping(c: &mut client::TlsStream<TcpStream>, s: &mut server::TlsStream<TcpStream>) {
        let mut buf = [0u8; 4];
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    /// A client config that verifies servers like `like`, with the given
    /// client certificate (or none).
    fn raw_client(like: &MeshTls, cert: Option<&IssuedCert>) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(like.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(like.live.clone());
        Arc::new(match cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(
                    vec![c.cert_der.clone()],
                    PrivateKeyDer::Pkcs8(c.key_der.clone_key()),
                )
                .unwrap(),
        })
    }

    fn expired(root: &RootCa, app: &str) -> IssuedCert {
        let now = SystemTime::now();
        root.issue_with_validity(
            &id(app),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn handshake_authenticates_both_sides() {
        let root = root();
        let server = files_for(&root, "orders", &[&root]).load();
        let client = files_for(&root, "checkout", &[&root]).load();
        assert_eq!(server.identity(), id("orders"));

        let (mut c, mut s) = connected(&server, &client).await;
        let (_, conn) = s.get_ref();
        assert_eq!(
            peer_identity(conn.peer_certificates().unwrap()).unwrap(),
            id("checkout")
        );
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let (_, conn) = c.get_ref();
        assert_eq!(
            peer_identity(conn.peer_certificates().unwrap()).unwrap(),
            id("orders")
        );
        ping(&mut c, &mut s).await;

        assert!(peer_identity(&[]).is_err());
    }

    #[tokio::test]
    async fn refuses_a_client_without_certificate() {
        let root = root();
        let server = files_for(&root, "orders", &[&root]).load();
        let err = refused_by_server(server.server_config(), raw_client(&server, None)).await;
        assert!(err.contains("no certificate"), "{err}");
    }

    #[tokio::test]
    async fn refuses_a_client_of_another_root() {
        let (root, other) = (root(), root());
        let server = files_for(&root, "orders", &[&root]).load();
        // The client trusts both roots but holds a certificate of the other.
        let client = files_for(&other, "checkout", &[&root, &other]).load();
        let err = refused_by_server(server.server_config(), client.client_config()).await;
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn refuses_an_expired_client_certificate() {
        let root = root();
        let server = files_for(&root, "orders", &[&root]).load();
        let client = raw_client(&server, Some(&expired(&root, "checkout")));
        let err = refused_by_server(server.server_config(), client).await;
        assert!(err.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn refuses_an_expired_server_certificate() {
        let root = root();
        let client = files_for(&root, "checkout", &[&root]).load();
        let stale = expired(&root, "orders");
        let server = ServerConfig::builder_with_provider(client.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client.live.clone())
            .with_single_cert(
                vec![stale.cert_der.clone()],
                PrivateKeyDer::Pkcs8(stale.key_der.clone_key()),
            )
            .unwrap();
        let (c, _) = handshake(Arc::new(server), client.client_config()).await;
        let err = c.expect_err("the client accepted the server").to_string();
        assert!(err.contains("expired"), "{err}");
    }

    #[test]
    fn load_names_the_file_at_fault() {
        let (root, other) = (root(), root());
        let files = files_for(&root, "orders", &[&root]);
        let err_of = |files: &Files| MeshTls::load(files.source()).err().unwrap().to_string();
        let cert = files.path("cert.pem").display().to_string();
        let key = files.path("key.pem").display().to_string();
        let bundle = files.path("bundle.pem").display().to_string();

        // Key of another certificate.
        let good = std::fs::read(files.path("key.pem")).unwrap();
        let stray = root.issue(&id("orders"), DEFAULT_WORKLOAD_TTL).unwrap();
        std::fs::write(files.path("key.pem"), &stray.key_pem).unwrap();
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-key {key}: the key does not belong")),
            "{err}"
        );
        std::fs::write(files.path("key.pem"), "junk").unwrap();
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-key {key}: no private key")),
            "{err}"
        );
        std::fs::write(files.path("key.pem"), good).unwrap();

        // A bundle that is not the certificate's.
        files.write_bundle(&[&other]);
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-cert {cert}: does not chain")),
            "{err}"
        );
        assert!(
            err.contains(&format!("--mtls-trust-bundle {bundle}")),
            "{err}"
        );
        assert!(err.contains("UnknownIssuer"), "{err}");
        std::fs::write(files.path("bundle.pem"), "").unwrap();
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-trust-bundle {bundle}: no CERTIFICATE")),
            "{err}"
        );
        files.write_bundle(&[&root]);

        // Expired.
        files.write_cert(&expired(&root, "orders"));
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-cert {cert}")) && err.contains("expired"),
            "{err}"
        );

        // No SPIFFE ID.
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let plain = rcgen::CertificateParams::new(vec!["orders".to_string()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        std::fs::write(files.path("cert.pem"), plain.pem()).unwrap();
        std::fs::write(files.path("key.pem"), key_pair.serialize_pem()).unwrap();
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-cert {cert}")) && err.contains("no spiffe://"),
            "{err}"
        );

        // Missing.
        std::fs::remove_file(files.path("cert.pem")).unwrap();
        let err = err_of(&files);
        assert!(
            err.starts_with(&format!("--mtls-cert {cert}: cannot read")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn rotation_reaches_new_handshakes_and_spares_established_ones() {
        let (old_root, new_root) = (root(), root());
        let server_files = files_for(&old_root, "orders", &[&old_root]);
        let client_files = files_for(&old_root, "checkout", &[&old_root]);
        let (server, client) = (server_files.load(), client_files.load());
        let (mut c1, mut s1) = connected(&server, &client).await;
        let first = server_leaf(&c1);

        // CA rotation: both bundles list both roots, then the server gets a
        // certificate of the new root.
        assert!(!server.reload().unwrap(), "nothing changed yet");
        client_files.write_bundle(&[&old_root, &new_root]);
        assert!(client.reload().unwrap());
        let rotated = new_root.issue(&id("orders"), DEFAULT_WORKLOAD_TTL).unwrap();
        server_files.write_cert(&rotated);
        server_files.write_bundle(&[&old_root, &new_root]);
        assert!(server.reload().unwrap());
        assert!(!server.reload().unwrap());

        let (mut c2, mut s2) = connected(&server, &client).await;
        assert_eq!(server_leaf(&c2), rotated.cert_der);
        assert_ne!(server_leaf(&c2), first);
        ping(&mut c2, &mut s2).await;
        // The connection made before the swap still works.
        ping(&mut c1, &mut s1).await;
        assert_eq!(server_leaf(&c1), first);
    }

    #[tokio::test]
    async fn broken_files_keep_the_material_in_force() {
        let root = root();
        let files = files_for(&root, "orders", &[&root]);
        let server = files.load();
        let client = files_for(&root, "checkout", &[&root]).load();
        let (c, _) = connected(&server, &client).await;
        let first = server_leaf(&c);

        // Half-written: the new certificate is in place, its key is not yet.
        let next = root.issue(&id("orders"), DEFAULT_WORKLOAD_TTL).unwrap();
        std::fs::write(files.path("cert.pem"), &next.cert_pem).unwrap();
        let err = server.reload().unwrap_err().to_string();
        assert!(err.contains("--mtls-key"), "{err}");
        let (c, _) = connected(&server, &client).await;
        assert_eq!(server_leaf(&c), first);

        std::fs::write(files.path("key.pem"), &next.key_pem).unwrap();
        assert!(server.reload().unwrap());
        let (c, _) = connected(&server, &client).await;
        assert_eq!(server_leaf(&c), next.cert_der);

        std::fs::write(files.path("bundle.pem"), "not pem").unwrap();
        let err = server.reload().unwrap_err().to_string();
        assert!(err.contains("--mtls-trust-bundle"), "{err}");
        let (c, _) = connected(&server, &client).await;
        assert_eq!(server_leaf(&c), next.cert_der);
    }

    #[tokio::test]
    async fn the_reloader_picks_up_new_files() {
        let root = root();
        let files = files_for(&root, "orders", &[&root]);
        let tls = files.load();
        let task = tls.spawn_reloader(Duration::from_millis(20));
        let next = root.issue(&id("orders"), DEFAULT_WORKLOAD_TTL).unwrap();
        files.write_cert(&next);
        let current = || tls.live.get().key.cert[0].clone();
        for _ in 0..250 {
            if current() == next.cert_der {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(current(), next.cert_der);
        drop(tls);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the reloader ends with the last MeshTls")
            .unwrap();
    }

    #[tokio::test]
    async fn dev_ca_runtimes_started_together_share_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("dev-ca");
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (ca_dir, barrier) = (ca_dir.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    MeshTls::load(TlsSource::DevCa {
                        dir: ca_dir,
                        identity: id(&format!("app{i}")),
                    })
                    .unwrap()
                })
            })
            .collect();
        let runtimes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();

        let mut names: Vec<_> = std::fs::read_dir(&ca_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "ca.key"]);
        let root = ca::load_root(&ca_dir, "--dev-ca-dir").unwrap();
        for (i, tls) in runtimes.iter().enumerate() {
            assert_eq!(tls.identity(), id(&format!("app{i}")));
            let roots = &tls.live.get().roots;
            assert_eq!(roots.roots.len(), 1);
        }
        let (c, s) = connected(&runtimes[0], &runtimes[3]).await;
        assert_eq!(
            peer_identity(s.get_ref().1.peer_certificates().unwrap()).unwrap(),
            id("app3")
        );
        let issuer = {
            let leaf = server_leaf(&c);
            let (_, x509) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            x509.issuer().as_raw().to_vec()
        };
        let (_, root_x509) = x509_parser::parse_x509_certificate(root.cert_der()).unwrap();
        assert_eq!(issuer, root_x509.subject().as_raw());
        // The same root for a later runtime; none for another trust domain.
        assert!(!runtimes[1].reload().unwrap(), "not due for renewal");
        let err = MeshTls::load(TlsSource::DevCa {
            dir: ca_dir.clone(),
            identity: SpiffeId::new("other", "default", "a").unwrap(),
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("--dev-ca-dir") && err.contains("'corp'"),
            "{err}"
        );
    }

    #[test]
    fn renewal_is_due_after_two_thirds() {
        assert!(!renewal_due(0, 300, 199));
        assert!(renewal_due(0, 300, 200));
        assert!(renewal_due(0, 300, 400));
        assert_eq!(expiry(0, 300, 199), Expiry::Fine);
        assert_eq!(expiry(0, 300, 200), Expiry::Due);
        assert_eq!(expiry(0, 300, 300), Expiry::Expired);
    }
}
