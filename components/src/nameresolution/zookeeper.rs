//! `nameresolution.zookeeper`: instances registered as ephemeral znodes in
//! Apache ZooKeeper, resolved from a cache kept fresh by watches.
//!
//! # Metadata
//!
//! * `servers` (required): the ensemble, `host:port` entries separated by
//!   commas (`127.0.0.1:2181,10.0.0.2:2181`; the port defaults to 2181). Use
//!   `root` rather than a chroot suffix.
//! * `root` (optional, default `/weft`): the znode under which instances
//!   are registered.
//! * `sessionTimeout` (optional, default `10s`): the session timeout asked
//!   of ZooKeeper (the server clamps it to its `minSessionTimeout` ..
//!   `maxSessionTimeout`). A runtime that dies without closing disappears
//!   from other runtimes' answers about this long after its death.
//! * `requestTimeout` (optional, default `5s`): how long `register()` and
//!   the first `resolve()` of an app wait for ZooKeeper before reporting
//!   [`ResolveError::Unavailable`].
//!
//! # Layout
//!
//! An instance is the ephemeral znode
//! `<root>/<namespace>/<app-id>/<instance-id>` whose data is its address
//! (`127.0.0.1:50002`, UTF-8). Missing parents are created with an open
//! ACL: `root` as a persistent node, the namespace and app levels as
//! container nodes, which ZooKeeper deletes by itself once their last
//! child is gone (so departed apps and namespaces leave nothing behind).
//! Instance ids must be unique among live
//! runtimes: a node with this instance's path owned by another session (a
//! previous, expired session of this runtime, or a stale address) is
//! replaced.
//!
//! # Sessions
//!
//! One session per resolver, opened in the background from the moment the
//! resolver is built, so a runtime starts even while ZooKeeper is down
//! (ZooKeeper 3.6 or later is needed: multi-read, container nodes); until the
//! session exists `register()` and first lookups fail after
//! `requestTimeout` with [`ResolveError::Unavailable`], and registrations
//! that timed out keep being retried in the background. The session's state
//! is followed:
//!
//! * connection lost: the client reconnects by itself within the session
//!   timeout; the ephemeral node and the watches survive, and cached
//!   instances are served meanwhile;
//! * session expired (or closed, or the client gave up reconnecting): a new
//!   session is opened (retrying with backoff up to 2 s between attempts),
//!   every registration is created again, and every cached app is read
//!   again and its watch re-armed. Cached instances are served meanwhile,
//!   and an app that the new session lists with no instance keeps its last
//!   known ones for twice the session timeout (its runtimes are writing
//!   their nodes again after the same expiry) unless nodes appear sooner.
//!
//! # Resolution
//!
//! The first lookup of an app lists the children of its node and reads
//! their data (one multi-read request), leaving a children watch on the
//! node; an app whose node does not exist yet gets an existence watch
//! instead, so its first instance is noticed without polling. Every watch
//! event re-reads the app and re-arms the watch. Lookups are answered from
//! this cache only. At most 4096 apps are cached; past that, apps without
//! instances are dropped (and read again on their next lookup).
//!
//! Each registration has its own task that creates the node, then watches
//! it and creates it again if it disappears while the session lives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use zookeeper_client::{
    Acls, Client, CreateMode, CreateOptions, Error as ZkError, EventType, MultiReadResult,
    OneshotWatcher, SessionState, WatchedEvent,
};

use super::{
    check_lookup, check_registration, normalize, resolver_label, NameResolver, Registration,
    ResolveError,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// Default znode under which instances are registered.
pub const DEFAULT_ROOT: &str = "/weft";
/// Default session timeout.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on waiting for ZooKeeper in `register()` / first lookups.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Most apps kept in the cache.
const MAX_CACHED_APPS: usize = 4096;
/// First and longest pause between failed attempts (connect, read, create).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Typed metadata of the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZookeeperConfig {
    /// Connect string, `host:port[,host:port…]`.
    pub servers: String,
    /// Root znode without a trailing `/` (empty for the tree's root).
    pub root: String,
    /// Session timeout asked of the server.
    pub session_timeout: Duration,
    /// Bound on waiting for ZooKeeper in `register()` / first lookups.
    pub request_timeout: Duration,
}

