//! `nameresolution.static`: a fixed list of app instances from metadata,
//! for small fixed deployments and for tests.
//!
//! # Metadata
//!
//! * `apps` (required): entries separated by `;` or new lines, each
//!   `<app-id>=<address>[,<address>...]`, where an address is an IP
//!   literal and a port (`127.0.0.1:50002`, `[::1]:50002`; host names are
//!   not accepted). For example:
//!
//!   ```text
//!   app-b=127.0.0.1:50002,127.0.0.1:50012;app-c=10.0.0.5:50002
//!   ```
//!
//! # Namespaces
//!
//! An entry's app id may carry a namespace prefix, `<namespace>/<app-id>=…`;
//! such an entry only answers lookups in that namespace. An entry without a
//! prefix answers lookups of that app in every namespace that has no
//! prefixed entry for it. Listing the same key twice is an error.
//!
//! `register()` changes nothing (the list is fixed); it is logged at debug
//! level. Errors in `apps` name the field and the offending entry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{
    check_lookup, check_name, check_registration, normalize, resolver_label, NameResolver,
    Registration, ResolveError,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// The metadata field holding the app list.
pub const APPS_FIELD: &str = "apps";

/// `nameresolution.static`; see the module docs.
#[derive(Debug)]
pub struct StaticResolver {
    label: String,
    component: String,
    /// namespace → app id → addresses.
    scoped: HashMap<String, HashMap<String, Vec<SocketAddr>>>,
    /// app id → addresses, for every namespace.
    any_namespace: HashMap<String, Vec<SocketAddr>>,
    closed: AtomicBool,
}

impl StaticResolver {
    /// Builds the resolver from the `apps` field.
    pub fn from_metadata(md: &Metadata, _ctx: &InitContext) -> Result<Self, ComponentError> {
        let raw = md.required(APPS_FIELD)?;
        let label = resolver_label(md);
        let mut scoped = HashMap::new();
        let mut any_namespace = HashMap::new();
        let entries = raw
            .split([';', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for entry in entries {
            let bad = |reason: String| md.invalid(APPS_FIELD, format!("entry '{entry}': {reason}"));
            let (key, list) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected '<app-id>=<ip:port>[,<ip:port>...]'".into()))?;
            let key = key.trim();
            let (namespace, app) = match key.split_once('/') {
                Some((ns, app)) => (Some(ns.trim()), app.trim()),
                None => (None, key),
            };
            check_name(&label, "app id", app).map_err(|e| bad(invalid_reason(e)))?;
            if let Some(ns) = namespace {
                check_name(&label, "namespace", ns).map_err(|e| bad(invalid_reason(e)))?;
            }
            let mut addrs = Vec::new();
            for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                let addr: SocketAddr = a.parse().map_err(|_| {
                    bad(format!(
                        "'{a}' is not an address (expected an IP and a port, e.g. 127.0.0.1:50002)"
                    ))
                })?;
                addrs.push(addr);
            }
            if addrs.is_empty() {
                return Err(bad(format!("no address for app '{app}'")));
            }
            let addrs = normalize(addrs);
            let duplicate = match namespace {
                Some(ns) => scoped
                    .entry(ns.to_string())
                    .or_insert_with(HashMap::new)
                    .insert(app.to_string(), addrs)
                    .is_some(),
                None => any_namespace.insert(app.to_string(), addrs).is_some(),
            };
            if duplicate {
                return Err(bad(format!("'{key}' is listed more than once")));
            }
        }
        if scoped.is_empty() && any_namespace.is_empty() {
            return Err(md.invalid(APPS_FIELD, "lists no app"));
        }
        Ok(Self {
            label,
            component: md.component().to_string(),
            scoped,
            any_namespace,
            closed: AtomicBool::new(false),
        })
    }
}

fn invalid_reason(e: ResolveError) -> String {
    match e {
        ResolveError::InvalidName {
            what,
            value,
            reason,
            ..
        } => format!("{what} '{value}' {reason}"),
        other => other.to_string(),
    }
}

#[async_trait]
impl NameResolver for StaticResolver {
    async fn register(&self, me: &Registration) -> Result<(), ResolveError> {
        check_registration(&self.label, me)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(ResolveError::Closed {
                resolver: self.label.clone(),
            });
        }
        tracing::debug!(component = %self.component, app_id = %me.app_id, namespace = %me.namespace,
            address = %me.address, "static name resolution: register() changes nothing");
        Ok(())
    }

    async fn resolve(
        &self,
        app_id: &str,
        namespace: &str,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ResolveError::Closed {
                resolver: self.label.clone(),
            });
        }
        let scoped = self.scoped.get(namespace).and_then(|apps| apps.get(app_id));
        if let Some(addrs) = scoped.or_else(|| self.any_namespace.get(app_id)) {
            return Ok(addrs.clone());
        }
        check_lookup(&self.label, app_id, namespace)?;
        super::answer(&self.label, app_id, namespace, &[])
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// `nameresolution.static` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "nameresolution.static",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::NameResolution(Arc::new(
                StaticResolver::from_metadata(md, ctx)?,
            )))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn build(apps: &str) -> Result<StaticResolver, ComponentError> {
        let md = Metadata::new(
            "peers",
            "nameresolution.static",
            [("apps".to_string(), apps.to_string())],
        );
        let ctx = InitContext {
            data_dir: std::env::temp_dir(),
            app_id: "me".into(),
        };
        StaticResolver::from_metadata(&md, &ctx)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn lists_and_namespaces() {
        let r = build(
            "app-b=127.0.0.1:50012, 127.0.0.1:50002;app-c=10.0.0.5:50002\n\
             prod/app-c=[::1]:7000",
        )
        .unwrap();
        assert_eq!(
            r.resolve("app-b", "default").await.unwrap(),
            vec![addr("127.0.0.1:50002"), addr("127.0.0.1:50012")]
        );
        assert_eq!(
            r.resolve("app-b", "prod").await.unwrap().len(),
            2,
            "unprefixed entries answer every namespace"
        );
        assert_eq!(
            r.resolve("app-c", "default").await.unwrap(),
            vec![addr("10.0.0.5:50002")]
        );
        assert_eq!(
            r.resolve("app-c", "prod").await.unwrap(),
            vec![addr("[::1]:7000")]
        );
        let err = r.resolve("app-x", "default").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let me = Registration::new("app-b", "default", "i1", addr("127.0.0.1:1"));
        r.register(&me).await.unwrap();
        assert_eq!(r.resolve("app-b", "default").await.unwrap().len(), 2);
        r.close().await;
        assert!(matches!(
            r.resolve("app-b", "default").await,
            Err(ResolveError::Closed { .. })
        ));
    }

    #[test]
    fn errors_name_the_field_and_the_entry() {
        for (apps, needle) in [
            ("app-b", "'app-b'"),
            ("app-b=localhost:80", "'localhost:80'"),
            ("app-b=127.0.0.1", "'127.0.0.1'"),
            ("app-b=", "no address"),
            ("a/b/c=127.0.0.1:1", "'a/b/c=127.0.0.1:1'"),
            ("app-b=127.0.0.1:1;app-b=127.0.0.1:2", "more than once"),
            (" ; ", "lists no app"),
        ] {
            let err = build(apps).unwrap_err().to_string();
            assert!(err.contains("'apps'"), "{apps}: {err}");
            assert!(err.contains("'peers'"), "{apps}: {err}");
            assert!(err.contains(needle), "{apps}: {err}");
        }
    }
}
