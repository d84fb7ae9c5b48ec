//! Dubbo's ZooKeeper layout, on one ZooKeeper session per registry address.
//!
//! # Layout (what Java Apache Dubbo and dubbo-go read and write)
//!
//! ```text
//! <root>                                   persistent (default /dubbo)
//!   /<escaped interface>                   persistent
//!     /providers                           persistent
//!       /<escaped provider URL>            ephemeral, one per provider instance
//!     /consumers                           persistent
//!       /<escaped consumer URL>            ephemeral, one per subscriber
//! ```
//!
//! Names are escaped with [`crate::url::encode_component`] (Java's
//! `URLEncoder`), the whole URL for a provider or consumer node. Nodes hold
//! no data (readers use only the names). Without credentials every node is
//! created with an open ACL; with a username and password the session
//! authenticates with the `digest` scheme and nodes are created with
//! creator-all ACLs, as Dubbo's Curator client does.
//!
//! A provider URL ([`ProviderSpec::to_url`]) is
//! `dubbo://<host>:<port>/<interface>?anyhost=true&application=…&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false[&group=…]&interface=…&methods=A,B&pid=…&prefer.serialization=hessian2&serialization=hessian2&side=provider&timestamp=…[&version=…]`
//! plus the caller's extra parameters; `host:port` is whatever the caller
//! advertises (the runtime: its own inbound Dubbo listener, never the
//! app's port), group and version appear only when non-empty, and
//! hessian2 is advertised as the serialization so that Java consumers
//! (which prefer fastjson2 since Dubbo 3.2) send hessian2 bodies, the only
//! ones the runtime reads. A consumer URL ([`ConsumerSpec::to_url`]) is
//! `consumer://<host>/<interface>?application=…&category=consumers&check=false&dubbo=2.0.2[&group=…]&interface=…&methods=…&pid=…&side=consumer&timestamp=…[&version=…]`.
//!
//! # Sessions
//!
//! A [`Registry`] owns one session with one ensemble, opened in the
//! background (so a runtime starts while ZooKeeper is down) and shared by
//! every provider and consumer registered through it; [`Registries`] keeps
//! one `Registry` per address. Connection loss is ridden out by the client
//! (nodes and watches survive within the session timeout). When the
//! session expires or is closed a new one is opened (backoff up to 2 s),
//! every provider and consumer node is created again and every watched
//! interface is read again, its watch re-armed; the route table keeps its
//! last contents meanwhile. Nodes are ephemeral: when the process dies the
//! server removes them once the session times out. A node deleted from
//! outside while the session lives is put back.
//!
//! # Routes
//!
//! [`Registry::subscribe`] registers a consumer node and watches the
//! interface's `providers` children; every change re-reads them. Several
//! subscriptions of one interface (different groups or versions) share one
//! watch. [`Registry::lookup`] answers, for a call's interface, group and
//! version, the providers that serve it, with Dubbo's matching rules:
//! the call must be covered by a subscription (its group `*`, equal, or in
//! its comma-separated list; its version absent, `*` or equal), and a
//! provider matches when its protocol is `dubbo`, its category (if given)
//! is `providers`, it is not `enabled=false`, and its group and version
//! equal the call's (a version `0.0.0` counts as none). Unsubscribing the
//! last subscription of an interface drops its watch and its routes.
//!
//! # Waiting
//!
//! `publish` and `subscribe` wait for their first success at most the
//! configured request timeout; on failure nothing stays registered (the
//! call can simply be retried). After a first success the registration is
//! kept across sessions until it is withdrawn or the registry is closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use zookeeper_client::{
    Acls, Client, CreateMode, CreateOptions, Error as ZkError, EventType, OneshotWatcher,
    SessionInfo, SessionState, WatchedEvent,
};

use crate::url::{encode_component, DubboUrl, UrlError};

/// Default root node (Dubbo's registry group `dubbo`).
pub const DEFAULT_ROOT: &str = "/dubbo";
/// The Dubbo protocol version written in URLs (`dubbo=`).
pub const DUBBO_PROTOCOL_VERSION: &str = "2.0.2";
/// Default session timeout asked of ZooKeeper.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on waiting for ZooKeeper in `publish` / `subscribe`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

// === errors ===