impl ZookeeperConfig {
    /// Reads and checks `servers`, `root`, `sessionTimeout`, `requestTimeout`.
    pub fn from_metadata(md: &Metadata) -> Result<Self, ComponentError> {
        let servers = md.required("servers")?.trim().to_string();
        for s in servers.split(',') {
            let s = s.trim();
            let bad = |why: &str| md.invalid("servers", format!("entry '{s}' {why}"));
            if s.is_empty() {
                return Err(md.invalid("servers", format!("'{servers}' has an empty entry")));
            }
            if s.contains('/') {
                return Err(bad("has a path (use the 'root' field instead of a chroot)"));
            }
            let (host, port) = match s.strip_prefix('[') {
                Some(rest) => match rest.split_once(']') {
                    Some((h, p)) => (h, p.strip_prefix(':')),
                    None => return Err(bad("has no closing ']'")),
                },
                None => match s.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (s, None),
                },
            };
            if host.is_empty() {
                return Err(bad("has no host"));
            }
            if let Some(p) = port {
                if p.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(bad("has an invalid port (expected host:port)"));
                }
            }
        }
        let root = match md.get("root") {
            None => DEFAULT_ROOT.to_string(),
            Some(r) => {
                let r = r.trim();
                if !r.starts_with('/') {
                    return Err(md.invalid("root", format!("'{r}' must start with '/'")));
                }
                let trimmed = r.trim_end_matches('/');
                if trimmed
                    .split('/')
                    .skip(1)
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                {
                    return Err(md.invalid(
                        "root",
                        format!("'{r}' has an empty, '.' or '..' path segment"),
                    ));
                }
                trimmed.to_string()
            }
        };
        let session_timeout = md
            .duration("sessionTimeout")?
            .unwrap_or(DEFAULT_SESSION_TIMEOUT);
        if session_timeout < Duration::from_millis(100) {
            return Err(md.invalid("sessionTimeout", "must be at least 100ms"));
        }
        let request_timeout = md
            .duration("requestTimeout")?
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if request_timeout.is_zero() {
            return Err(md.invalid("requestTimeout", "must be greater than zero"));
        }
        Ok(Self {
            servers,
            root,
            session_timeout,
            request_timeout,
        })
    }
}

/// `nameresolution.zookeeper`; see the module docs.
pub struct ZookeeperResolver {
    inner: Arc<Inner>,
}

/// The current session, as published by the supervisor task.
#[derive(Clone)]
enum Slot {
    /// No session yet, or opening a new one after the last ended.
    Connecting,
    /// A live session; `generation` counts sessions opened so far.
    Up { client: Client, generation: u64 },
    /// The resolver was closed.
    Closed,
}

/// One app's cached answer.
#[derive(Clone)]
enum View {
    /// First read still running.
    Loading,
    /// The last answer read (empty: no instance).
    Known(Arc<[SocketAddr]>),
    /// The first read could not be done; retried in the background.
    Failed(String),
}

