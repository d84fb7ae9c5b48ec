//! Conformance suite every name resolver runs.
//!
//! A [`Harness`] builds resolvers the way separate runtimes would (each with
//! its own handles, sessions, caches); the checks register instances through
//! some and resolve through others. Every run uses a fresh namespace
//! (`conf-<random>`), so runs can share a backend with each other and with
//! other data. Checks panic with a message naming the check, like
//! assertions. Waits for a change to show are bounded by [`WAIT`]; the bound
//! is not a latency requirement.
//!
//! Resolvers whose instance list is fixed (`nameresolution.static`) set
//! [`Harness::dynamic`] to false and run only the checks that do not
//! register.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{NameResolver, Registration, ResolveError};
use crate::metadata::{InitContext, Metadata};

/// Longest wait for a registration or removal to show in another resolver.
pub const WAIT: Duration = Duration::from_secs(30);
/// Pause between two looks while waiting.
const POLL: Duration = Duration::from_millis(25);

/// Builds resolvers of one type for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new resolver, as one more runtime would build it.
    async fn resolver(&self) -> Arc<dyn NameResolver>;

    /// Component definitions that must be refused, each with the metadata
    /// field the error must name.
    fn bad_metadata(&self) -> Vec<(Metadata, &'static str)>;

    /// Whether `register()` makes instances visible (false for fixed lists).
    fn dynamic(&self) -> bool {
        true
    }
}

/// A namespace of its own for one run of the checks.
pub fn namespace() -> String {
    let run = uuid::Uuid::new_v4().simple().to_string();
    format!("conf-{}", &run[..8])
}

/// Writes one `#[tokio::test]` per check for a resolver type, in a module
/// named after it: `nameresolution_conformance!(local, local_harness())`,
/// where the second argument is an expression giving a [`Harness`].
/// Resolvers with a fixed instance list add `static` and get the checks
/// that do not register. Attributes before the name go on every test.
#[macro_export]
macro_rules! nameresolution_conformance {
    ($(#[$attr:meta])* $backend:ident, $harness:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::nameresolution_conformance!(@tests [$(#[$attr])*] $harness;
                unknown_app_is_not_found, invalid_names_are_refused,
                bad_metadata_names_the_field, closed_resolver_refuses,
                two_instances_are_resolved, namespaces_are_separate,
                changes_reach_a_cached_lookup, reregistering_replaces_the_address,
                close_removes_the_instance);
        }
    };
    ($(#[$attr:meta])* $backend:ident, $harness:expr, static) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::nameresolution_conformance!(@tests [$(#[$attr])*] $harness;
                unknown_app_is_not_found, invalid_names_are_refused,
                bad_metadata_names_the_field, closed_resolver_refuses);
        }
    };
    (@tests $attrs:tt $harness:expr; $check:ident $(, $rest:ident)*) => {
        $crate::nameresolution_conformance!(@one $attrs $harness; $check);
        $crate::nameresolution_conformance!(@tests $attrs $harness; $($rest),*);
    };
    (@tests $attrs:tt $harness:expr;) => {};
    (@one [$(#[$attr:meta])*] $harness:expr; $check:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let harness = $harness;
            let ns = $crate::nameresolution::conformance::namespace();
            $crate::nameresolution::conformance::$check(&harness, &ns).await;
        }
    };
}

/// Runs every check that applies.
pub async fn run_all(h: &dyn Harness) {
    let ns = namespace();

    unknown_app_is_not_found(h, &ns).await;
    invalid_names_are_refused(h, &ns).await;
    bad_metadata_names_the_field(h, &ns).await;
    closed_resolver_refuses(h, &ns).await;
    if !h.dynamic() {
        return;
    }
    two_instances_are_resolved(h, &ns).await;
    namespaces_are_separate(h, &ns).await;
    changes_reach_a_cached_lookup(h, &ns).await;
    reregistering_replaces_the_address(h, &ns).await;
    close_removes_the_instance(h, &ns).await;
}