/// Why a registry call failed; the message names the field, address or node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry configuration is invalid.
    #[error("registry {field}: {reason}")]
    BadConfig {
        /// The field (`addr`, `username`, `password`, `root`, …).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A service description is invalid.
    #[error("service {field}: {reason}")]
    BadService {
        /// The field (`interface`, `methods`, `group`, `version`, …).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// ZooKeeper could not be reached in time.
    #[error("ZooKeeper registry {servers} unavailable: {reason}")]
    Unavailable {
        /// The ensemble.
        servers: String,
        /// Why.
        reason: String,
    },
    /// ZooKeeper refused an operation.
    #[error("ZooKeeper registry {servers}: cannot {action} {path}: {reason}")]
    Zookeeper {
        /// The ensemble.
        servers: String,
        /// What was attempted.
        action: &'static str,
        /// The node.
        path: String,
        /// ZooKeeper's answer.
        reason: String,
    },
    /// The registry was closed.
    #[error("ZooKeeper registry {servers} is closed")]
    Closed {
        /// The ensemble.
        servers: String,
    },
}

impl From<UrlError> for RegistryError {
    fn from(e: UrlError) -> Self {
        RegistryError::BadService {
            field: "parameters",
            reason: e.to_string(),
        }
    }
}

// === config ===

/// Where and how to reach one ZooKeeper registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Connect string, `host:port[,host:port…]` (port defaults to 2181).
    pub servers: String,
    /// Digest user name (with `password`).
    pub username: Option<String>,
    /// Digest password (with `username`).
    pub password: Option<String>,
    /// Root node, `/dubbo` by default (Dubbo's registry `group`).
    pub root: String,
    /// Session timeout asked of the server.
    pub session_timeout: Duration,
    /// Bound on waiting in `publish`, `subscribe` and withdrawals.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("servers", &self.servers)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("root", &self.root)
            .field("session_timeout", &self.session_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl RegistryConfig {
    /// A configuration for `servers` with the defaults; checks the address.
    pub fn new(servers: &str) -> Result<RegistryConfig, RegistryError> {
        let servers = servers.trim();
        let bad = |reason: String| RegistryError::BadConfig {
            field: "addr",
            reason,
        };
        if servers.is_empty() {
            return Err(bad("is empty (expected host:port)".into()));
        }
        for s in servers.split(',') {
            let s = s.trim();
            if s.is_empty() {
                return Err(bad(format!("'{servers}' has an empty entry")));
            }
            if s.contains('/') {
                return Err(bad(format!(
                    "entry '{s}' has a path (use the root setting instead of a chroot)"
                )));
            }
            let (host, port) = match s.strip_prefix('[') {
                Some(rest) => match rest.split_once(']') {
                    Some((h, p)) => (h, p.strip_prefix(':')),
                    None => return Err(bad(format!("entry '{s}' has no closing ']'"))),
                },
                None => match s.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (s, None),
                },
            };
            if host.is_empty() || host.chars().any(char::is_whitespace) {
                return Err(bad(format!("entry '{s}' has no valid host")));
            }
            if let Some(p) = port {
                if p.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(bad(format!(
                        "entry '{s}' has an invalid port (expected host:port)"
                    )));
                }
            }
        }
        Ok(RegistryConfig {
            servers: servers.to_string(),
            username: None,
            password: None,
            root: DEFAULT_ROOT.to_string(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Digest credentials; empty strings mean none. Both or neither.
    pub fn with_credentials(
        mut self,
        username: &str,
        password: &str,
    ) -> Result<RegistryConfig, RegistryError> {
        match (username.is_empty(), password.is_empty()) {
            (true, true) => {
                self.username = None;
                self.password = None;
            }
            (false, false) => {
                if username.contains(':') {
                    return Err(RegistryError::BadConfig {
                        field: "username",
                        reason: "must not contain ':'".into(),
                    });
                }
                self.username = Some(username.into());
                self.password = Some(password.into());
            }
            (true, false) => {
                return Err(RegistryError::BadConfig {
                    field: "username",
                    reason: "is empty but a password is given".into(),
                })
            }
            (false, true) => {
                return Err(RegistryError::BadConfig {
                    field: "password",
                    reason: "is empty but a username is given".into(),
                })
            }
        }
        Ok(self)
    }

    /// Another root node (`/dubbo` by default).
    pub fn with_root(mut self, root: &str) -> Result<RegistryConfig, RegistryError> {
        let r = root.trim().trim_end_matches('/');
        if !root.trim().starts_with('/')
            || r.is_empty()
            || r.split('/')
                .skip(1)
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(RegistryError::BadConfig {
                field: "root",
                reason: format!(
                    "'{root}' must be an absolute node path such as /dubbo, without empty, '.' or '..' segments"
                ),
            });
        }
        self.root = r.to_string();
        Ok(self)
    }

    /// The key [`Registries`] shares sessions by (the connect string).
    pub fn key(&self) -> String {
        self.servers
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn acls(&self) -> Acls<'static> {
        if self.username.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }
}

// === service descriptions ===

/// A service's identity: interface, group, version (empty = none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Interface name.
    pub interface: String,
    /// Group, empty for none.
    pub group: String,
    /// Version, empty for none.
    pub version: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (group '{}', version '{}')",
            self.interface, self.group, self.version
        )
    }
}

fn check_interface(interface: &str) -> Result<(), RegistryError> {
    let bad = |reason: String| RegistryError::BadService {
        field: "interface",
        reason,
    };
    if interface.is_empty() {
        return Err(bad("is missing or empty".into()));
    }
    if interface.len() > 1024 {
        return Err(bad(format!(
            "is {} bytes long (at most 1024)",
            interface.len()
        )));
    }
    if let Some(c) = interface
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '$' | '-')))
    {
        return Err(bad(format!(
            "'{interface}' holds {c:?} (expected a Java-style name: letters, digits, '.', '_', '$', '-')"
        )));
    }
    Ok(())
}

fn check_word(field: &'static str, value: &str, allow_list: bool) -> Result<(), RegistryError> {
    if let Some(c) = value.chars().find(|c| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, '&' | '=' | '?' | '#' | '/')
            || (!allow_list && *c == ',')
    }) {
        return Err(RegistryError::BadService {
            field,
            reason: format!("'{value}' holds {c:?}, which cannot go into a Dubbo URL"),
        });
    }
    Ok(())
}

fn check_methods(methods: &[String], required: bool) -> Result<String, RegistryError> {
    let bad = |reason: String| RegistryError::BadService {
        field: "methods",
        reason,
    };
    if required && methods.is_empty() {
        return Err(bad(
            "is missing or empty (list the service's method names)".into()
        ));
    }
    let mut set = BTreeSet::new();
    for m in methods {
        if m.is_empty() {
            return Err(bad("holds an empty method name".into()));
        }
        if let Some(c) = m
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '$')))
        {
            return Err(bad(format!("method '{m}' holds {c:?}")));
        }
        set.insert(m.as_str());
    }
    Ok(set.into_iter().collect::<Vec<_>>().join(","))
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Keys the registry writes itself; extra parameters may not set them.
const PROVIDER_RESERVED: &[&str] = &[
    "interface",
    "methods",
    "group",
    "version",
    "side",
    "pid",
    "timestamp",
    "category",
];

fn apply_extra(
    url: &mut DubboUrl,
    params: &BTreeMap<String, String>,
    reserved: &[&str],
) -> Result<(), RegistryError> {
    for (k, v) in params {
        if reserved.contains(&k.as_str()) {
            return Err(RegistryError::BadService {
                field: "parameters",
                reason: format!("'{k}' is set by the registry itself"),
            });
        }
        url.set_param(k, v)?;
    }
    Ok(())
}

/// A provider to publish: the service and the address it is reached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSpec {
    /// Interface name.
    pub interface: String,
    /// Method names (at least one).
    pub methods: Vec<String>,
    /// Group (empty: none).
    pub group: String,
    /// Version (empty: none).
    pub version: String,
    /// Host advertised (the runtime's inbound Dubbo listener address).
    pub host: String,
    /// Port advertised.
    pub port: u16,
    /// `application` parameter.
    pub application: String,
    /// Extra parameters (e.g. the runtime's app id and mesh address); they
    /// override the defaults (`anyhost`, `serialization`, …) but may not
    /// set `interface`, `methods`, `group`, `version`, `side`, `pid`,
    /// `timestamp` or `category`.
    pub params: BTreeMap<String, String>,
}

impl ProviderSpec {
    /// A provider of `interface` with `methods` at `host:port`, no group or
    /// version, application `weft`.
    pub fn new(interface: &str, methods: &[&str], host: &str, port: u16) -> ProviderSpec {
        ProviderSpec {
            interface: interface.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            group: String::new(),
            version: String::new(),
            host: host.into(),
            port,
            application: "weft".into(),
            params: BTreeMap::new(),
        }
    }