struct AppEntry {
    view: RwLock<View>,
    /// Flips to true when the first answer (or first failure) is in.
    settled: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct RegEntry {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Inner {
    label: String,
    component: String,
    cfg: ZookeeperConfig,
    slot: watch::Sender<Slot>,
    last_error: Mutex<String>,
    /// path → registration keeper.
    regs: Mutex<HashMap<String, RegEntry>>,
    /// namespace → app id → entry.
    apps: RwLock<HashMap<String, HashMap<String, Arc<AppEntry>>>>,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl ZookeeperResolver {
    /// Builds the resolver and starts opening its session in the
    /// background. Needs a Tokio runtime.
    pub fn from_metadata(md: &Metadata, _ctx: &InitContext) -> Result<Self, ComponentError> {
        let cfg = ZookeeperConfig::from_metadata(md)?;
        Ok(Self::start(
            resolver_label(md),
            md.component().to_string(),
            cfg,
        ))
    }

    /// Builds the resolver from a typed configuration. Needs a Tokio runtime.
    pub fn new(component: &str, cfg: ZookeeperConfig) -> Self {
        let md = Metadata::new(component, "nameresolution.zookeeper", []);
        Self::start(resolver_label(&md), component.to_string(), cfg)
    }

    fn start(label: String, component: String, cfg: ZookeeperConfig) -> Self {
        let (slot, _) = watch::channel(Slot::Connecting);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            label,
            component,
            cfg,
            slot,
            last_error: Mutex::new("no session established yet".to_string()),
            regs: Mutex::new(HashMap::new()),
            apps: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
            shutdown,
            supervisor: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(inner.clone()));
        *inner.supervisor.lock().unwrap() = Some(task);
        tracing::debug!(component = %inner.component, servers = %inner.cfg.servers,
            root = %inner.cfg.root, "ZooKeeper name resolution started");
        Self { inner }
    }

    /// The current session's id and password (to take the session over in
    /// tests that force its expiry).
    #[cfg(test)]
    pub(crate) fn session(&self) -> Option<zookeeper_client::SessionInfo> {
        match &*self.inner.slot.borrow() {
            Slot::Up { client, .. } => Some(client.session().clone()),
            _ => None,
        }
    }
}

impl Drop for ZookeeperResolver {
    fn drop(&mut self) {
        // Stops every task; the last client handle dropped closes the
        // session, which removes its ephemeral nodes.
        self.inner.begin_shutdown();
    }
}

#[async_trait]
impl NameResolver for ZookeeperResolver {
    async fn register(&self, me: &Registration) -> Result<(), ResolveError> {
        let inner = &self.inner;
        check_registration(&inner.label, me)?;
        if inner.closed.load(Ordering::Acquire) {
            return Err(inner.closed_error());
        }
        let path = inner.instance_path(me);
        let data = me.address.to_string().into_bytes();
        let (first_tx, first_rx) = oneshot::channel();
        let (stop, stop_rx) = watch::channel(false);
        {
            let mut regs = inner.regs.lock().unwrap();
            if let Some(old) = regs.remove(&path) {
                old.stop.send_replace(true);
                old.task.abort();
            }
            let task = tokio::spawn(keep_registration(
                inner.clone(),
                me.clone(),
                path.clone(),
                data,
                stop_rx,
                first_tx,
            ));
            regs.insert(path.clone(), RegEntry { stop, task });
        }
        let reg_error = |reason: String| ResolveError::Registration {
            resolver: inner.label.clone(),
            app_id: me.app_id.clone(),
            namespace: me.namespace.clone(),
            instance_id: me.instance_id.clone(),
            reason,
        };
        match tokio::time::timeout(inner.cfg.request_timeout, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(reg_error(format!("{reason} (retrying in the background)"))),
            Ok(Err(_)) => Err(inner.closed_error()),
            Err(_) => Err(ResolveError::Unavailable {
                resolver: inner.label.clone(),
                reason: format!(
                    "instance '{}' of app '{}' not registered within {:?}: {} (retrying in the background)",
                    me.instance_id,
                    me.app_id,
                    inner.cfg.request_timeout,
                    inner.describe_trouble()
                ),
            }),
        }
    }

    async fn resolve(
        &self,
        app_id: &str,
        namespace: &str,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(inner.closed_error());
        }
        let entry = match inner.cached_entry(app_id, namespace) {
            Some(e) => e,
            None => {
                check_lookup(&inner.label, app_id, namespace)?;
                inner.track(app_id, namespace)
            }
        };
        let view = entry.view.read().unwrap().clone();
        match view {
            View::Known(addrs) => super::answer(&inner.label, app_id, namespace, &addrs),
            View::Failed(reason) => Err(ResolveError::Unavailable {
                resolver: inner.label.clone(),
                reason,
            }),
            View::Loading => {
                let mut settled = entry.settled.subscribe();
                let wait =
                    tokio::time::timeout(inner.cfg.request_timeout, settled.wait_for(|s| *s)).await;
                drop(wait);
                let mut view = entry.view.write().unwrap();
                match &*view {
                    View::Known(addrs) => super::answer(&inner.label, app_id, namespace, addrs),
                    View::Failed(reason) => Err(ResolveError::Unavailable {
                        resolver: inner.label.clone(),
                        reason: reason.clone(),
                    }),
                    View::Loading => {
                        // Later lookups fail fast until the background read
                        // succeeds.
                        let reason = format!(
                            "no answer for app '{app_id}' in namespace '{namespace}' within {:?}: {}",
                            inner.cfg.request_timeout,
                            inner.describe_trouble()
                        );
                        *view = View::Failed(reason.clone());
                        entry.settled.send_replace(true);
                        Err(ResolveError::Unavailable {
                            resolver: inner.label.clone(),
                            reason,
                        })
                    }
                }
            }
        }
    }

    async fn close(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Stop the keepers first so that nothing re-creates a node, then
        // delete the nodes while the session is still open.
        let regs: Vec<(String, RegEntry)> = inner.regs.lock().unwrap().drain().collect();
        for (_, reg) in &regs {
            reg.stop.send_replace(true);
        }
        for (_, reg) in &regs {
            reg.task.abort();
        }
        let client = match &*inner.slot.borrow() {
            Slot::Up { client, .. } => Some(client.clone()),
            _ => None,
        };
        if let Some(client) = client {
            for (path, _) in &regs {
                let deleted =
                    tokio::time::timeout(inner.cfg.request_timeout, delete_own(&client, path))
                        .await;
                match deleted {
                    Ok(Ok(())) => {
                        tracing::info!(component = %inner.component, path = %path, "unregistered")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(component = %inner.component, path = %path, error = %e,
                        "could not delete the registration node; it goes when the session closes")
                    }
                    Err(_) => tracing::warn!(component = %inner.component, path = %path,
                        "timed out deleting the registration node; it goes when the session closes"),
                }
            }
        }
        inner.begin_shutdown();
        let supervisor = inner.supervisor.lock().unwrap().take();
        if let Some(task) = supervisor {
            let _ = tokio::time::timeout(inner.cfg.request_timeout, task).await;
        }
    }
}

// === impl Inner ===

impl Inner {
    fn closed_error(&self) -> ResolveError {
        ResolveError::Closed {
            resolver: self.label.clone(),
        }
    }

