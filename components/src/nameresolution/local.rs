//! `nameresolution.local`: runtimes on one machine find each other through
//! a shared registry directory. This is the zero-configuration default.
//!
//! # Metadata
//!
//! * `dir` (optional): the registry directory. Defaults to the environment
//!   variable `WEFT_LOCAL_REGISTRY_DIR`, else `$XDG_RUNTIME_DIR/weft/registry`,
//!   else `/tmp/weft-registry-<uid>`. Every runtime that should see the
//!   others must use the same directory. The default `/tmp` directory must
//!   be owned by the current user (a directory planted by another user is
//!   refused).
//!
//! # How it works
//!
//! Each registered instance is one file,
//! `<dir>/<namespace>/<app-id>/<instance-id>`, whose first line is the
//! instance's address (`127.0.0.1:50002`); a second line `pid=<pid>` is for
//! people and is ignored. Directories are created with mode 0700 and files
//! with 0600: the registry is shared by one user's runtimes.
//!
//! The registering runtime writes the file under a temporary name (starting
//! with `.`), takes an exclusive `flock` on it and renames it into place, so
//! a reader never sees a half-written or unlocked entry. It keeps the file
//! open and the lock held for as long as the registration lives. `close()`
//! (or dropping the resolver) deletes the file. When a runtime dies without
//! doing so (`kill -9`, a crash) the kernel releases its lock, and the file
//! is **stale**: a reader finds it by trying a non-blocking shared lock. A
//! lock it can take means no live holder, so the entry is ignored and
//! removed. Liveness therefore needs no heartbeats, no clocks and no
//! cleanup daemon, and a killed runtime disappears as soon as the next scan.
//!
//! `resolve()` answers from an in-memory cache. The first lookup of an app
//! reads its directory; from then on the app stays in the cache, which a
//! background task refreshes when `inotify` (through `notify`) reports a
//! change under the registry directory — file creation, removal, rename, or
//! the close of a written file, which is also what a dying holder produces
//! — and, as a fallback for missed events, every 500 ms. Each refresh
//! re-reads the directories of the apps in the cache. The task also checks
//! that this resolver's own entries still exist and rewrites any that were
//! deleted from outside (for example by a `/tmp` cleaner).
//!
//! At most 4096 apps are cached; past that, apps without instances are
//! dropped from the cache (they are read again on their next lookup).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{watch, Notify};

use super::{
    check_lookup, check_registration, normalize, resolver_label, NameResolver, Registration,
    ResolveError,
};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// Environment variable naming the default registry directory.
pub const REGISTRY_DIR_ENV: &str = "WEFT_LOCAL_REGISTRY_DIR";
/// Fallback refresh interval when no file-system event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Quiet time after a file-system event before the refresh.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Most apps kept in the cache.
const MAX_CACHED_APPS: usize = 4096;
/// Largest registry file read (an address needs far less).
const MAX_FILE_LEN: u64 = 4096;
/// A temporary file left behind by a writer that died before renaming it
/// is removed once it is this old and unlocked.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// The registry directory used when metadata sets none: `WEFT_LOCAL_REGISTRY_DIR`,
/// else `$XDG_RUNTIME_DIR/weft/registry`, else `/tmp/weft-registry-<uid>`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(REGISTRY_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("weft").join("registry");
    }
    tmp_fallback_dir()
}

fn tmp_fallback_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/weft-registry-{}", current_uid()))
}