    /// The service key.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            interface: self.interface.clone(),
            group: self.group.clone(),
            version: self.version.clone(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), RegistryError> {
        self.to_url_at(0).map(|_| ())
    }

    /// The provider URL, stamped now.
    pub fn to_url(&self) -> Result<DubboUrl, RegistryError> {
        self.to_url_at(now_millis())
    }

    fn to_url_at(&self, timestamp: u64) -> Result<DubboUrl, RegistryError> {
        check_interface(&self.interface)?;
        let methods = check_methods(&self.methods, true)?;
        check_word("group", &self.group, false)?;
        check_word("version", &self.version, false)?;
        check_word("application", &self.application, false)?;
        if self.port == 0 {
            return Err(RegistryError::BadService {
                field: "port",
                reason: "must be from 1 to 65535".into(),
            });
        }
        let mut url = DubboUrl::new("dubbo", &self.host, Some(self.port), &self.interface)
            .map_err(|e| RegistryError::BadService {
                field: "host",
                reason: e.to_string(),
            })?;
        for (k, v) in [
            ("anyhost", "true"),
            ("deprecated", "false"),
            ("dubbo", DUBBO_PROTOCOL_VERSION),
            ("dynamic", "true"),
            ("generic", "false"),
            ("interface", &self.interface),
            ("methods", &methods),
            ("serialization", "hessian2"),
            ("prefer.serialization", "hessian2"),
            ("side", "provider"),
        ] {
            url.set_param(k, v)?;
        }
        if !self.application.is_empty() {
            url.set_param("application", &self.application)?;
        }
        url.set_param("pid", &std::process::id().to_string())?;
        url.set_param("timestamp", &timestamp.to_string())?;
        if !self.group.is_empty() {
            url.set_param("group", &self.group)?;
        }
        if !self.version.is_empty() {
            url.set_param("version", &self.version)?;
        }
        apply_extra(&mut url, &self.params, PROVIDER_RESERVED)?;
        Ok(url)
    }
}

/// A subscription: which providers a consumer wants routes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Interface name.
    pub interface: String,
    /// Group: empty (none), a name, a comma-separated list or `*`.
    pub group: String,
    /// Version: `None` (any, as MOSN's `/sub` has no version), or a
    /// version (`*` is any).
    pub version: Option<String>,
    /// Method names, if known (written in the consumer node only).
    pub methods: Vec<String>,
    /// Host written in the consumer node (the consumer's address).
    pub host: String,
    /// `application` parameter.
    pub application: String,
    /// Extra parameters for the consumer node.
    pub params: BTreeMap<String, String>,
}

impl ConsumerSpec {
    /// A subscription to `interface` from `host`, no group, any version.
    pub fn new(interface: &str, host: &str) -> ConsumerSpec {
        ConsumerSpec {
            interface: interface.into(),
            group: String::new(),
            version: None,
            methods: Vec::new(),
            host: host.into(),
            application: "weft".into(),
            params: BTreeMap::new(),
        }
    }

    fn sub_key(&self) -> SubKey {
        SubKey {
            interface: self.interface.clone(),
            group: self.group.clone(),
            version: self.version.clone(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), RegistryError> {
        self.to_url_at(0).map(|_| ())
    }

    /// The consumer URL, stamped now.
    pub fn to_url(&self) -> Result<DubboUrl, RegistryError> {
        self.to_url_at(now_millis())
    }

    fn to_url_at(&self, timestamp: u64) -> Result<DubboUrl, RegistryError> {
        check_interface(&self.interface)?;
        let methods = check_methods(&self.methods, false)?;
        check_word("group", &self.group, true)?;
        if let Some(v) = &self.version {
            check_word("version", v, false)?;
        }
        check_word("application", &self.application, false)?;
        let mut url =
            DubboUrl::new("consumer", &self.host, None, &self.interface).map_err(|e| {
                RegistryError::BadService {
                    field: "host",
                    reason: e.to_string(),
                }
            })?;
        for (k, v) in [
            ("category", "consumers"),
            ("check", "false"),
            ("dubbo", DUBBO_PROTOCOL_VERSION),
            ("interface", &self.interface),
            ("side", "consumer"),
        ] {
            url.set_param(k, v)?;
        }
        if !methods.is_empty() {
            url.set_param("methods", &methods)?;
        }
        if !self.application.is_empty() {
            url.set_param("application", &self.application)?;
        }
        url.set_param("pid", &std::process::id().to_string())?;
        url.set_param("timestamp", &timestamp.to_string())?;
        if !self.group.is_empty() {
            url.set_param("group", &self.group)?;
        }
        if let Some(v) = self.version.as_deref().filter(|v| !v.is_empty()) {
            url.set_param("version", v)?;
        }
        apply_extra(&mut url, &self.params, PROVIDER_RESERVED)?;
        Ok(url)
    }
}

/// A subscription's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SubKey {
    interface: String,
    group: String,
    version: Option<String>,
}

impl SubKey {
    /// Whether this subscription covers a call with `group` and `version`.
    fn covers(&self, group: &str, version: &str) -> bool {
        group_matches(&self.group, group)
            && match self.version.as_deref() {
                None | Some("*") => true,
                Some(v) => same_version(v, version),
            }
    }
}

fn group_matches(pattern: &str, group: &str) -> bool {
    pattern == "*" || pattern == group || pattern.split(',').any(|g| g.trim() == group)
}

fn same_version(a: &str, b: &str) -> bool {
    fn norm(v: &str) -> &str {
        if v == "0.0.0" {
            ""
        } else {
            v
        }
    }
    a == "*" || b == "*" || norm(a) == norm(b)
}

/// One provider instance read from ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// Its URL.
    pub url: DubboUrl,
    /// Its node name (the escaped URL).
    pub node: String,
}

impl Provider {
    /// `host:port`.
    pub fn address(&self) -> String {
        self.url.address()
    }

    fn serves(&self, key: &ServiceKey) -> bool {
        let u = &self.url;
        u.protocol() == "dubbo"
            && u.interface() == key.interface
            && u.param("category").is_none_or(|c| c == "providers")
            && u.param("enabled") != Some("false")
            && u.group() == key.group
            && same_version(u.version(), &key.version)
    }
}