/// `127.0.0.1:<port>`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `resolve(app, ns)` returns exactly `want` (sorted), or until
/// it is NotFound when `want` is empty. Panics after [`WAIT`] with the last
/// answer.
pub async fn wait_for(r: &dyn NameResolver, app: &str, ns: &str, want: &[SocketAddr], check: &str) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = r.resolve(app, ns).await;
        if let Ok(list) = &got {
            assert!(
                !list.is_empty(),
                "[{check}] resolve({app}, {ns}) returned an empty list instead of NotFound"
            );
            let mut sorted = list.clone();
            sorted.sort();
            assert_eq!(&sorted, list, "[{check}] addresses are not sorted");
        }
        let done = match &got {
            Ok(list) => *list == want,
            Err(e) => want.is_empty() && e.is_not_found(),
        };
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "[{check}] resolve({app}, {ns}) still answers {got:?} after {WAIT:?}; expected {}",
            if want.is_empty() {
                "NotFound".to_string()
            } else {
                format!("{want:?}")
            }
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn register(r: &dyn NameResolver, reg: &Registration, check: &str) {
    r.register(reg)
        .await
        .unwrap_or_else(|e| panic!("[{check}] register({reg:?}) failed: {e}"));
}

pub async fn unknown_app_is_not_found(h: &dyn Harness, ns: &str) {
    let check = "unknown-app";
    let r = h.resolver().await;
    for _ in 0..2 {
        // The second lookup is answered from the cache.
        match r.resolve("nobody-here", ns).await {
            Err(e @ ResolveError::NotFound { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("'nobody-here'") && msg.contains(ns),
                    "[{check}] the error does not name the app and namespace: {msg}"
                );
            }
            other => panic!("[{check}] expected NotFound, got {other:?}"),
        }
    }
    r.close().await;
}

pub async fn invalid_names_are_refused(h: &dyn Harness, _ns: &str) {
    let check = "invalid-names";
    let r = h.resolver().await;
    for (app, ns) in [
        ("a/b", "default"),
        ("", "default"),
        ("app", "x/y"),
        ("..", "default"),
    ] {
        match r.resolve(app, ns).await {
            Err(ResolveError::InvalidName { .. }) => {}
            other => {
                panic!("[{check}] resolve({app:?}, {ns:?}): expected InvalidName, got {other:?}")
            }
        }
    }
    let bad = Registration::new("a/b", "default", "i1", addr(1));
    match r.register(&bad).await {
        Err(e @ ResolveError::InvalidName { .. }) => {
            assert!(e.to_string().contains("app id"), "[{check}] {e}");
        }
        other => panic!("[{check}] register({bad:?}): expected InvalidName, got {other:?}"),
    }
    let bad = Registration::new("app", "default", "", addr(1));
    assert!(
        matches!(
            r.register(&bad).await,
            Err(ResolveError::InvalidName { .. })
        ),
        "[{check}] an empty instance id was accepted"
    );
    r.close().await;
}

pub async fn bad_metadata_names_the_field(h: &dyn Harness, _ns: &str) {
    let check = "bad-metadata";
    let ctx = InitContext {
        data_dir: std::env::temp_dir(),
        app_id: "conformance".into(),
    };
    for (md, field) in h.bad_metadata() {
        match super::build(&md, &ctx).await {
            Ok(r) => {
                r.close().await;
                panic!("[{check}] metadata {md:?} was accepted; expected an error naming '{field}'")
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("'{field}'")),
                    "[{check}] the error does not name field '{field}': {msg}"
                );
                assert!(
                    msg.contains(&format!("'{}'", md.component())),
                    "[{check}] the error does not name the component: {msg}"
                );
            }
        }
    }
}

pub async fn closed_resolver_refuses(h: &dyn Harness, ns: &str) {
    let check = "closed";
    let r = h.resolver().await;
    r.close().await;
    assert!(
        matches!(r.resolve("app", ns).await, Err(ResolveError::Closed { .. })),
        "[{check}] resolve after close did not report Closed"
    );
    let reg = Registration::new("app", ns, "i1", addr(1));
    assert!(
        matches!(r.register(&reg).await, Err(ResolveError::Closed { .. })),
        "[{check}] register after close did not report Closed"
    );
    // A second close is harmless.
    r.close().await;
}

