//! Service invocation across runtimes: several `weft` processes and apps on
//! 127.0.0.1, certificates from the real `weft ca` commands, the local
//! name-resolution registry in a private directory per test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_proto::runtime::dapr_client::DaprClient;
use weft_tests::certs::{ca_init, ca_issue, flags};
use weft_tests::invoke_app::{InvokeApp, FAIL_DETAILS};
use weft_tests::mesh::{assert_deadline_bounds_the_call, call, md, request, MeshEnv as Env};
use weft_tests::{free_port, Weft, WeftOptions};

/// A runtime and the app instance behind it.
struct Node {
    weft: Weft,
    app: InvokeApp,
    mesh_port: u16,
    _app_task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn client(&self) -> DaprClient<Channel> {
        self.weft.client().await
    }
}

async fn node(env: &Env, app_id: &str, name: &str, extra: Vec<String>) -> Node {
    let app = InvokeApp::new(name);
    let (app_port, task) = app.serve().await;
    let mesh_port = free_port();
    let mut opts = WeftOptions::new(app_id)
        .arg("--app-port")
        .arg(&app_port.to_string())
        .arg("--mesh-port")
        .arg(&mesh_port.to_string())
        .env("WEFT_LOCAL_REGISTRY_DIR", &env.registry());
    for a in &extra {
        opts = opts.arg(a);
    }
    let weft = Weft::start(opts).await.unwrap();
    Node {
        weft,
        app,
        mesh_port,
        _app_task: task,
    }
}

/// A node with certificates issued for it by the test's root.
async fn tls_node(env: &Env, app_id: &str, name: &str, mut extra: Vec<String>) -> Node {
    let mut args = env.certs(app_id, name);
    args.append(&mut extra);
    node(env, app_id, name, args).await
}