/// The user id this process runs as.
pub(crate) fn current_uid() -> u32 {
    // /proc/self belongs to the process's (effective) user.
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// `nameresolution.local`; see the module docs.
pub struct LocalResolver {
    inner: Arc<Inner>,
}

/// One of this resolver's registrations: the open, locked file.
struct OwnEntry {
    reg: Registration,
    /// Held open for the lock; closing it releases the lock.
    _file: File,
    dev: u64,
    ino: u64,
}

/// namespace → app id → sorted addresses (empty: no instance).
type Cache = HashMap<String, HashMap<String, Arc<[SocketAddr]>>>;

struct Inner {
    label: String,
    component: String,
    dir: PathBuf,
    own: Mutex<HashMap<PathBuf, OwnEntry>>,
    cache: RwLock<Cache>,
    closed: AtomicBool,
    wake: Notify,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl LocalResolver {
    /// Builds the resolver from metadata (`dir`), creating the registry
    /// directory and starting the refresh task. Needs a Tokio runtime.
    pub fn from_metadata(md: &Metadata, _ctx: &InitContext) -> Result<Self, ComponentError> {
        let (dir, explicit) = match md.get("dir") {
            Some(d) => (PathBuf::from(d.trim()), true),
            None => (default_dir(), false),
        };
        let check_owner = !explicit && dir == tmp_fallback_dir();
        prepare_dir(&dir, check_owner).map_err(|reason| {
            if explicit {
                md.invalid("dir", reason)
            } else {
                md.init_error(format!(
                    "default registry directory (set metadata field 'dir' or {REGISTRY_DIR_ENV} to use another): {reason}"
                ))
            }
        })?;
        Ok(Self::start(
            resolver_label(md),
            md.component().to_string(),
            dir,
        ))
    }

    /// Builds a resolver on `dir` (created if missing). Needs a Tokio runtime.
    pub fn new(component: &str, dir: impl Into<PathBuf>) -> Result<Self, ComponentError> {
        let md = Metadata::new(component, "nameresolution.local", []);
        let dir = dir.into();
        prepare_dir(&dir, false).map_err(|reason| md.invalid("dir", reason))?;
        Ok(Self::start(resolver_label(&md), component.to_string(), dir))
    }

    fn start(label: String, component: String, dir: PathBuf) -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            label,
            component,
            dir,
            own: Mutex::new(HashMap::new()),
            cache: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            shutdown,
            task: Mutex::new(None),
            watcher: Mutex::new(None),
        });
        let watcher = start_watcher(&inner);
        *inner.watcher.lock().unwrap() = watcher;
        let task = tokio::spawn(refresh_loop(inner.clone(), shutdown_rx));
        *inner.task.lock().unwrap() = Some(task);
        tracing::debug!(component = %inner.component, dir = %inner.dir.display(), "local name resolution started");
        Self { inner }
    }

    /// The registry directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for LocalResolver {
    fn drop(&mut self) {
        self.inner.shut_down();
    }
}

#[async_trait]
impl NameResolver for LocalResolver {
    async fn register(&self, me: &Registration) -> Result<(), ResolveError> {
        let inner = &self.inner;
        check_registration(&inner.label, me)?;
        if inner.closed.load(Ordering::Acquire) {
            return Err(inner.closed_error());
        }
        let mut own = inner.own.lock().unwrap();
        let path = inner.entry_path(me);
        let entry = write_entry(&path, me).map_err(|e| ResolveError::Registration {
            resolver: inner.label.clone(),
            app_id: me.app_id.clone(),
            namespace: me.namespace.clone(),
            instance_id: me.instance_id.clone(),
            reason: format!("cannot write {}: {e}", path.display()),
        })?;
        // Replacing an earlier entry for the same instance: the rename
        // already unlinked the old file; dropping it releases its lock.
        own.insert(path.clone(), entry);
        drop(own);
        tracing::info!(component = %inner.component, app_id = %me.app_id, namespace = %me.namespace,
            instance_id = %me.instance_id, address = %me.address, file = %path.display(), "registered");
        inner.wake.notify_one();
        Ok(())
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
        if let Some(addrs) = inner.cached(app_id, namespace) {
            return super::answer(&inner.label, app_id, namespace, &addrs);
        }
        check_lookup(&inner.label, app_id, namespace)?;
        // First lookup of this app: read its directory now.
        let dir = inner.dir.join(namespace).join(app_id);
        let addrs: Arc<[SocketAddr]> = match scan_app(&inner.component, &dir) {
            Ok(a) => a.into(),
            Err(e) => {
                return Err(ResolveError::Unavailable {
                    resolver: inner.label.clone(),
                    reason: format!("cannot read registry directory {}: {e}", dir.display()),
                })
            }
        };
        inner.insert_cache(namespace, app_id, addrs.clone());
        super::answer(&inner.label, app_id, namespace, &addrs)
    }

