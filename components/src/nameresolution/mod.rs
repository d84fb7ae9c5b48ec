//! Name resolution building block: runtimes register their own mesh address
//! under their app id and look up the instances of other apps, so that
//! service invocation can address an app by id.
//!
//! Contract every resolver keeps (pinned by `conformance.rs`):
//!
//! * [`NameResolver::register`] announces one instance of this runtime's app
//!   and keeps it announced until [`NameResolver::close`] (or until the
//!   resolver is dropped, or the process dies: resolvers that share state
//!   between machines or processes detect a dead holder). Registering the
//!   same `(namespace, app id, instance id)` again replaces its address.
//! * [`NameResolver::resolve`] answers from memory. Only the first lookup of
//!   an app may do I/O; from then on the resolver keeps the answer fresh in
//!   the background (file-system notifications, ZooKeeper watches, polling).
//!   It never returns an empty list: no instance is
//!   [`ResolveError::NotFound`].
//! * Addresses come back in a stable order (sorted), without duplicates.
//! * A backend outage does not empty the cache: last-known instances are
//!   served while the resolver reconnects. [`ResolveError::Unavailable`] is
//!   only returned when there is nothing cached to answer with.
//! * App ids, namespaces and instance ids are single path segments: not
//!   empty, no `/`, no NUL, not `.` or `..`, at most 255 bytes.
//!
//! Resolvers:
//!
//! * [`local`] (`nameresolution.local`): runtimes on one machine share a
//!   registry directory; liveness is an `flock` held by each runtime.
//! * [`static_`] (`nameresolution.static`): addresses listed in metadata.
//! * [`zookeeper`] (`nameresolution.zookeeper`): ephemeral znodes and
//!   watches in Apache ZooKeeper.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod local;
#[path = "static.rs"]
pub mod static_;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::metadata::{ComponentError, InitContext, Metadata};
use crate::registry::{self, Component};

/// The namespace runtimes use when none is configured (as in Dapr).
pub const DEFAULT_NAMESPACE: &str = "default";

/// One instance of an app, as announced by its runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registration {
    /// The app id other runtimes resolve.
    pub app_id: String,
    /// The namespace the app lives in; resolution never crosses namespaces.
    pub namespace: String,
    /// Unique per runtime instance (for example a UUID chosen at start-up);
    /// names this instance's entry in the registry.
    pub instance_id: String,
    /// The runtime's mesh address other runtimes connect to.
    pub address: SocketAddr,
}

impl Registration {
    /// A registration of `address` for `app_id` in `namespace`.
    pub fn new(
        app_id: impl Into<String>,
        namespace: impl Into<String>,
        instance_id: impl Into<String>,
        address: SocketAddr,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            namespace: namespace.into(),
            instance_id: instance_id.into(),
            address,
        }
    }
}

/// Why a registration or a lookup failed. Every variant names the resolver
/// (`component '<name>' (<type>)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No live instance of the app is registered.
    #[error(
        "no instance of app '{app_id}' in namespace '{namespace}' is registered with {resolver}"
    )]
    NotFound {
        app_id: String,
        namespace: String,
        resolver: String,
    },
    /// The backend cannot be reached and nothing is cached for the request.
    #[error("{resolver} is unavailable: {reason}")]
    Unavailable { resolver: String, reason: String },
    /// The instance could not be registered.
    #[error("{resolver} could not register instance '{instance_id}' of app '{app_id}' in namespace '{namespace}': {reason}")]
    Registration {
        resolver: String,
        app_id: String,
        namespace: String,
        instance_id: String,
        reason: String,
    },
    /// An app id, namespace or instance id is not a valid name.
    #[error("{resolver}: invalid {what} '{value}': {reason}")]
    InvalidName {
        resolver: String,
        /// `app id`, `namespace` or `instance id`.
        what: &'static str,
        value: String,
        reason: String,
    },
    /// The resolver was closed.
    #[error("{resolver} is closed")]
    Closed { resolver: String },
}

impl ResolveError {
    /// Whether this is [`ResolveError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, ResolveError::NotFound { .. })
    }
}

/// Registers this runtime's instance and resolves other apps' instances.
#[async_trait]
pub trait NameResolver: Send + Sync + 'static {
    /// Announce this runtime's instance; kept alive until close().
    async fn register(&self, me: &Registration) -> Result<(), ResolveError>;

    /// Current instances of an app, sorted, never empty (no instance is
    /// [`ResolveError::NotFound`]).
    ///
    /// Hot path (called on every invocation): answers from memory; the
    /// cache is kept fresh by watches / change notification, and only the
    /// first lookup of an app may do I/O.
    async fn resolve(&self, app_id: &str, namespace: &str)
        -> Result<Vec<SocketAddr>, ResolveError>;

    /// Remove the registration(s) and stop background work. Later calls
    /// return [`ResolveError::Closed`].
    async fn close(&self);
}

/// Builds a name resolver from its component definition.
pub async fn build(
    md: &Metadata,
    ctx: &InitContext,
) -> Result<Arc<dyn NameResolver>, ComponentError> {
    match registry::create(md, ctx).await? {
        Component::NameResolution(r) => Ok(r),
        _ => Err(registry::unknown_type(md, Some("nameresolution"))),
    }
}

/// `component '<name>' (<type>)`, the prefix errors use.
pub(crate) fn resolver_label(md: &Metadata) -> String {
    format!("component '{}' ({})", md.component(), md.kind())
}

/// The answer to a lookup from the addresses known for an app: none is
/// [`ResolveError::NotFound`] naming the app, the namespace and `resolver`.
pub(crate) fn answer(
    resolver: &str,
    app_id: &str,
    namespace: &str,
    addrs: &[SocketAddr],
) -> Result<Vec<SocketAddr>, ResolveError> {
    if addrs.is_empty() {
        Err(ResolveError::NotFound {
            app_id: app_id.to_string(),
            namespace: namespace.to_string(),
            resolver: resolver.to_string(),
        })
    } else {
        Ok(addrs.to_vec())
    }
}

/// Checks that `value` can be one path segment (see the module docs).
pub(crate) fn check_name(
    resolver: &str,
    what: &'static str,
    value: &str,
) -> Result<(), ResolveError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 255 {
        Some("must be at most 255 bytes")
    } else if value == "." || value == ".." {
        Some("must not be '.' or '..'")
    } else if value.contains('/') {
        Some("must not contain '/'")
    } else if value.contains('\0') {
        Some("must not contain NUL")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(ResolveError::InvalidName {
            resolver: resolver.to_string(),
            what,
            value: value.escape_debug().to_string(),
            reason: r.to_string(),
        }),
    }
}

/// Checks the names of a registration.
pub(crate) fn check_registration(resolver: &str, me: &Registration) -> Result<(), ResolveError> {
    check_name(resolver, "app id", &me.app_id)?;
    check_name(resolver, "namespace", &me.namespace)?;
    check_name(resolver, "instance id", &me.instance_id)
}

/// Checks the names of a lookup.
pub(crate) fn check_lookup(
    resolver: &str,
    app_id: &str,
    namespace: &str,
) -> Result<(), ResolveError> {
    check_name(resolver, "app id", app_id)?;
    check_name(resolver, "namespace", namespace)
}

/// Sorts and de-duplicates addresses.
pub(crate) fn normalize(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}