/// Why [`Registry::lookup`] has no provider for a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No subscription covers the call.
    #[error("no subscription covers {key}: subscribe to it first")]
    NotSubscribed {
        /// The call's service.
        key: ServiceKey,
    },
    /// Subscribed, but no provider serves it.
    #[error(
        "no provider of {key} in ZooKeeper registry {servers} ({others} provider(s) of other groups, versions or protocols)"
    )]
    NoProvider {
        /// The call's service.
        key: ServiceKey,
        /// The registry.
        servers: String,
        /// Providers of the interface that did not match.
        others: usize,
    },
    /// Subscribed, but the providers could not be read yet.
    #[error("providers of {key} not read yet from ZooKeeper registry {servers}: {reason}")]
    NotReady {
        /// The call's service.
        key: ServiceKey,
        /// The registry.
        servers: String,
        /// Why.
        reason: String,
    },
}

// === impl Registry ===

#[derive(Clone)]
enum Slot {
    Connecting,
    Up { client: Client, generation: u64 },
    Closed,
}

/// A kept ephemeral node (a provider or a consumer).
struct Kept {
    url: DubboUrl,
    path: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Published {
    spec: ProviderSpec,
    node: Kept,
}

struct Subscribed {
    spec: ConsumerSpec,
    node: Kept,
}

#[derive(Clone)]
enum View {
    Loading,
    Known(Arc<[Provider]>),
    Failed(String),
}

struct Watched {
    view: RwLock<View>,
    settled: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    cfg: RegistryConfig,
    slot: watch::Sender<Slot>,
    last_error: Mutex<String>,
    published: Mutex<HashMap<ServiceKey, Published>>,
    subscribed: Mutex<HashMap<SubKey, Subscribed>>,
    /// interface → its providers.
    watched: RwLock<HashMap<String, Arc<Watched>>>,
    changes: watch::Sender<u64>,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// Stops the background tasks when the last [`Registry`] handle goes.
struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.begin_shutdown();
    }
}