pub async fn two_instances_are_resolved(h: &dyn Harness, ns: &str) {
    let check = "two-instances";
    let (r1, r2, observer) = (h.resolver().await, h.resolver().await, h.resolver().await);
    let app = "two";
    register(&*r1, &Registration::new(app, ns, "i-1", addr(41001)), check).await;
    register(&*r2, &Registration::new(app, ns, "i-2", addr(41002)), check).await;
    let both = [addr(41001), addr(41002)];
    wait_for(&*observer, app, ns, &both, check).await;
    wait_for(&*r1, app, ns, &both, check).await;
    wait_for(&*r2, app, ns, &both, check).await;
    for r in [r1, r2, observer] {
        r.close().await;
    }
}

pub async fn namespaces_are_separate(h: &dyn Harness, ns: &str) {
    let check = "namespaces";
    let (r1, observer) = (h.resolver().await, h.resolver().await);
    let other_ns = format!("{ns}-other");
    register(
        &*r1,
        &Registration::new("ns-app", ns, "i-1", addr(41011)),
        check,
    )
    .await;
    wait_for(&*observer, "ns-app", ns, &[addr(41011)], check).await;
    match observer.resolve("ns-app", &other_ns).await {
        Err(ResolveError::NotFound { .. }) => {}
        other => {
            panic!("[{check}] an app registered in '{ns}' answered in '{other_ns}': {other:?}")
        }
    }
    r1.close().await;
    observer.close().await;
}

pub async fn changes_reach_a_cached_lookup(h: &dyn Harness, ns: &str) {
    let check = "changes";
    let (r1, r2, observer) = (h.resolver().await, h.resolver().await, h.resolver().await);
    let app = "changing";
    // Looked up (and cached) before anything exists.
    assert!(
        observer.resolve(app, ns).await.unwrap_err().is_not_found(),
        "[{check}] an unregistered app was found"
    );
    register(&*r1, &Registration::new(app, ns, "i-1", addr(41021)), check).await;
    wait_for(&*observer, app, ns, &[addr(41021)], check).await;
    register(&*r2, &Registration::new(app, ns, "i-2", addr(41022)), check).await;
    wait_for(&*observer, app, ns, &[addr(41021), addr(41022)], check).await;
    r1.close().await;
    wait_for(&*observer, app, ns, &[addr(41022)], check).await;
    r2.close().await;
    wait_for(&*observer, app, ns, &[], check).await;
    observer.close().await;
}

pub async fn reregistering_replaces_the_address(h: &dyn Harness, ns: &str) {
    let check = "reregister";
    let (r1, observer) = (h.resolver().await, h.resolver().await);
    let app = "moving";
    register(&*r1, &Registration::new(app, ns, "i-1", addr(41031)), check).await;
    wait_for(&*observer, app, ns, &[addr(41031)], check).await;
    register(&*r1, &Registration::new(app, ns, "i-1", addr(41032)), check).await;
    wait_for(&*observer, app, ns, &[addr(41032)], check).await;
    r1.close().await;
    wait_for(&*observer, app, ns, &[], check).await;
    observer.close().await;
}

pub async fn close_removes_the_instance(h: &dyn Harness, ns: &str) {
    let check = "close";
    let (r1, r2, observer) = (h.resolver().await, h.resolver().await, h.resolver().await);
    let app = "closing";
    register(&*r1, &Registration::new(app, ns, "i-1", addr(41041)), check).await;
    register(&*r2, &Registration::new(app, ns, "i-2", addr(41042)), check).await;
    wait_for(&*observer, app, ns, &[addr(41041), addr(41042)], check).await;
    r2.close().await;
    wait_for(&*observer, app, ns, &[addr(41041)], check).await;
    // Dropping without close() also withdraws the instance.
    drop(r1);
    wait_for(&*observer, app, ns, &[], check).await;
    observer.close().await;
}