// === invocation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_both_ways_passes_everything_through() {
    let env = Env::new();
    let a = tls_node(&env, "inv-a", "a", vec![]).await;
    let b = tls_node(&env, "inv-b", "b", vec![]).await;
    let mut ca = a.client().await;

    let mut req = Request::new(pb::InvokeServiceRequest {
        id: "inv-b".into(),
        message: Some(common::InvokeRequest {
            method: "echo".into(),
            data: Some(prost_types::Any {
                type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                value: b"hello".to_vec(),
            }),
            content_type: "text/plain".into(),
            http_extension: Some(common::HttpExtension {
                verb: common::http_extension::Verb::Post as i32,
                querystring: "a=1&b=2".into(),
            }),
        }),
    });
    req.metadata_mut()
        .insert("x-user", "alice".parse().unwrap());
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    req.set_timeout(Duration::from_secs(5));
    let resp = ca.invoke_service(req).await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "b");
    assert_eq!(md(&resp, "x-seen-x-user"), "alice");
    assert_eq!(md(&resp, "x-seen-dapr-caller-app-id"), "inv-a");
    assert_eq!(md(&resp, "x-seen-dapr-callee-app-id"), "inv-b");
    assert_eq!(md(&resp, "x-verb"), "POST");
    assert_eq!(md(&resp, "x-query"), "a=1&b=2");
    let tp = md(&resp, "x-seen-traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
        "trace id kept, new parent span: {tp}"
    );
    let deadline = md(&resp, "x-deadline");
    assert!(!deadline.is_empty(), "the app saw the caller's deadline");
    let body = resp.into_inner();
    assert_eq!(body.content_type, "text/plain");
    let data = body.data.unwrap();
    assert_eq!(data.value, b"hello");
    assert_eq!(
        data.type_url,
        "type.googleapis.com/google.protobuf.StringValue"
    );

    // And the other way round.
    let mut cb = b.client().await;
    let resp = call(&mut cb, "inv-a", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "a");
    assert_eq!(md(&resp, "x-seen-dapr-caller-app-id"), "inv-b");
    assert_eq!(resp.into_inner().data.unwrap().value, b"ping");

    // An app's error comes back with its code, message and details.
    let err = call(&mut ca, "inv-b", "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "app says no");
    assert_eq!(err.details(), FAIL_DETAILS);
    let err = call(&mut ca, "inv-b", "nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"), "{err:?}");

    // The caller's deadline bounds the whole path.
    assert_deadline_bounds_the_call(&mut ca, "inv-b").await;

    // Calling itself goes straight to its own app.
    let resp = call(&mut ca, "inv-a", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "a");
    assert_eq!(b.app.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invocation_requests_are_refused_with_the_field_named() {
    let env = Env::new();
    let a = tls_node(&env, "bad-a", "a", vec![]).await;
    let mut c = a.client().await;

    let err = c
        .invoke_service(request("", "echo", b""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("InvokeServiceRequest.id"), "{err:?}");

    let err = c
        .invoke_service(pb::InvokeServiceRequest {
            id: "bad-b".into(),
            message: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("InvokeServiceRequest.message"),
        "{err:?}"
    );

    let err = c
        .invoke_service(request("bad-b", "", b""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("message.method"), "{err:?}");

    let err = call(&mut c, "nobody-here", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("nobody-here"), "{err:?}");

    // A runtime started without --app-port cannot be invoked.
    let mut opts = WeftOptions::new("bad-lonely").env("WEFT_LOCAL_REGISTRY_DIR", &env.registry());
    for a in env.certs("bad-lonely", "lonely") {
        opts = opts.arg(&a);
    }
    let lonely = Weft::start(opts).await.unwrap();
    let err = call(&mut c, "bad-lonely", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("--app-port"), "{err:?}");
    drop(lonely);
    assert!(a.weft.logs().contains("mesh ready"));
}

// === mutual TLS ===

mod raw {
    //! A hand-made mesh client, to present whatever certificate a test wants.
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use weft_proto::mesh;
    use weft_proto::mesh::mesh_client::MeshClient;

    /// Accepts any server: these tests are about what the server refuses.
    #[derive(Debug)]
    struct AnyServer;

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
    }

    /// Calls `Mesh.Invoke` on `port` presenting `identity` (cert, key) or no
    /// certificate, or over plain text when `tls` is false.
    pub async fn invoke(
        port: u16,
        tls: bool,
        identity: Option<(&Path, &Path)>,
        caller: &str,
        target: &str,
    ) -> Result<mesh::InvokeResponse, String> {
        use rustls::pki_types::pem::PemObject;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(pem_certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let channel = tonic::transport::Endpoint::from_static("http://weft.mesh")
            .connect_with_connector(tower::service_fn(move |_| {
                let config = config.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    if !tls {
                        return Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            weft_tests_io::Either::Plain(tcp),
                        ));
                    }
                    let name = ServerName::try_from("weft.mesh").unwrap();
                    let s = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await?;
                    Ok(hyper_util::rt::TokioIo::new(weft_tests_io::Either::Tls(
                        Box::new(s),
                    )))
                }
            }))
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut client = MeshClient::new(channel);
        client
            .invoke(mesh::InvokeRequest {
                target_app_id: target.into(),
                caller_app_id: caller.into(),
                message: Some(common::InvokeRequest {
                    method: "echo".into(),
                    ..Default::default()
                }),
                headers: vec![],
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    mod weft_tests_io {
        use std::pin::Pin;
        use std::task::{Context, Poll};
        use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

        pub enum Either {
            Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
            Plain(tokio::net::TcpStream),
        }

        impl AsyncRead for Either {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Either::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                    Either::Plain(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for Either {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    Either::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                    Either::Plain(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Either::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                    Either::Plain(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Either::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                    Either::Plain(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_refuses_peers_without_a_valid_identity() {
    let env = Env::new();
    let b = tls_node(&env, "tls-b", "b", vec![]).await;
    let port = b.mesh_port;

    // The control: a certificate for app 'tls-a' from the same root works.
    let good = ca_issue(&env.ca(), "tls-a", &env.path("certs/good"), "1h");
    let ok = raw::invoke(port, true, Some((&good.0, &good.1)), "tls-a", "tls-b").await;
    assert!(ok.is_ok(), "{ok:?}");

    // A request for an app this runtime does not serve.
    let err = raw::invoke(port, true, Some((&good.0, &good.1)), "tls-a", "tls-c")
        .await
        .unwrap_err();
    assert!(
        err.starts_with("NotFound") && err.contains("tls-c"),
        "{err}"
    );

    // No certificate.
    let err = raw::invoke(port, true, None, "tls-a", "tls-b").await;
    assert!(err.is_err(), "no client certificate must be refused");

    // A certificate from another root.
    let other_ca = env.path("other-ca");
    ca_init(&other_ca, "public");
    let foreign = ca_issue(&other_ca, "tls-a", &env.path("certs/foreign"), "1h");
    let err = raw::invoke(port, true, Some((&foreign.0, &foreign.1)), "tls-a", "tls-b").await;
    assert!(
        err.is_err(),
        "a certificate from another root must be refused"
    );

    // An expired certificate.
    let short = ca_issue(&env.ca(), "tls-a", &env.path("certs/short"), "1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = raw::invoke(port, true, Some((&short.0, &short.1)), "tls-a", "tls-b").await;
    assert!(err.is_err(), "an expired certificate must be refused");

    // A valid certificate for another app, claiming to be 'tls-a'.
    let evil = ca_issue(&env.ca(), "tls-evil", &env.path("certs/evil"), "1h");
    let err = raw::invoke(port, true, Some((&evil.0, &evil.1)), "tls-a", "tls-b")
        .await
        .unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("tls-evil"),
        "{err}"
    );

    // Plain text to an mTLS mesh port.
    let err = raw::invoke(port, false, None, "tls-a", "tls-b").await;
    assert!(err.is_err(), "plain text must be refused");

    // None of the refused calls reached the app.
    assert_eq!(b.app.calls(), 1);
    let logs = b.weft.logs();
    assert!(logs.contains("refused a connection"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_modes_are_explicit() {
    let env = Env::new();
    // No certificate flags: development mTLS from a shared local root.
    let dev_ca = env.path("dev-ca").to_string_lossy().into_owned();
    let a = node(
        &env,
        "dev-a",
        "a",
        vec!["--dev-ca-dir".into(), dev_ca.clone()],
    )
    .await;
    let b = node(&env, "dev-b", "b", vec!["--dev-ca-dir".into(), dev_ca]).await;
    let resp = call(&mut a.client().await, "dev-b", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "b");
    assert!(b.weft.logs().to_lowercase().contains("development"));

    // Plain text only with the explicit flag, loudly logged; a TLS runtime
    // does not talk to it.
    let p = node(
        &env,
        "dev-plain",
        "p",
        vec!["--dev-insecure-plaintext-mesh".into()],
    )
    .await;
    let logs = p.weft.logs();
    assert!(
        logs.contains("WARN") && logs.to_lowercase().contains("plain"),
        "{logs}"
    );
    let err = call(&mut p.client().await, "dev-b", "echo")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = call(&mut a.client().await, "dev-plain", "echo")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

// === access control ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policies_deny_and_allow_as_written() {
    let env = Env::new();
    let config = env.path("acl.yaml");
    std::fs::write(
        &config,
        r#"apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: acl
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
      - appId: acl-a
        defaultAction: deny
        trustDomain: public
        namespace: default
        operations:
          - name: /echo
            httpVerb: ["POST"]
            action: allow
          - name: /sleep/*
            httpVerb: ["*"]
            action: allow
      - appId: acl-c
        defaultAction: allow
        trustDomain: public
        namespace: default
        operations:
          - name: /echo
            httpVerb: ["*"]
            action: deny
"#,
    )
    .unwrap();
    let b = tls_node(
        &env,
        "acl-b",
        "b",
        vec!["--config".into(), config.to_string_lossy().into_owned()],
    )
    .await;
    let a = tls_node(&env, "acl-a", "a", vec![]).await;
    let c = tls_node(&env, "acl-c", "c", vec![]).await;
    let d = tls_node(&env, "acl-d", "d", vec![]).await;

    let with_verb = |method: &str, verb: common::http_extension::Verb| {
        let mut r = request("acl-b", method, b"x");
        r.message.as_mut().unwrap().http_extension = Some(common::HttpExtension {
            verb: verb as i32,
            querystring: String::new(),
        });
        r
    };
    use common::http_extension::Verb;
    let mut ca = a.client().await;
    assert!(ca
        .invoke_service(with_verb("echo", Verb::Post))
        .await
        .is_ok());
    let err = ca
        .invoke_service(with_verb("echo", Verb::Get))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("acl-a"), "names the policy: {err:?}");
    assert!(call(&mut ca, "acl-b", "sleep/1").await.is_ok());
    let err = call(&mut ca, "acl-b", "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("defaultAction"), "{err:?}");

    let mut cc = c.client().await;
    let err = call(&mut cc, "acl-b", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("acl-c"), "{err:?}");
    // Allowed by the policy's default: the app's own error comes back.
    let err = call(&mut cc, "acl-b", "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let err = call(&mut d.client().await, "acl-b", "echo")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("acl-d"), "{err:?}");
    // Denied calls never reached the app: echo(POST), sleep/1 and c's fail did.
    assert_eq!(b.app.calls(), 3);
}

// === rotation and failover ===

/// Runs `workers` loops of `echo` calls from `client` to `target` until
/// `stop`; returns (successes, failures with their messages).
fn load(
    client: DaprClient<Channel>,
    target: &'static str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let mut c = client.clone();
            let stop = stop.clone();
            let ok = ok.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match call(&mut c, target, "echo").await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
                    }
                }
                errors
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            errors.extend(t.await.unwrap());
        }
        (ok.load(Ordering::Relaxed), errors)
    })
}

/// Replaces a certificate set in place the way an operator or agent would:
/// write beside, then rename over.
fn replace_files(from: &(PathBuf, PathBuf, PathBuf), to: &(PathBuf, PathBuf, PathBuf)) {
    for (src, dst) in [(&from.0, &to.0), (&from.1, &to.1), (&from.2, &to.2)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_call() {
    let env = Env::new();
    let live_a = ca_issue(&env.ca(), "rot-a", &env.path("live/a"), "1h");
    let live_b = ca_issue(&env.ca(), "rot-b", &env.path("live/b"), "1h");
    let a = node(&env, "rot-a", "a", flags(&live_a)).await;
    let b = node(&env, "rot-b", "b", flags(&live_b)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(a.client().await, "rot-b", 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new root: first both runtimes trust both roots, then they move to
    // leaves of the new root, then the old root is dropped.
    let new_ca = env.path("new-ca");
    ca_init(&new_ca, "public");
    let both = env.path("both-roots.pem");
    let bundle = [
        std::fs::read_to_string(env.ca().join("ca.crt")).unwrap(),
        std::fs::read_to_string(new_ca.join("ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(&both, bundle).unwrap();
    for live in [&live_a, &live_b] {
        let tmp = live.2.with_extension("new");
        std::fs::copy(&both, &tmp).unwrap();
        std::fs::rename(&tmp, &live.2).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (app, live, name) in [("rot-a", &live_a, "a2"), ("rot-b", &live_b, "b2")] {
        let mut next = ca_issue(&new_ca, app, &env.path(&format!("certs/{name}")), "1h");
        next.2 = both.clone();
        replace_files(&next, live);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for live in [&live_a, &live_b] {
        let tmp = live.2.with_extension("new");
        std::fs::copy(new_ca.join("ca.crt"), &tmp).unwrap();
        std::fs::rename(&tmp, &live.2).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A newcomer with only the new root talks to both, both ways.
    let c = node(
        &env,
        "rot-c",
        "c",
        flags(&ca_issue(&new_ca, "rot-c", &env.path("certs/c"), "1h")),
    )
    .await;
    let resp = call(&mut c.client().await, "rot-b", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "b");
    let resp = call(&mut b.client().await, "rot-c", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "c");

    stop.store(true, Ordering::Relaxed);
    let (ok, errors) = running.await.unwrap();
    assert!(
        errors.is_empty(),
        "failed calls during rotation: {errors:?}"
    );
    assert!(ok > 50, "the load ran: {ok} calls");
    for n in [&a, &b] {
        let logs = n.weft.logs();
        assert!(
            logs.matches("reloaded").count() >= 3,
            "three reloads logged:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_under_load_fails_over() {
    let env = Env::new();
    let a = tls_node(&env, "fo-a", "a", vec!["--mesh-lb".into(), "p2c".into()]).await;
    let mut bs = Vec::new();
    for name in ["b1", "b2", "b3"] {
        bs.push(tls_node(&env, "fo-b", name, vec![]).await);
    }
    const WORKERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(a.client().await, "fo-b", WORKERS, stop.clone());
    // Every instance takes part.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bs.iter().any(|b| b.app.calls() < 50) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load did not spread"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bs[1].weft.signal("KILL");
    bs[1].weft.wait_exit(Duration::from_secs(10)).await.unwrap();
    let after_kill = bs[1].app.calls();
    let (b1, b3) = (bs[0].app.calls(), bs[2].app.calls());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, errors) = running.await.unwrap();

    assert!(
        errors.len() <= WORKERS,
        "only calls in flight on the killed instance may fail: {} errors: {errors:?}",
        errors.len()
    );
    assert_eq!(
        bs[1].app.calls(),
        after_kill,
        "nothing reaches a dead runtime"
    );
    assert!(bs[0].app.calls() > b1 + 20 && bs[2].app.calls() > b3 + 20);
    assert!(ok > 300, "{ok}");
}

// === name resolution components ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_name_resolution_reaches_listed_addresses() {
    let env = Env::new();
    let b = tls_node(&env, "static-b", "b", vec![]).await;
    let resources = env.path("static-resources");
    std::fs::create_dir_all(&resources).unwrap();
    let apps = format!("static-b=127.0.0.1:{}", b.mesh_port);
    weft_tests::write_component(
        &resources,
        "names",
        "nameresolution.static",
        &[("apps", &apps)],
    );
    let mut args = env.certs("static-a", "a");
    args.extend([
        "--resources-path".into(),
        resources.to_string_lossy().into_owned(),
    ]);
    let a = node(&env, "static-a", "a", args).await;
    let resp = call(&mut a.client().await, "static-b", "echo")
        .await
        .unwrap();
    assert_eq!(md(&resp, "x-instance"), "b");
    let err = call(&mut a.client().await, "static-c", "echo")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("static-c") && err.message().contains("names"),
        "{err:?}"
    );
}

#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_name_resolution_follows_instances() {
    let servers = std::env::var("WEFT_TEST_ZK_SERVERS").expect(
        "WEFT_TEST_ZK_SERVERS is not set: start ZooKeeper (scripts/services.sh start zookeeper) and export its environment (scripts/services.sh env)",
    );
    let env = Env::new();
    let resources = env.path("zk-resources");
    std::fs::create_dir_all(&resources).unwrap();
    let root = format!("/weft-test-{}", std::process::id());
    weft_tests::write_component(
        &resources,
        "zk",
        "nameresolution.zookeeper",
        &[
            ("servers", &servers),
            ("root", &root),
            ("sessionTimeout", "4s"),
        ],
    );
    let with_zk = |app: &str, name: &str| {
        let mut args = env.certs(app, name);
        args.extend([
            "--resources-path".into(),
            resources.to_string_lossy().into_owned(),
        ]);
        args
    };
    let a = node(&env, "zk-a", "a", with_zk("zk-a", "a")).await;
    let b1 = node(&env, "zk-b", "b1", with_zk("zk-b", "b1")).await;
    let mut b2 = node(&env, "zk-b", "b2", with_zk("zk-b", "b2")).await;
    let mut c = a.client().await;
    // Both instances are found and used.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b1.app.calls() == 0 || b2.app.calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both instances used"
        );
        call(&mut c, "zk-b", "echo").await.unwrap();
    }
    // A graceful stop removes the instance at once; calls go to the other.
    b2.weft.signal("TERM");
    b2.weft.wait_exit(Duration::from_secs(15)).await.unwrap();
    let before = b2.app.calls();
    for _ in 0..50 {
        let resp = call(&mut c, "zk-b", "echo").await.unwrap();
        assert_eq!(md(&resp, "x-instance"), "b1");
    }
    assert_eq!(b2.app.calls(), before);
    // And back: calling b from the new runtime and a from b.
    let resp = call(&mut b1.client().await, "zk-a", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "a");
}

// === local transports ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_callers_and_unix_socket_apps_use_the_mesh() {
    let env = Env::new();
    // App B listens on a Unix socket (--app-socket) instead of a port.
    let app = InvokeApp::new("b-unix");
    let sock = env.path("b-app.sock");
    let _served = app.serve_unix(&sock).await;
    let mut opts = WeftOptions::new("local-b")
        .arg("--app-socket")
        .arg(&sock.to_string_lossy())
        .env("WEFT_LOCAL_REGISTRY_DIR", &env.registry());
    for a in env.certs("local-b", "b") {
        opts = opts.arg(&a);
    }
    let _b = Weft::start(opts).await.unwrap();
    // App A calls over shared memory.
    let shm = env.path("a-shm.sock");
    let a = tls_node(
        &env,
        "local-a",
        "a",
        vec!["--shm-socket".into(), shm.to_string_lossy().into_owned()],
    )
    .await;

    let answer = tokio::task::spawn_blocking(move || {
        use prost::Message;
        let mut opts = weft_shm::client::ClientOptions::new("local-a");
        opts.call_timeout = Duration::from_secs(20);
        let mut c = weft_shm::client::Client::connect(&shm, opts).unwrap();
        let ok = c
            .call(
                weft_shm::method::INVOKE_SERVICE,
                &request("local-b", "echo", b"over shm").encode_to_vec(),
            )
            .map(|body| common::InvokeResponse::decode(body.as_slice()).unwrap());
        let err = c
            .call(
                weft_shm::method::INVOKE_SERVICE,
                &request("local-b", "fail", b"").encode_to_vec(),
            )
            .unwrap_err();
        (ok, err)
    })
    .await
    .unwrap();
    let (ok, err) = answer;
    assert_eq!(ok.unwrap().data.unwrap().value, b"over shm");
    assert_eq!(err.code, Code::FailedPrecondition as u32, "{err:?}");
    assert_eq!(err.message, "app says no");
    // And over gRPC from the same runtime.
    let resp = call(&mut a.client().await, "local-b", "echo")
        .await
        .unwrap();
    assert_eq!(md(&resp, "x-instance"), "b-unix");
    assert_eq!(app.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_without_a_port_receive_invocations_over_a_stream() {
    use weft_proto::appchannel as ac;
    use weft_proto::appchannel::app_channel_client::AppChannelClient;

    let env = Env::new();
    let a = tls_node(&env, "stream-a", "a", vec![]).await;
    let mut opts = WeftOptions::new("stream-b").env("WEFT_LOCAL_REGISTRY_DIR", &env.registry());
    for arg in env.certs("stream-b", "b") {
        opts = opts.arg(&arg);
    }
    let b = Weft::start(opts).await.unwrap();
    let mut ca = a.client().await;

    // Nothing to deliver to yet.
    let err = call(&mut ca, "stream-b", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("ServeInvocations"), "{err:?}");

    // Two app processes of B, each with a stream: calls alternate.
    let app1 = InvokeApp::new("s1");
    let app2 = InvokeApp::new("s2");
    let s1 = app1.serve_stream(b.channel().await).await.unwrap();
    let s2 = app2.serve_stream(b.channel().await).await.unwrap();
    let mut req = Request::new(request("stream-b", "echo", b"hello"));
    req.metadata_mut()
        .insert("x-user", "alice".parse().unwrap());
    let resp = ca.invoke_service(req).await.unwrap();
    assert_eq!(md(&resp, "x-seen-x-user"), "alice");
    assert_eq!(md(&resp, "x-seen-dapr-caller-app-id"), "stream-a");
    assert_eq!(md(&resp, "x-seen-dapr-callee-app-id"), "stream-b");
    assert!(md(&resp, "x-seen-traceparent").starts_with("00-"));
    let first = md(&resp, "x-instance");
    let body = resp.into_inner();
    assert_eq!(body.content_type, "application/octet-stream");
    assert_eq!(body.data.unwrap().value, b"hello");
    let resp = call(&mut ca, "stream-b", "echo").await.unwrap();
    assert_ne!(
        md(&resp, "x-instance"),
        first,
        "round robin over the streams"
    );
    assert_eq!(app1.calls() + app2.calls(), 2);

    // The app's error comes back with code, message and details.
    let err = call(&mut ca, "stream-b", "fail").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "app says no");
    assert_eq!(err.details(), FAIL_DETAILS);

    // The caller's deadline reaches the app and bounds the call.
    assert_deadline_bounds_the_call(&mut ca, "stream-b").await;

    // A call in flight when its stream closes fails; nothing is replayed.
    drop(s2);
    // Bounded wait until the runtime has let go of s2: two answers in a row
    // from s1 (round robin would alternate otherwise).
    let mut in_a_row = 0;
    for _ in 0..100 {
        match call(&mut ca, "stream-b", "echo").await {
            Ok(r) if md(&r, "x-instance") == "s1" => in_a_row += 1,
            _ => in_a_row = 0,
        }
        if in_a_row == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_a_row, 2, "calls settle on the remaining stream");
    let calls_before = app1.calls();
    let pending = tokio::spawn({
        let mut ca = ca.clone();
        async move { call(&mut ca, "stream-b", "sleep/2000").await }
    });
    // Bounded wait until the call reached s1 (the only stream left).
    for _ in 0..100 {
        if app1.calls() > calls_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app1.calls(), calls_before + 1);
    drop(s1);
    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("sleep/2000"), "{err:?}");

    // With no stream left the app cannot be reached for now: UNAVAILABLE,
    // as for an app restarting (bounded wait for the runtime to see the
    // closed streams).
    let mut last = None;
    for _ in 0..100 {
        let err = call(&mut ca, "stream-b", "echo").await.unwrap_err();
        if err.code() == Code::Unavailable && err.message().contains("no stream open") {
            last = None;
            break;
        }
        last = Some(err);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.is_none(), "{last:?}");
    // A new stream serves again.
    let s3 = app1.serve_stream(b.channel().await).await.unwrap();
    let resp = call(&mut ca, "stream-b", "echo").await.unwrap();
    assert_eq!(md(&resp, "x-instance"), "s1");

    // Bad streams are refused with the reason.
    let initial = || ac::ServeInvocationsRequest {
        kind: Some(ac::serve_invocations_request::Kind::Initial(
            ac::ServeInvocationsInitial {},
        )),
    };
    let open = |channel, first: ac::ServeInvocationsRequest| async move {
        let mut client = AppChannelClient::new(channel);
        let mut s = client
            .serve_invocations(tokio_stream::iter(vec![first, initial()]))
            .await?
            .into_inner();
        // The runtime's answer: the initial response, then the error.
        loop {
            if s.message().await?.is_none() {
                return Ok::<(), Status>(());
            }
        }
    };
    let err = open(
        b.channel().await,
        ac::ServeInvocationsRequest { kind: None },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("first"), "{err:?}");
    let err = open(b.channel().await, initial()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("again"), "{err:?}");
    // A runtime that delivers to --app-port refuses the stream.
    let err = open(a.weft.channel().await, initial()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--app-port"), "{err:?}");

    // Shutting down with a stream open: the runtime ends the stream, so
    // its graceful shutdown has nothing left to wait for.
    let mut b = b;
    b.signal("TERM");
    b.wait_exit(Duration::from_secs(20)).await.unwrap();
    let logs = b.logs();
    assert!(
        !logs.contains("did not finish"),
        "the open stream held up the shutdown:\n{logs}"
    );
    drop(s3);
}

/// ZooKeeper (a server of the test's own) stopped for longer than the
/// sessions' timeout while calls run through `nameresolution.zookeeper`:
/// calls keep flowing to the known instances throughout; the server returns
/// with its data gone, so every session is expired; the runtimes open new
/// sessions and write their registrations again (a runtime started
/// afterwards, with nothing cached, finds both instances); no runtime exits.
#[cfg_attr(
    weft_no_zk,
    ignore = "needs ZooKeeper: scripts/services.sh start zookeeper; eval \"$(scripts/services.sh env)\""
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_outage_and_session_expiry_keep_calls_flowing() {
    let zk = weft_tests::services::PrivateService::zookeeper().expect("a private ZooKeeper");
    let env = Env::new();
    let resources = env.path("zk-outage-resources");
    std::fs::create_dir_all(&resources).unwrap();
    weft_tests::write_component(
        &resources,
        "zk",
        "nameresolution.zookeeper",
        &[
            ("servers", &zk.addr()),
            ("root", "/weft-outage"),
            ("sessionTimeout", "4s"),
        ],
    );
    let with_zk = |app: &str, name: &str| {
        let mut args = env.certs(app, name);
        args.extend([
            "--resources-path".into(),
            resources.to_string_lossy().into_owned(),
        ]);
        args
    };
    let mut a = node(&env, "zko-a", "a", with_zk("zko-a", "a")).await;
    let mut b1 = node(&env, "zko-b", "b1", with_zk("zko-b", "b1")).await;
    let mut b2 = node(&env, "zko-b", "b2", with_zk("zko-b", "b2")).await;
    let mut c = a.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b1.app.calls() == 0 || b2.app.calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both instances used"
        );
        call(&mut c, "zko-b", "echo").await.unwrap();
    }

    // A caller runs through the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        let mut c = a.client().await;
        tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match call(&mut c, "zko-b", "echo").await {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, errors)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    zk.stop().expect("stop ZooKeeper");
    let (b1_down, b2_down) = (b1.app.calls(), b2.app.calls());
    // Down for well over the 4 s session timeout, and back as a fresh
    // server that knows no session and no node: every runtime's session
    // is expired when it reconnects.
    zk.wipe_data().expect("wipe ZooKeeper's data");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (b1_during, b2_during) = (b1.app.calls() - b1_down, b2.app.calls() - b2_down);
    zk.start().expect("start ZooKeeper again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, errors) = caller.await.unwrap();
    assert!(
        errors.is_empty(),
        "calls to known instances never fail while ZooKeeper is away: {} of {} failed: {:?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        b1_during > 20 && b2_during > 20,
        "both known instances kept serving while ZooKeeper was down ({b1_during}, {b2_during})"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (name, w) in [("a", &a.weft), ("b1", &b1.weft), ("b2", &b2.weft)] {
        while !w.logs().contains("ZooKeeper session ended") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "runtime {name} saw no session expiry:\n{}",
                w.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The registrations come back: a runtime with nothing cached finds both.
    let d = node(&env, "zko-d", "d", with_zk("zko-d", "d")).await;
    let mut dc = d.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a new runtime found {seen:?} of zko-b's two instances within 60 s of ZooKeeper's return\n{}",
            b1.weft.logs()
        );
        match call(&mut dc, "zko-b", "echo").await {
            Ok(resp) => {
                seen.insert(md(&resp, "x-instance"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    for (name, w) in [
        ("a", &mut a.weft),
        ("b1", &mut b1.weft),
        ("b2", &mut b2.weft),
    ] {
        assert!(w.is_running(), "runtime {name} exited:\n{}", w.logs());
    }
    eprintln!(
        "ZooKeeper away 10 s: {ok} calls, no errors ({b1_during} and {b2_during} served by b1 and b2 meanwhile); registrations back"
    );
}