/// One ZooKeeper session and everything registered and watched through it.
/// Cheap to clone; the session ends when the last clone is dropped or
/// [`Registry::close`] is called.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("servers", &self.inner.cfg.servers)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Starts opening the session in the background. Needs a Tokio runtime.
    pub fn connect(cfg: RegistryConfig) -> Registry {
        let (slot, _) = watch::channel(Slot::Connecting);
        let (shutdown, _) = watch::channel(false);
        let (changes, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            cfg,
            slot,
            last_error: Mutex::new("no session established yet".into()),
            published: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(HashMap::new()),
            watched: RwLock::new(HashMap::new()),
            changes,
            closed: AtomicBool::new(false),
            shutdown,
            supervisor: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(inner.clone()));
        *inner.supervisor.lock().unwrap() = Some(task);
        Registry {
            _guard: Arc::new(Guard(inner.clone())),
            inner,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.cfg
    }

    /// The current session (id and password), if one is open; for
    /// diagnostics and for tests that take the session over.
    pub fn session(&self) -> Option<SessionInfo> {
        match &*self.inner.slot.borrow() {
            Slot::Up { client, .. } => Some(client.session().clone()),
            _ => None,
        }
    }

    /// A receiver whose value changes whenever the routes change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Publishes a provider: an ephemeral node under
    /// `<root>/<interface>/providers`, kept until [`Self::unpublish`].
    /// Publishing the same interface, group and version again with the same
    /// spec does nothing; with another spec replaces the node. Returns the
    /// URL published.
    pub async fn publish(&self, spec: &ProviderSpec) -> Result<DubboUrl, RegistryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let url = spec.to_url()?;
        let key = spec.key();
        let old = {
            let mut published = inner.published.lock().unwrap();
            match published.get(&key) {
                Some(p) if p.spec == *spec => return Ok(p.node.url.clone()),
                _ => published.remove(&key),
            }
        };
        if let Some(old) = old {
            inner.withdraw(old.node).await;
        }
        let path = format!(
            "{}/providers/{}",
            inner.service_path(&spec.interface),
            url.to_node_name()
        );
        let (node, first) = inner.keep(url.clone(), path);
        match inner.first_result(first).await {
            Ok(()) => {
                let mut published = inner.published.lock().unwrap();
                if let Some(replaced) = published.insert(
                    key,
                    Published {
                        spec: spec.clone(),
                        node,
                    },
                ) {
                    replaced.node.stop.send_replace(true);
                }
                tracing::info!(servers = %inner.cfg.servers, url = %url, "Dubbo provider published");
                Ok(url)
            }
            Err(e) => {
                inner.withdraw(node).await;
                Err(e)
            }
        }
    }

    /// Removes the provider published for `interface`, `group`, `version`;
    /// `Ok(false)` when none was.
    pub async fn unpublish(
        &self,
        interface: &str,
        group: &str,
        version: &str,
    ) -> Result<bool, RegistryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = ServiceKey {
            interface: interface.into(),
            group: group.into(),
            version: version.into(),
        };
        let Some(p) = inner.published.lock().unwrap().remove(&key) else {
            return Ok(false);
        };
        tracing::info!(servers = %inner.cfg.servers, url = %p.node.url, "Dubbo provider unpublished");
        inner.withdraw(p.node).await;
        Ok(true)
    }

    /// Subscribes: registers a consumer node under
    /// `<root>/<interface>/consumers` and watches the interface's providers
    /// (waiting for their first read). Subscribing again with the same
    /// interface, group and version replaces the consumer node if the spec
    /// changed.
    pub async fn subscribe(&self, spec: &ConsumerSpec) -> Result<(), RegistryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let url = spec.to_url()?;
        let key = spec.sub_key();
        let old = {
            let mut subscribed = inner.subscribed.lock().unwrap();
            match subscribed.get(&key) {
                Some(s) if s.spec == *spec => return Ok(()),
                _ => subscribed.remove(&key),
            }
        };
        if let Some(old) = old {
            inner.withdraw(old.node).await;
        }
        let watched = inner.watch_interface(&spec.interface);
        let path = format!(
            "{}/consumers/{}",
            inner.service_path(&spec.interface),
            url.to_node_name()
        );
        let (node, first) = inner.keep(url.clone(), path);
        let outcome = async {
            inner.first_result(first).await?;
            inner.settled(&spec.interface, &watched).await
        }
        .await;
        match outcome {
            Ok(()) => {
                if let Some(replaced) = inner.subscribed.lock().unwrap().insert(
                    key,
                    Subscribed {
                        spec: spec.clone(),
                        node,
                    },
                ) {
                    replaced.node.stop.send_replace(true);
                }
                inner.bump();
                tracing::info!(servers = %inner.cfg.servers, url = %url, "Dubbo consumer subscribed");
                Ok(())
            }
            Err(e) => {
                inner.withdraw(node).await;
                inner.unwatch_if_unused(&spec.interface);
                Err(e)
            }
        }
    }

    /// Withdraws the subscription to `interface` with `group` and `version`
    /// (as subscribed): its consumer node, and, when it was the last one of
    /// the interface, the watch and the routes. `Ok(false)` when there was
    /// no such subscription.
    pub async fn unsubscribe(
        &self,
        interface: &str,
        group: &str,
        version: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = SubKey {
            interface: interface.into(),
            group: group.into(),
            version: version.map(str::to_string),
        };
        let Some(s) = inner.subscribed.lock().unwrap().remove(&key) else {
            return Ok(false);
        };
        inner.unwatch_if_unused(interface);
        inner.bump();
        tracing::info!(servers = %inner.cfg.servers, url = %s.node.url, "Dubbo consumer unsubscribed");
        inner.withdraw(s.node).await;
        Ok(true)
    }

    /// The providers serving a call to `interface` with `group` and
    /// `version` (empty for none), if a subscription covers it.
    pub fn lookup(
        &self,
        interface: &str,
        group: &str,
        version: &str,
    ) -> Result<Vec<Provider>, LookupError> {
        let inner = &self.inner;
        let key = ServiceKey {
            interface: interface.into(),
            group: group.into(),
            version: version.into(),
        };
        let covered = inner
            .subscribed
            .lock()
            .unwrap()
            .keys()
            .any(|s| s.interface == interface && s.covers(group, version));
        let watched = inner.watched.read().unwrap().get(interface).cloned();
        let (true, Some(watched)) = (covered, watched) else {
            return Err(LookupError::NotSubscribed { key });
        };
        let view = watched.view.read().unwrap().clone();
        let all = match view {
            View::Known(all) => all,
            View::Loading => {
                return Err(LookupError::NotReady {
                    key,
                    servers: inner.cfg.servers.clone(),
                    reason: inner.describe_trouble(),
                })
            }
            View::Failed(reason) => {
                return Err(LookupError::NotReady {
                    key,
                    servers: inner.cfg.servers.clone(),
                    reason,
                })
            }
        };
        let found: Vec<Provider> = all.iter().filter(|p| p.serves(&key)).cloned().collect();
        if found.is_empty() {
            return Err(LookupError::NoProvider {
                key,
                servers: inner.cfg.servers.clone(),
                others: all.len(),
            });
        }
        Ok(found)
    }

    /// Every provider last read for `interface` (subscribed or not: empty).
    pub fn providers(&self, interface: &str) -> Vec<Provider> {
        let watched = self.inner.watched.read().unwrap().get(interface).cloned();
        match watched.map(|w| w.view.read().unwrap().clone()) {
            Some(View::Known(all)) => all.to_vec(),
            _ => Vec::new(),
        }
    }

    /// Services published, with their URLs.
    pub fn published(&self) -> Vec<(ServiceKey, DubboUrl)> {
        let p = self.inner.published.lock().unwrap();
        let mut v: Vec<_> = p
            .iter()
            .map(|(k, p)| (k.clone(), p.node.url.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Deletes every node this registry keeps (bounded by the request
    /// timeout) and closes the session. Later calls fail with
    /// [`RegistryError::Closed`].
    pub async fn close(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let nodes: Vec<Kept> = {
            let mut p = inner.published.lock().unwrap();
            let mut s = inner.subscribed.lock().unwrap();
            p.drain()
                .map(|(_, p)| p.node)
                .chain(s.drain().map(|(_, s)| s.node))
                .collect()
        };
        for n in nodes {
            inner.withdraw(n).await;
        }
        inner.begin_shutdown();
        let task = inner.supervisor.lock().unwrap().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(inner.cfg.request_timeout, task).await;
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), RegistryError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(RegistryError::Closed {
                servers: self.cfg.servers.clone(),
            });
        }
        Ok(())
    }

    fn begin_shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
        for (_, p) in self.published.lock().unwrap().drain() {
            p.node.stop.send_replace(true);
            p.node.task.abort();
        }
        for (_, s) in self.subscribed.lock().unwrap().drain() {
            s.node.stop.send_replace(true);
            s.node.task.abort();
        }
        for (_, w) in self.watched.write().unwrap().drain() {
            if let Some(t) = w.task.lock().unwrap().take() {
                t.abort();
            }
        }
        self.slot.send_replace(Slot::Closed);
    }

    fn bump(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    fn service_path(&self, interface: &str) -> String {
        format!("{}/{}", self.cfg.root, encode_component(interface))
    }

    fn set_last_error(&self, e: String) {
        *self.last_error.lock().unwrap() = e;
    }

    fn describe_trouble(&self) -> String {
        let e = self.last_error.lock().unwrap().clone();
        if e.is_empty() {
            "ZooKeeper did not answer in time".into()
        } else {
            e
        }
    }

    fn unavailable(&self, what: String) -> RegistryError {
        RegistryError::Unavailable {
            servers: self.cfg.servers.clone(),
            reason: format!(
                "{what} within {:?}: {}",
                self.cfg.request_timeout,
                self.describe_trouble()
            ),
        }
    }

    /// Waits for a session of generation ≥ `min`; `None` once closed.
    async fn session(&self, min: u64) -> Option<(Client, u64)> {
        let mut rx = self.slot.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Slot::Up { client, generation } if *generation >= min => {
                    return Some((client.clone(), *generation))
                }
                Slot::Closed => return None,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Resolves when the session of `generation` is gone.
    async fn session_replaced(&self, generation: u64) {
        let mut rx = self.slot.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Slot::Up { generation: g, .. } if *g == generation => {}
                _ => return,
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn shut_down_signal(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Starts keeping an ephemeral node at `path`.
    fn keep(
        self: &Arc<Self>,
        url: DubboUrl,
        path: String,
    ) -> (Kept, oneshot::Receiver<Result<(), RegistryError>>) {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(keep_node(self.clone(), path.clone(), stop_rx, tx));
        (
            Kept {
                url,
                path,
                stop,
                task,
            },
            rx,
        )
    }

    async fn first_result(
        &self,
        first: oneshot::Receiver<Result<(), RegistryError>>,
    ) -> Result<(), RegistryError> {
        match tokio::time::timeout(self.cfg.request_timeout, first).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RegistryError::Closed {
                servers: self.cfg.servers.clone(),
            }),
            Err(_) => Err(self.unavailable("node not created".into())),
        }
    }

    /// Stops keeping a node and deletes it (if this session owns it).
    async fn withdraw(&self, node: Kept) {
        node.stop.send_replace(true);
        node.task.abort();
        let slot = self.slot.borrow().clone();
        if let Slot::Up { client, .. } = slot {
            let delete = delete_own(&client, &node.path);
            match tokio::time::timeout(self.cfg.request_timeout, delete).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(servers = %self.cfg.servers, path = %node.path, error = %e,
                    "cannot delete a Dubbo registry node (it goes with the session)")
                }
                Err(_) => tracing::warn!(servers = %self.cfg.servers, path = %node.path,
                    "deleting a Dubbo registry node timed out (it goes with the session)"),
            }
        }
    }

    fn watch_interface(self: &Arc<Self>, interface: &str) -> Arc<Watched> {
        let mut watched = self.watched.write().unwrap();
        if let Some(w) = watched.get(interface) {
            return w.clone();
        }
        let (settled, _) = watch::channel(false);
        let w = Arc::new(Watched {
            view: RwLock::new(View::Loading),
            settled,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(watch_providers(
            self.clone(),
            w.clone(),
            interface.to_string(),
        ));
        *w.task.lock().unwrap() = Some(task);
        watched.insert(interface.to_string(), w.clone());
        w
    }

    fn unwatch_if_unused(&self, interface: &str) {
        let used = self
            .subscribed
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.interface == interface);
        if used {
            return;
        }
        if let Some(w) = self.watched.write().unwrap().remove(interface) {
            // Dropping the watcher (with the task) removes the watch.
            if let Some(t) = w.task.lock().unwrap().take() {
                t.abort();
            }
        }
    }

    async fn settled(&self, interface: &str, w: &Watched) -> Result<(), RegistryError> {
        let mut rx = w.settled.subscribe();
        let _ = tokio::time::timeout(self.cfg.request_timeout, rx.wait_for(|s| *s)).await;
        match &*w.view.read().unwrap() {
            View::Known(_) => Ok(()),
            View::Failed(reason) => Err(RegistryError::Unavailable {
                servers: self.cfg.servers.clone(),
                reason: reason.clone(),
            }),
            View::Loading => Err(self.unavailable(format!("providers of {interface} not read"))),
        }
    }
}

// === background tasks ===

/// Opens sessions, one after the other, for the registry's whole life.
async fn supervise(inner: Arc<Inner>) {
    let mut generation = 0u64;
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    let connect_bound = inner.cfg.session_timeout + Duration::from_secs(2);
    'sessions: loop {
        if *inner.shutdown.borrow() {
            break;
        }
        let attempt = async {
            let mut connector = Client::connector();
            connector.session_timeout(inner.cfg.session_timeout);
            connector.fail_eagerly();
            if let (Some(u), Some(p)) = (&inner.cfg.username, &inner.cfg.password) {
                connector.auth("digest".into(), format!("{u}:{p}").into_bytes());
            }
            connector.connect(&inner.cfg.servers).await
        };
        let result = tokio::select! {
            r = tokio::time::timeout(connect_bound, attempt) => r,
            _ = inner.shut_down_signal() => break,
        };
        let client = match result {
            Ok(Ok(client)) => client,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no session within {connect_bound:?}"),
                };
                failures += 1;
                let msg = format!("cannot open a session with {}: {why}", inner.cfg.servers);
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(servers = %inner.cfg.servers, attempts = failures, error = %msg,
                        "Dubbo registry unreachable; retrying");
                }
                inner.set_last_error(msg);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.shut_down_signal() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        generation += 1;
        failures = 0;
        backoff = MIN_BACKOFF;
        inner.set_last_error(String::new());
        tracing::info!(servers = %inner.cfg.servers, session = %client.session_id(),
            "Dubbo registry session established");
        let mut states = client.state_watcher();
        inner.slot.send_replace(Slot::Up {
            client: client.clone(),
            generation,
        });
        loop {
            let state = tokio::select! {
                s = states.changed() => s,
                _ = inner.shut_down_signal() => break 'sessions,
            };
            match state {
                SessionState::Disconnected => {
                    inner.set_last_error("connection to ZooKeeper lost; reconnecting".into());
                    tracing::warn!(servers = %inner.cfg.servers, "Dubbo registry connection lost; reconnecting");
                }
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    inner.set_last_error(String::new());
                }
                state => {
                    inner.set_last_error(format!("session {}", state.to_string().to_lowercase()));
                    tracing::warn!(servers = %inner.cfg.servers, %state,
                        "Dubbo registry session ended; opening a new one (registrations are restored)");
                    break;
                }
            }
        }
        if !*inner.shutdown.borrow() {
            inner.slot.send_replace(Slot::Connecting);
        }
    }
    inner.slot.send_replace(Slot::Closed);
}