    async fn close(&self) {
        self.inner.shut_down();
        let task = self.inner.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

// === impl Inner ===

impl Inner {
    fn entry_path(&self, reg: &Registration) -> PathBuf {
        self.dir
            .join(&reg.namespace)
            .join(&reg.app_id)
            .join(&reg.instance_id)
    }

    fn closed_error(&self) -> ResolveError {
        ResolveError::Closed {
            resolver: self.label.clone(),
        }
    }

    fn cached(&self, app_id: &str, namespace: &str) -> Option<Arc<[SocketAddr]>> {
        let cache = self.cache.read().unwrap();
        cache.get(namespace)?.get(app_id).cloned()
    }

    fn insert_cache(&self, namespace: &str, app_id: &str, addrs: Arc<[SocketAddr]>) {
        let mut cache = self.cache.write().unwrap();
        let count: usize = cache.values().map(HashMap::len).sum();
        if count >= MAX_CACHED_APPS {
            for apps in cache.values_mut() {
                apps.retain(|_, a| !a.is_empty());
            }
            cache.retain(|_, apps| !apps.is_empty());
        }
        cache
            .entry(namespace.to_string())
            .or_default()
            .insert(app_id.to_string(), addrs);
    }

    /// Re-reads every cached app and re-creates own entries deleted from
    /// outside. Blocking; runs on the blocking pool.
    fn refresh(&self) {
        self.repair_own();
        let keys: Vec<(String, String)> = {
            let cache = self.cache.read().unwrap();
            cache
                .iter()
                .flat_map(|(ns, apps)| apps.keys().map(move |a| (ns.clone(), a.clone())))
                .collect()
        };
        for (ns, app) in keys {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let dir = self.dir.join(&ns).join(&app);
            let fresh = match scan_app(&self.component, &dir) {
                Ok(a) => a,
                Err(e) => {
                    // Keep the last known answer.
                    tracing::warn!(component = %self.component, dir = %dir.display(), error = %e,
                        "cannot read registry directory; keeping cached instances");
                    continue;
                }
            };
            let mut cache = self.cache.write().unwrap();
            if let Some(slot) = cache.get_mut(&ns).and_then(|apps| apps.get_mut(&app)) {
                if slot[..] != fresh[..] {
                    tracing::debug!(component = %self.component, app_id = %app, namespace = %ns,
                        instances = ?fresh, "instances changed");
                    *slot = fresh.into();
                }
            }
        }
    }

    /// Rewrites own entries whose file is gone or was replaced.
    fn repair_own(&self) {
        let mut own = self.own.lock().unwrap();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        for (path, entry) in own.iter_mut() {
            let intact = fs::symlink_metadata(path)
                .map(|m| m.dev() == entry.dev && m.ino() == entry.ino)
                .unwrap_or(false);
            if intact {
                continue;
            }
            match write_entry(path, &entry.reg) {
                Ok(fresh) => {
                    tracing::warn!(component = %self.component, file = %path.display(),
                        "own registry entry was removed or replaced from outside; rewrote it");
                    *entry = fresh;
                }
                Err(e) => {
                    tracing::warn!(component = %self.component, file = %path.display(), error = %e,
                        "own registry entry was removed from outside and cannot be rewritten; retrying");
                }
            }
        }
    }

    /// Deletes own entries, stops the refresh task and the watcher.
    fn shut_down(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let own = std::mem::take(&mut *self.own.lock().unwrap());
        for (path, entry) in own {
            remove_if_same(&path, entry.dev, entry.ino);
            tracing::info!(component = %self.component, app_id = %entry.reg.app_id,
                namespace = %entry.reg.namespace, instance_id = %entry.reg.instance_id, "unregistered");
            // Dropping the file releases the lock.
        }
        self.watcher.lock().unwrap().take();
        self.shutdown.send_replace(true);
        self.cache.write().unwrap().clear();
    }
}

async fn refresh_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let woken = tokio::select! {
            _ = inner.wake.notified() => true,
            _ = tokio::time::sleep(POLL_INTERVAL) => false,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if woken {
            // Let a burst of events settle.
            tokio::time::sleep(DEBOUNCE).await;
        }
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let job = inner.clone();
        let _ = tokio::task::spawn_blocking(move || job.refresh()).await;
    }
}

/// Watches the registry directory recursively; `None` (polling still
/// works) when the watcher cannot be created.
fn start_watcher(inner: &Arc<Inner>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, RecursiveMode, Watcher};