    fn app_path(&self, namespace: &str, app_id: &str) -> String {
        format!("{}/{namespace}/{app_id}", self.cfg.root)
    }

    fn instance_path(&self, reg: &Registration) -> String {
        format!(
            "{}/{}",
            self.app_path(&reg.namespace, &reg.app_id),
            reg.instance_id
        )
    }

    /// Why ZooKeeper is not answering, for error messages.
    fn describe_trouble(&self) -> String {
        let last = self.last_error.lock().unwrap().clone();
        let state = match &*self.slot.borrow() {
            Slot::Connecting => "no ZooKeeper session",
            Slot::Up { .. } => "ZooKeeper session open but not answering",
            Slot::Closed => "closed",
        };
        if last.is_empty() {
            format!("{state} (servers {})", self.cfg.servers)
        } else {
            format!("{state} (servers {}): {last}", self.cfg.servers)
        }
    }

    fn set_last_error(&self, e: String) {
        *self.last_error.lock().unwrap() = e;
    }

    fn cached_entry(&self, app_id: &str, namespace: &str) -> Option<Arc<AppEntry>> {
        self.apps
            .read()
            .unwrap()
            .get(namespace)?
            .get(app_id)
            .cloned()
    }

    /// Starts tracking an app (or returns its entry if another lookup just
    /// did).
    fn track(self: &Arc<Self>, app_id: &str, namespace: &str) -> Arc<AppEntry> {
        let mut apps = self.apps.write().unwrap();
        if let Some(e) = apps.get(namespace).and_then(|a| a.get(app_id)) {
            return e.clone();
        }
        let count: usize = apps.values().map(HashMap::len).sum();
        if count >= MAX_CACHED_APPS {
            for by_app in apps.values_mut() {
                by_app.retain(|_, e| {
                    let keep = matches!(&*e.view.read().unwrap(), View::Known(a) if !a.is_empty());
                    if !keep {
                        if let Some(t) = e.task.lock().unwrap().take() {
                            t.abort();
                        }
                    }
                    keep
                });
            }
            apps.retain(|_, a| !a.is_empty());
        }
        let (settled, _) = watch::channel(false);
        let entry = Arc::new(AppEntry {
            view: RwLock::new(View::Loading),
            settled,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(watch_app(
            self.clone(),
            entry.clone(),
            namespace.to_string(),
            app_id.to_string(),
        ));
        *entry.task.lock().unwrap() = Some(task);
        apps.entry(namespace.to_string())
            .or_default()
            .insert(app_id.to_string(), entry.clone());
        entry
    }

    /// Marks the resolver closed and stops every background task.
    fn begin_shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
        for (_, reg) in self.regs.lock().unwrap().drain() {
            reg.stop.send_replace(true);
            reg.task.abort();
        }
        let apps = std::mem::take(&mut *self.apps.write().unwrap());
        for entry in apps.into_values().flat_map(HashMap::into_values) {
            if let Some(t) = entry.task.lock().unwrap().take() {
                t.abort();
            }
        }
    }

    /// Waits for a session of generation `min_generation` or later; `None`
    /// once the resolver is closed.
    async fn session(&self, min_generation: u64) -> Option<(Client, u64)> {
        let mut rx = self.slot.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Slot::Up { client, generation } if *generation >= min_generation => {
                    return Some((client.clone(), *generation))
                }
                Slot::Closed => return None,
                _ => {}
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                _ = shutdown.wait_for(|s| *s) => return None,
            }
        }
    }