/// Creates one ephemeral node and keeps it there across sessions.
async fn keep_node(
    inner: Arc<Inner>,
    path: String,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), RegistryError>>,
) {
    let mut first = Some(first);
    let mut min_generation = 0;
    let mut backoff = MIN_BACKOFF;
    let acls = inner.cfg.acls();
    loop {
        let session = tokio::select! {
            s = inner.session(min_generation) => s,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some((client, generation)) = session else {
            return;
        };
        let outcome = tokio::select! {
            r = ensure_ephemeral(&client, &path, acls) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let error = match outcome {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                tracing::debug!(servers = %inner.cfg.servers, path = %path, session = %client.session_id(),
                    "Dubbo registry node created");
                match client.check_and_watch_stat(&path).await {
                    Ok((Some(stat), watcher)) if stat.ephemeral_owner == client.session_id().0 => {
                        let changed = tokio::select! {
                            ev = wait_event(watcher) => Some(ev),
                            _ = inner.session_replaced(generation) => None,
                            _ = stop.wait_for(|s| *s) => return,
                        };
                        match changed {
                            Some(ev) if ev.event_type != EventType::Session => {
                                tracing::warn!(servers = %inner.cfg.servers, path = %path,
                                    event = %ev.event_type, "Dubbo registry node changed from outside; restoring it");
                                // Do not fight another holder of the path at full speed.
                                tokio::select! {
                                    _ = tokio::time::sleep(MIN_BACKOFF * 2) => {}
                                    _ = stop.wait_for(|s| *s) => return,
                                }
                            }
                            _ => min_generation = generation + 1,
                        }
                        continue;
                    }
                    Ok(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(MIN_BACKOFF * 2) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                        continue;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if session_gone(&error) {
            min_generation = generation + 1;
            continue;
        }
        let transient = matches!(
            error,
            ZkError::ConnectionLoss | ZkError::Timeout | ZkError::Throttled
        );
        if !transient {
            if let Some(tx) = first.take() {
                let _ = tx.send(Err(RegistryError::Zookeeper {
                    servers: inner.cfg.servers.clone(),
                    action: "create",
                    path: path.clone(),
                    reason: error.to_string(),
                }));
                return;
            }
            tracing::warn!(servers = %inner.cfg.servers, path = %path, error = %error,
                "cannot create a Dubbo registry node; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps one interface's providers fresh.
async fn watch_providers(inner: Arc<Inner>, w: Arc<Watched>, interface: String) {
    let path = format!("{}/providers", inner.service_path(&interface));
    let acls = inner.cfg.acls();
    let mut min_generation = 0;
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some((client, generation)) = inner.session(min_generation).await else {
            return;
        };
        match read_providers(&client, &path, acls).await {
            Ok((providers, watcher)) => {
                backoff = MIN_BACKOFF;
                let changed = {
                    let mut view = w.view.write().unwrap();
                    let changed = !matches!(&*view, View::Known(old) if old[..] == providers[..]);
                    if changed {
                        tracing::debug!(servers = %inner.cfg.servers, interface = %interface,
                            providers = providers.len(), "Dubbo providers changed");
                        *view = View::Known(providers.into());
                    }
                    changed
                };
                if changed {
                    inner.bump();
                }
                w.settled.send_replace(true);
                tokio::select! {
                    ev = wait_event(watcher) => {
                        if ev.event_type == EventType::Session {
                            min_generation = generation + 1;
                        }
                    }
                    _ = inner.session_replaced(generation) => min_generation = generation + 1,
                    _ = inner.shut_down_signal() => return,
                }
            }
            Err(e) if session_gone(&e) => min_generation = generation + 1,
            Err(e) => {
                let reason = format!("cannot read {path}: {e}");
                {
                    let mut view = w.view.write().unwrap();
                    if matches!(&*view, View::Loading) && !matches!(e, ZkError::ConnectionLoss) {
                        *view = View::Failed(reason.clone());
                        w.settled.send_replace(true);
                    }
                }
                tracing::debug!(servers = %inner.cfg.servers, error = %reason, "retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.shut_down_signal() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Lists the providers (creating the path, as Dubbo consumers do) and
/// leaves a children watch.
async fn read_providers(
    client: &Client,
    path: &str,
    acls: Acls<'static>,
) -> Result<(Vec<Provider>, OneshotWatcher), ZkError> {
    let (children, _, watcher) = match client.get_and_watch_children(path).await {
        Ok(found) => found,
        Err(ZkError::NoNode) => {
            match client
                .mkdir(path, &CreateMode::Persistent.with_acls(acls))
                .await
            {
                Ok(()) | Err(ZkError::NodeExists) => {}
                Err(e) => return Err(e),
            }
            client.get_and_watch_children(path).await?
        }
        Err(e) => return Err(e),
    };
    let mut providers = Vec::with_capacity(children.len());
    for child in children {
        match DubboUrl::from_node_name(&child) {
            Ok(url) => providers.push(Provider { url, node: child }),
            Err(e) => tracing::warn!(node = %format!("{path}/{child}"), error = %e,
                "provider node is not a Dubbo URL; ignored"),
        }
    }
    providers.sort_by(|a, b| a.node.cmp(&b.node));
    Ok((providers, watcher))
}

/// Makes `path` an ephemeral node of this session, creating missing
/// parents as persistent nodes and replacing a node left by another session.
async fn ensure_ephemeral(client: &Client, path: &str, acls: Acls<'static>) -> Result<(), ZkError> {
    let parent = &path[..path.rfind('/').unwrap_or(0)];
    let ephemeral: CreateOptions<'static> = CreateMode::Ephemeral.with_acls(acls);
    let persistent: CreateOptions<'static> = CreateMode::Persistent.with_acls(acls);
    for _ in 0..8 {
        match client.create(path, &[], &ephemeral).await {
            Ok(_) => return Ok(()),
            Err(ZkError::NoNode) => match client.mkdir(parent, &persistent).await {
                Ok(()) | Err(ZkError::NodeExists) => continue,
                Err(e) => return Err(e),
            },
            Err(ZkError::NodeExists) => {
                let stat = match client.check_stat(path).await? {
                    Some(stat) => stat,
                    None => continue,
                };
                if stat.ephemeral_owner == client.session_id().0 {
                    return Ok(());
                }
                tracing::info!(path = %path, owner = %format!("{:#x}", stat.ephemeral_owner),
                    "replacing a Dubbo registry node left by another session");
                match client.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(ZkError::NoNode) | Err(ZkError::BadVersion) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ZkError::UnexpectedError(format!(
        "{path} kept changing while it was being created"
    )))
}

async fn delete_own(client: &Client, path: &str) -> Result<(), ZkError> {
    match client.check_stat(path).await? {
        Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
            match client.delete(path, Some(stat.version)).await {
                Ok(()) | Err(ZkError::NoNode) => Ok(()),
                Err(e) => Err(e),
            }
        }
        _ => Ok(()),
    }
}

async fn wait_event(watcher: OneshotWatcher) -> WatchedEvent {
    watcher.changed().await
}

fn session_gone(e: &ZkError) -> bool {
    matches!(
        e,
        ZkError::SessionExpired
            | ZkError::ClientClosed
            | ZkError::AuthFailed
            | ZkError::SessionMoved
    )
}

// === impl Registries ===

/// One [`Registry`] per registry address, shared by every service of a
/// runtime (the runtime's `/pub` and `/sub` go through this).
#[derive(Default)]
pub struct Registries {
    map: Mutex<HashMap<String, Registry>>,
}

impl Registries {
    /// An empty set.
    pub fn new() -> Registries {
        Registries::default()
    }

    /// The registry for `cfg`'s address, connecting on first use. An
    /// address already connected with other credentials or another root is
    /// refused (one session per address).
    pub fn get_or_connect(&self, cfg: RegistryConfig) -> Result<Registry, RegistryError> {
        let key = cfg.key();
        let mut map = self.map.lock().unwrap();
        if let Some(r) = map.get(&key) {
            let have = r.config();
            if have.username != cfg.username || have.password != cfg.password {
                return Err(RegistryError::BadConfig {
                    field: "username",
                    reason: format!(
                        "registry {key} is already in use with other credentials (one session per address)"
                    ),
                });
            }
            if have.root != cfg.root {
                return Err(RegistryError::BadConfig {
                    field: "root",
                    reason: format!(
                        "registry {key} is already in use with root {} (one session per address)",
                        have.root
                    ),
                });
            }
            if !r.inner.closed.load(Ordering::Acquire) {
                return Ok(r.clone());
            }
        }
        let r = Registry::connect(cfg);
        map.insert(key, r.clone());
        Ok(r)
    }

    /// The registry for an address, if connected.
    pub fn get(&self, servers: &str) -> Option<Registry> {
        let key = servers
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",");
        self.map.lock().unwrap().get(&key).cloned()
    }

    /// Every registry connected so far.
    pub fn all(&self) -> Vec<Registry> {
        self.map.lock().unwrap().values().cloned().collect()
    }

    /// Closes every registry (their nodes are deleted).
    pub async fn close_all(&self) {
        let all: Vec<Registry> = self.map.lock().unwrap().drain().map(|(_, r)| r).collect();
        for r in all {
            r.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_url_has_dubbos_parameters() {
        let mut spec = ProviderSpec::new(
            "dev.weft.test.Greeter",
            &["slow", "greet", "greet"],
            "10.0.0.1",
            20880,
        );
        spec.params.insert("weft.app-id".into(), "greeter".into());
        let url = spec.to_url_at(1234).unwrap();
        let pid = std::process::id();
        assert_eq!(
            url.to_string(),
            format!("dubbo://10.0.0.1:20880/dev.weft.test.Greeter?anyhost=true&application=weft&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface=dev.weft.test.Greeter&methods=greet,slow&pid={pid}&prefer.serialization=hessian2&serialization=hessian2&side=provider&timestamp=1234&weft.app-id=greeter")
        );
        spec.group = "g".into();
        spec.version = "1.0".into();
        let url = spec.to_url_at(1).unwrap();
        assert_eq!((url.group(), url.version()), ("g", "1.0"));
    }

    type Change = Box<dyn Fn(&mut ProviderSpec)>;

    #[test]
    fn bad_specs_name_the_field() {
        let good = ProviderSpec::new("a.B", &["m"], "127.0.0.1", 1);
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.interface.clear()), "interface"),
            (Box::new(|s| s.interface = "a/b".into()), "interface"),
            (Box::new(|s| s.methods.clear()), "methods"),
            (Box::new(|s| s.methods = vec!["".into()]), "methods"),
            (Box::new(|s| s.methods = vec!["a,b".into()]), "methods"),
            (Box::new(|s| s.group = "a&b".into()), "group"),
            (Box::new(|s| s.version = "1 0".into()), "version"),
            (Box::new(|s| s.port = 0), "port"),
            (Box::new(|s| s.host = "".into()), "host"),
            (
                Box::new(|s| {
                    s.params.insert("side".into(), "x".into());
                }),
                "parameters",
            ),
            (
                Box::new(|s| {
                    s.params.insert("k".into(), "a&b".into());
                }),
                "parameters",
            ),
        ];
        for (change, field) in cases {
            let mut s = good.clone();
            change(&mut s);
            match s.validate() {
                Err(RegistryError::BadService { field: f, reason }) => {
                    assert_eq!(f, field, "{reason}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let c = ConsumerSpec::new("", "127.0.0.1");
        assert!(matches!(
            c.validate(),
            Err(RegistryError::BadService {
                field: "interface",
                ..
            })
        ));
    }

    #[test]
    fn config_checks() {
        assert!(RegistryConfig::new("127.0.0.1:2181, zk2").is_ok());
        for bad in ["", "h:0", "h:x", "h:1,,h:2", "h:1/chroot", "[::1:2"] {
            match RegistryConfig::new(bad) {
                Err(RegistryError::BadConfig { field: "addr", .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        let c = RegistryConfig::new("h:1").unwrap();
        assert!(c.clone().with_credentials("u", "").is_err());
        assert!(c.clone().with_credentials("", "p").is_err());
        assert!(c.clone().with_credentials("u:x", "p").is_err());
        assert_eq!(c.clone().with_credentials("", "").unwrap().username, None);
        assert_eq!(c.clone().with_root("/x/y/").unwrap().root, "/x/y");
        for bad in ["x", "/", "/a//b", "/a/../b"] {
            assert!(c.clone().with_root(bad).is_err(), "{bad}");
        }
        let dbg = format!("{:?}", c.with_credentials("u", "secret").unwrap());
        assert!(!dbg.contains("secret"), "{dbg}");
    }

    #[test]
    fn matching_rules() {
        let sub = |g: &str, v: Option<&str>| SubKey {
            interface: "a.B".into(),
            group: g.into(),
            version: v.map(Into::into),
        };
        assert!(sub("", None).covers("", "1.0"));
        assert!(!sub("", None).covers("g", ""));
        assert!(sub("*", Some("*")).covers("g", "2"));
        assert!(sub("a,b", None).covers("b", ""));
        assert!(sub("", Some("1.0")).covers("", "1.0"));
        assert!(!sub("", Some("1.0")).covers("", "2.0"));
        assert!(sub("", Some("")).covers("", "0.0.0"));
        let p = |url: &str| Provider {
            url: DubboUrl::parse(url).unwrap(),
            node: String::new(),
        };
        let key = |g: &str, v: &str| ServiceKey {
            interface: "a.B".into(),
            group: g.into(),
            version: v.into(),
        };
        assert!(p("dubbo://h:1/a.B?interface=a.B").serves(&key("", "")));
        assert!(p("dubbo://h:1/a.B?interface=a.B&version=0.0.0").serves(&key("", "")));
        assert!(!p("dubbo://h:1/a.B?interface=a.B&group=g").serves(&key("", "")));
        assert!(p("dubbo://h:1/a.B?group=g&version=1").serves(&key("g", "1")));
        assert!(!p("tri://h:1/a.B").serves(&key("", "")));
        assert!(!p("dubbo://h:1/a.B?enabled=false").serves(&key("", "")));
        assert!(!p("dubbo://h:1/a.C").serves(&key("", "")));
    }
}