    let weak = Arc::downgrade(inner);
    let component = inner.component.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            // Readers open and close entries: ignore accesses except the
            // close of a file that was open for writing (a holder exiting).
            Ok(ev) => match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            Err(e) => {
                tracing::debug!(component = %component, error = %e, "registry watcher error; polling continues");
                true
            }
        };
        if relevant {
            if let Some(inner) = weak.upgrade() {
                inner.wake.notify_one();
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(component = %inner.component, error = %e,
                "cannot watch the registry directory; falling back to polling every 500 ms");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&inner.dir, RecursiveMode::Recursive) {
        tracing::warn!(component = %inner.component, dir = %inner.dir.display(), error = %e,
            "cannot watch the registry directory; falling back to polling every 500 ms");
        return None;
    }
    Some(watcher)
}

/// Creates the registry directory (mode 0700) if needed; with
/// `check_owner`, refuses one owned by another user or writable by others.
fn prepare_dir(dir: &Path, check_owner: bool) -> Result<(), String> {
    if dir.as_os_str().is_empty() {
        return Err("the directory path is empty".into());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create registry directory {}: {e}", dir.display()))?;
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot stat registry directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if check_owner {
        let me = current_uid();
        if meta.uid() != me {
            return Err(format!(
                "{} is owned by uid {}, not by this user (uid {me})",
                dir.display(),
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by other users (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Writes `path` atomically with the registration's address and returns it
/// open with an exclusive lock held.
fn write_entry(path: &Path, reg: &Registration) -> io::Result<OwnEntry> {
    let dir = path.parent().expect("entry path has a parent");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        reg.instance_id,
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = (|| {
        file.try_lock().map_err(io::Error::from)?;
        file.write_all(format!("{}\npid={}\n", reg.address, std::process::id()).as_bytes())?;
        file.flush()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let meta = file.metadata()?;
    Ok(OwnEntry {
        reg: reg.clone(),
        _file: file,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Removes `path` if it still is the file (dev, ino).
fn remove_if_same(path: &Path, dev: u64, ino: u64) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.dev() == dev && m.ino() == ino => fs::remove_file(path).is_ok(),
        _ => false,
    }
}

/// The live instances in one app directory, sorted. A missing directory is
/// an app without instances. Stale entries (unlocked files) are removed.
fn scan_app(component: &str, dir: &Path) -> io::Result<Vec<SocketAddr>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut addrs = Vec::new();
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        if name.as_encoded_bytes().starts_with(b".") {
            remove_stale_temp(component, &path);
            continue;
        }
        match read_live_entry(&path) {
            Ok(Liveness::Live(Some(addr))) => addrs.push(addr),
            Ok(Liveness::Live(None)) => {
                tracing::warn!(component = %component, file = %path.display(),
                    "registry entry does not start with an address (ip:port); ignored");
            }
            Ok(Liveness::Stale) => {
                tracing::debug!(component = %component, file = %path.display(),
                    "removed stale registry entry (its runtime is gone)");
            }
            Ok(Liveness::Gone) => {}
            Err(e) => {
                tracing::warn!(component = %component, file = %path.display(), error = %e,
                    "cannot read registry entry; ignored");
            }
        }
    }
    Ok(normalize(addrs))
}

enum Liveness {
    /// A holder has the lock; the parsed address, if valid.
    Live(Option<SocketAddr>),
    /// Nobody held it: removed.
    Stale,
    /// Vanished or not a regular file.
    Gone,
}

fn read_live_entry(path: &Path) -> io::Result<Liveness> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Liveness::Gone),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Liveness::Gone);
    }
    match file.try_lock_shared() {
        Ok(()) => {
            // Nobody holds it: the runtime that wrote it is gone. Remove
            // it unless it was replaced in the meantime.
            remove_if_same(path, meta.dev(), meta.ino());
            Ok(Liveness::Stale)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            (&mut file).take(MAX_FILE_LEN).read_to_string(&mut text)?;
            let addr = text.lines().next().and_then(|l| l.trim().parse().ok());
            Ok(Liveness::Live(addr))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io::Error::new(e.kind(), format!("flock: {e}")))
        }
    }
}

/// Removes a temporary file left by a writer that died before renaming it.
fn remove_stale_temp(component: &str, path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_file() {
        return;
    }
    let old = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > STALE_TEMP_AGE);
    if !old {
        return;
    }
    if let Ok(Liveness::Stale) = read_live_entry(path) {
        tracing::debug!(component = %component, file = %path.display(), "removed stale temporary registry file");
    }
}

/// `nameresolution.local` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "nameresolution.local",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::NameResolution(Arc::new(
                LocalResolver::from_metadata(md, ctx)?,
            )))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(app: &str, inst: &str, port: u16) -> Registration {
        Registration::new(
            app,
            "default",
            inst,
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    #[tokio::test]
    async fn stale_entries_are_ignored_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = LocalResolver::new("names", tmp.path()).unwrap();
        // An entry whose writer is gone: a plain file nobody locks.
        let app_dir = tmp.path().join("default").join("app-a");
        fs::create_dir_all(&app_dir).unwrap();
        fs::write(app_dir.join("dead"), "127.0.0.1:1\n").unwrap();
        r.register(&reg("app-a", "live", 2)).await.unwrap();
        let got = r.resolve("app-a", "default").await.unwrap();
        assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 1], 2))]);
        assert!(
            !app_dir.join("dead").exists(),
            "stale entry was not removed"
        );
        assert!(app_dir.join("live").exists());
        r.close().await;
        assert!(!app_dir.join("live").exists(), "close() left the entry");
    }

    #[tokio::test]
    async fn garbage_entries_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let r = LocalResolver::new("names", tmp.path()).unwrap();
        r.register(&reg("app-g", "ok", 7)).await.unwrap();
        // A live (locked) file with garbage in it.
        let path = tmp.path().join("default").join("app-g").join("bad");
        let f = File::create(&path).unwrap();
        f.lock().unwrap();
        fs::write(&path, "not an address\n").unwrap();
        let got = r.resolve("app-g", "default").await.unwrap();
        assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 1], 7))]);
        r.close().await;
    }

    #[tokio::test]
    async fn entries_deleted_from_outside_are_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let r = LocalResolver::new("names", tmp.path()).unwrap();
        r.register(&reg("app-r", "me", 9)).await.unwrap();
        let path = tmp.path().join("default").join("app-r").join("me");
        fs::remove_file(&path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "entry was not rewritten"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.close().await;
    }

    #[test]
    fn explicit_dir_errors_name_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let md = Metadata::new(
            "names",
            "nameresolution.local",
            [("dir".to_string(), file.display().to_string())],
        );
        let ctx = InitContext {
            data_dir: tmp.path().to_path_buf(),
            app_id: "a".into(),
        };
        let err = LocalResolver::from_metadata(&md, &ctx)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("'dir'") && err.contains("'names'"), "{err}");
    }
}