    /// Resolves when a session newer than `generation` is published (or
    /// the resolver closes).
    async fn session_replaced(&self, generation: u64) {
        let mut rx = self.slot.subscribe();
        let _ = rx
            .wait_for(|s| match s {
                Slot::Up { generation: g, .. } => *g > generation,
                Slot::Closed => true,
                Slot::Connecting => false,
            })
            .await;
    }

    async fn shut_down_signal(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

// === background tasks ===

/// Opens sessions, one after the other, for the resolver's whole life.
async fn supervise(inner: Arc<Inner>) {
    let mut generation = 0u64;
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    // Warn on the first failure, then every 30th: the rest go to debug.
    let mut next_warning = 0u32;
    let connect_bound = inner.cfg.session_timeout + Duration::from_secs(2);
    'sessions: loop {
        if *inner.shutdown.borrow() {
            break;
        }
        let attempt = async {
            let mut connector = Client::connector();
            connector.session_timeout(inner.cfg.session_timeout);
            connector.fail_eagerly();
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
                if failures == 1 || failures >= next_warning {
                    next_warning = failures + 30;
                    tracing::warn!(component = %inner.component, attempts = failures, error = %msg,
                        "ZooKeeper unreachable; retrying (cached instances are still served)");
                } else {
                    tracing::debug!(component = %inner.component, attempts = failures, error = %msg, "ZooKeeper unreachable");
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
        tracing::info!(component = %inner.component, session = %client.session_id(),
            timeout = ?client.session_timeout(), servers = %inner.cfg.servers, "ZooKeeper session established");
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
                    tracing::warn!(component = %inner.component, session = %client.session_id(),
                        "connection to ZooKeeper lost; reconnecting (cached instances are still served)");
                }
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    inner.set_last_error(String::new());
                    tracing::info!(component = %inner.component, session = %client.session_id(), "reconnected to ZooKeeper");
                }
                state => {
                    inner.set_last_error(format!("session {}", state.to_string().to_lowercase()));
                    tracing::warn!(component = %inner.component, session = %client.session_id(), %state,
                        "ZooKeeper session ended; opening a new one (registrations and watches are restored)");
                    break;
                }
            }
        }
        inner.slot.send_replace(Slot::Connecting);
    }
    inner.slot.send_replace(Slot::Closed);
}

