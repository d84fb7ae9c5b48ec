//! The zero-configuration mesh: two runtimes started with no mesh flag (only
//! ports, data dirs and, through `XDG_RUNTIME_DIR`, a private per-user
//! location as a user's session gives) find each other through the local
//! registry and trust each other through the one development CA of that
//! user; access policies apply on its trust domain. Runtimes given
//! different `--dev-ca-dir`s refuse each other, saying why and what to do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tonic::Code;
use weft_tests::invoke_app::InvokeApp;
use weft_tests::mesh::{call, md};
use weft_tests::{Weft, WeftOptions};

/// A runtime of `app_id` serving `app` on its port, with no mesh flag; the
/// per-user location is `user_dir` (`XDG_RUNTIME_DIR`).
async fn runtime(user_dir: &Path, app_id: &str, port: u16, extra: &[&str]) -> Weft {
    let mut opts = WeftOptions::new(app_id)
        .arg("--app-port")
        .arg(&port.to_string())
        .env("XDG_RUNTIME_DIR", user_dir.to_str().unwrap())
        .env("HOME", user_dir.to_str().unwrap());
    for a in extra {
        opts = opts.arg(a);
    }
    Weft::start(opts).await.expect("start weft")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_with_default_flags_invoke_each_other() {
    let user = tempfile::tempdir().unwrap();
    let app_a = InvokeApp::new("a1");
    let app_b = InvokeApp::new("b1");
    let (port_a, _sa) = app_a.serve().await;
    let (port_b, _sb) = app_b.serve().await;
    // Access policy on the default CA's trust domain: app A may call B's
    // echo and nothing else.
    let config = user.path().join("b-config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: b\nspec:\n  accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n    - appId: zero-a\n      defaultAction: deny\n      namespace: default\n      operations:\n      - name: /echo\n        action: allow\n",
    )
    .unwrap();
    let a = runtime(user.path(), "zero-a", port_a, &[]).await;
    let b = runtime(
        user.path(),
        "zero-b",
        port_b,
        &["--config", config.to_str().unwrap()],
    )
    .await;

    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let r = call(&mut ca, "zero-b", "echo").await.expect("A calls B");
    assert_eq!(md(&r, "x-instance"), "b1");
    assert_eq!(md(&r, "x-seen-dapr-caller-app-id"), "zero-a");
    let r = call(&mut cb, "zero-a", "echo").await.expect("B calls A");
    assert_eq!(md(&r, "x-instance"), "a1");
    assert_eq!(md(&r, "x-seen-dapr-caller-app-id"), "zero-b");
    let denied = call(&mut ca, "zero-b", "fail").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // One CA for both, where the warning says, private to the user.
    let ca_dir = user.path().join("weft").join("dev-ca");
    for w in [&a, &b] {
        let logs = w.logs();
        assert!(
            logs.contains("DEVELOPMENT CA") && logs.contains(&ca_dir.display().to_string()),
            "the start-up warning names the CA directory: {logs}"
        );
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir), 0o700, "CA directory mode");
    let key = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "key"))
        .expect("a root key in the CA directory");
    assert_eq!(mode(&key), 0o600, "root key mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_with_different_dev_cas_refuse_each_other_and_say_why() {
    let user = tempfile::tempdir().unwrap();
    let app_b = InvokeApp::new("b1");
    let (port_a, _sa) = InvokeApp::new("a1").serve().await;
    let (port_b, _sb) = app_b.serve().await;
    let ca_a = user.path().join("ca-a");
    let ca_b = user.path().join("ca-b");
    let a = runtime(
        user.path(),
        "split-a",
        port_a,
        &["--dev-ca-dir", ca_a.to_str().unwrap()],
    )
    .await;
    let _b = runtime(
        user.path(),
        "split-b",
        port_b,
        &["--dev-ca-dir", ca_b.to_str().unwrap()],
    )
    .await;
    let mut ca = a.client().await;
    let err = call(&mut ca, "split-b", "echo").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let msg = err.message();
    assert!(
        msg.contains("do not trust each other's certificate authority")
            && msg.contains("--dev-ca-dir")
            && msg.contains("--mtls-trust-bundle"),
        "the error names the trust problem and the fix: {msg}"
    );
    assert_eq!(app_b.calls(), 0, "nothing reached app B");
}