/// Keeps one app's cache entry fresh.
async fn watch_app(inner: Arc<Inner>, entry: Arc<AppEntry>, namespace: String, app_id: String) {
    let path = inner.app_path(&namespace, &app_id);
    let mut min_generation = 0;
    let mut backoff = MIN_BACKOFF;
    // The session of the last read, and until when an empty answer in a
    // new session is not believed yet.
    let mut read_in: Option<u64> = None;
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        let Some((client, generation)) = inner.session(min_generation).await else {
            return;
        };
        match read_app(&client, &inner.component, &path).await {
            Ok((addrs, watcher)) => {
                backoff = MIN_BACKOFF;
                if read_in.is_some_and(|g| g != generation) {
                    // A new session after an expiry (or a server that lost
                    // its data): the app's live instances are writing their
                    // nodes again, each as soon as its own session is back.
                    // Until then an empty list means "not yet", not "gone".
                    grace_until = Some(tokio::time::Instant::now() + client.session_timeout() * 2);
                }
                read_in = Some(generation);
                let holding = {
                    let mut view = entry.view.write().unwrap();
                    let holding = addrs.is_empty()
                        && grace_until.is_some_and(|t| tokio::time::Instant::now() < t)
                        && matches!(&*view, View::Known(old) if !old.is_empty());
                    let changed =
                        !holding && !matches!(&*view, View::Known(old) if old[..] == addrs[..]);
                    if holding {
                        tracing::debug!(component = %inner.component, app_id = %app_id,
                            namespace = %namespace, "no instance listed in the new session yet; serving the last known ones while they register again");
                    }
                    if changed {
                        tracing::debug!(component = %inner.component, app_id = %app_id,
                            namespace = %namespace, instances = ?addrs, "instances changed");
                        *view = View::Known(addrs.into());
                    }
                    holding
                };
                entry.settled.send_replace(true);
                let regrace = async {
                    match grace_until {
                        Some(t) if holding => tokio::time::sleep_until(t).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ev = wait_event(watcher) => {
                        if ev.event_type == EventType::Session {
                            // Expired or closed: wait for the next session.
                            min_generation = generation + 1;
                        }
                    }
                    // Grace over with still nothing listed: read again and
                    // believe it.
                    _ = regrace => {}
                    _ = inner.session_replaced(generation) => min_generation = generation + 1,
                    _ = inner.shut_down_signal() => return,
                }
            }
            Err(e) => {
                if session_gone(&e) {
                    min_generation = generation + 1;
                } else {
                    tracing::debug!(component = %inner.component, path = %path, error = %e,
                        "cannot read app instances; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = inner.shut_down_signal() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Reads an app's instances and leaves a watch: on the children when the
/// app node exists, on its creation otherwise.
async fn read_app(
    client: &Client,
    component: &str,
    path: &str,
) -> Result<(Vec<SocketAddr>, OneshotWatcher), ZkError> {
    loop {
        match client.get_and_watch_children(path).await {
            Ok((children, _, watcher)) => {
                let addrs = read_addresses(client, component, path, &children).await?;
                return Ok((addrs, watcher));
            }
            Err(ZkError::NoNode) => match client.check_and_watch_stat(path).await {
                Ok((None, watcher)) => return Ok((Vec::new(), watcher)),
                // Created in between: list it.
                Ok((Some(_), _)) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// Reads the data (addresses) of an app's instance nodes in one request.
async fn read_addresses(
    client: &Client,
    component: &str,
    path: &str,
    children: &[String],
) -> Result<Vec<SocketAddr>, ZkError> {
    if children.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = client.new_multi_reader();
    for child in children {
        reader.add_get_data(&format!("{path}/{child}"))?;
    }
    let results = reader.commit().await?;
    let mut addrs = Vec::with_capacity(children.len());
    for (child, result) in children.iter().zip(results) {
        match result {
            MultiReadResult::Data { data, .. } => {
                match std::str::from_utf8(&data)
                    .ok()
                    .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                {
                    Some(a) => addrs.push(a),
                    None => {
                        tracing::warn!(component = %component, node = %format!("{path}/{child}"),
                        data = %String::from_utf8_lossy(&data), "instance node's data is not an address (ip:port); ignored")
                    }
                }
            }
            // Deleted since the listing: the watch brings the next state.
            MultiReadResult::Error {
                err: ZkError::NoNode,
            } => {}
            MultiReadResult::Error { err } => return Err(err),
            _ => {}
        }
    }
    Ok(normalize(addrs))
}

/// Creates one registration's node and keeps it there.
async fn keep_registration(
    inner: Arc<Inner>,
    reg: Registration,
    path: String,
    data: Vec<u8>,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut min_generation = 0;
    let mut backoff = MIN_BACKOFF;
    loop {
        let session = tokio::select! {
            s = inner.session(min_generation) => s,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some((client, generation)) = session else {
            return;
        };
        let outcome = tokio::select! {
            r = ensure_node(&client, &inner.component, &inner.cfg.root, &path, &data) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let error = match outcome {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                tracing::info!(component = %inner.component, app_id = %reg.app_id, namespace = %reg.namespace,
                    instance_id = %reg.instance_id, address = %reg.address, path = %path,
                    session = %client.session_id(), "registered");
                // Watch the node; re-create it if it goes while the session lives.
                match client.check_and_watch_stat(&path).await {
                    Ok((Some(stat), watcher)) if stat.ephemeral_owner == client.session_id().0 => {
                        let mut pause = false;
                        tokio::select! {
                            ev = wait_event(watcher) => {
                                if ev.event_type == EventType::Session {
                                    min_generation = generation + 1;
                                } else {
                                    tracing::warn!(component = %inner.component, path = %path, event = %ev.event_type,
                                        "registration node changed from outside; restoring it");
                                    pause = true;
                                }
                            }
                            _ = inner.session_replaced(generation) => min_generation = generation + 1,
                            _ = stop.wait_for(|s| *s) => return,
                        }
                        if pause {
                            // Do not fight another holder of the same path at full speed.
                            tokio::select! {
                                _ = tokio::time::sleep(MIN_BACKOFF * 2) => {}
                                _ = stop.wait_for(|s| *s) => return,
                            }
                        }
                        continue;
                    }
                    // Gone or replaced right away: ensure it again, after a
                    // pause in case another holder uses the same path.
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
            tracing::warn!(component = %inner.component, path = %path, error = %error,
                "cannot create the registration node; retrying");
            if let Some(tx) = first.take() {
                let _ = tx.send(Err(format!("cannot create znode {path}: {error}")));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

const EPHEMERAL: CreateOptions<'static> = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
const PERSISTENT: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
const CONTAINER: CreateOptions<'static> = CreateMode::Container.with_acls(Acls::anyone_all());

/// Makes `path` an ephemeral node of this session holding `data`: creates
/// missing parents (`root` persistent, the levels below it containers),
/// replaces a node left by another session (or holding other data).
async fn ensure_node(
    client: &Client,
    component: &str,
    root: &str,
    path: &str,
    data: &[u8],
) -> Result<(), ZkError> {
    let parent = &path[..path.rfind('/').unwrap_or(0)];
    for _ in 0..8 {
        match client.create(path, data, &EPHEMERAL).await {
            Ok(_) => return Ok(()),
            Err(ZkError::NoNode) => {
                if !root.is_empty() {
                    match client.mkdir(root, &PERSISTENT).await {
                        Ok(()) | Err(ZkError::NodeExists) => {}
                        Err(e) => return Err(e),
                    }
                }
                match client.mkdir(parent, &CONTAINER).await {
                    Ok(()) | Err(ZkError::NodeExists) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(ZkError::NodeExists) => {
                let (existing, stat) = match client.get_data(path).await {
                    Ok(found) => found,
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(e),
                };
                let mine = stat.ephemeral_owner == client.session_id().0;
                if mine && existing == data {
                    return Ok(());
                }
                if !mine {
                    tracing::info!(component = %component, path = %path,
                        owner = %format!("{:#x}", stat.ephemeral_owner),
                        "replacing a registration node left by another session");
                }
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

/// Deletes `path` if this session owns it.
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

/// Waits for a one-shot watch to fire. A watcher that ends without an
/// event (its session task went away) counts as a session event.
async fn wait_event(watcher: OneshotWatcher) -> WatchedEvent {
    match tokio::spawn(watcher.changed()).await {
        Ok(ev) => ev,
        Err(_) => WatchedEvent::new_session(SessionState::Closed),
    }
}

/// Errors after which only a new session helps.
fn session_gone(e: &ZkError) -> bool {
    matches!(
        e,
        ZkError::SessionExpired
            | ZkError::ClientClosed
            | ZkError::AuthFailed
            | ZkError::SessionMoved
    )
}

/// `nameresolution.zookeeper` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "nameresolution.zookeeper",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::NameResolution(Arc::new(
                ZookeeperResolver::from_metadata(md, ctx)?,
            )))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn md(fields: &[(&str, &str)]) -> Metadata {
        Metadata::new(
            "registry",
            "nameresolution.zookeeper",
            fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn config_defaults_and_errors() {
        let cfg =
            ZookeeperConfig::from_metadata(&md(&[("servers", "127.0.0.1:2181, zk2")])).unwrap();
        assert_eq!(cfg.root, "/weft");
        assert_eq!(cfg.session_timeout, DEFAULT_SESSION_TIMEOUT);
        assert_eq!(cfg.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let cfg = ZookeeperConfig::from_metadata(&md(&[
            ("servers", "[::1]:2181"),
            ("root", "/a/b/"),
            ("sessionTimeout", "4s"),
        ]))
        .unwrap();
        assert_eq!(cfg.root, "/a/b");
        assert_eq!(cfg.session_timeout, Duration::from_secs(4));
        let cfg =
            ZookeeperConfig::from_metadata(&md(&[("servers", "h:1"), ("root", "/")])).unwrap();
        assert_eq!(cfg.root, "");

        for (fields, field) in [
            (vec![], "servers"),
            (vec![("servers", "h:notaport")], "servers"),
            (vec![("servers", "h:1,,h:2")], "servers"),
            (vec![("servers", "h:1/chroot")], "servers"),
            (vec![("servers", "h:1"), ("root", "weft")], "root"),
            (vec![("servers", "h:1"), ("root", "/a//b")], "root"),
            (
                vec![("servers", "h:1"), ("sessionTimeout", "soon")],
                "sessionTimeout",
            ),
            (
                vec![("servers", "h:1"), ("requestTimeout", "0s")],
                "requestTimeout",
            ),
        ] {
            let err = ZookeeperConfig::from_metadata(&md(&fields))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("'{field}'")), "{fields:?}: {err}");
            assert!(err.contains("'registry'"), "{fields:?}: {err}");
        }
    }
}
