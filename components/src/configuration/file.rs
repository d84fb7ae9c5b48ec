//! `configuration.file`: configuration items read from a YAML or JSON file
//! and watched for changes.
//!
//! # Metadata
//!
//! * `path` (optional): the file. Defaults to `<data dir>/configuration.yaml`,
//!   which is created with a small commented example (`greeting: hello`)
//!   when it does not exist. An explicitly configured file must exist.
//! * `format` (optional): `yaml` or `json`. Defaults to `json` for a `.json`
//!   file and `yaml` otherwise.
//!
//! # File format
//!
//! A map of key → item. An item is either a scalar (string, number or
//! boolean; stored as its string form, `~`/`null` as the empty string) or an
//! object with a required `value` and optional `version` and `metadata`:
//!
//! ```yaml
//! greeting: hello
//! retries: 3
//! feature-x:
//!   value: "on"
//!   version: "7"          # optional
//!   metadata:             # optional, string → scalar
//!     owner: team-a
//! ```
//!
//! When an item has no `version`, it is derived as a 64-bit FNV-1a hash of
//! the value and metadata, printed as 16 hex digits. It therefore changes
//! whenever the value (or metadata) changes, is stable across restarts, and
//! returns to an earlier version when an earlier value comes back.
//!
//! # Watching
//!
//! The file's parent directory is watched with `notify` (so editors that
//! save by writing a temporary file and renaming it, or that delete and
//! recreate the file, are followed). Events are debounced (75 ms of quiet,
//! at most 300 ms), then the file is re-read and diffed against the previous
//! snapshot; only changed items are pushed, removed keys as an empty item
//! with metadata `deleted=true`. As a fallback for missed events (inotify
//! queue overflow, network file systems, a watcher that could not be
//! created) the file's size, modification time and inode are also checked
//! every 500 ms; this costs one `stat` call. `get` performs the same cheap
//! check, so a reader sees a write that completed before its call.
//!
//! A file that becomes unreadable or invalid while running (including one
//! that is missing or empty for a moment during a save; an empty file is
//! only accepted at start-up) does not change anything:
//! the last good values are kept, a warning names the file and the error,
//! and watching continues.
//!
//! # Subscribers
//!
//! See [`hub`]: each subscriber has a bounded channel and a pending map of
//! changes not yet delivered; while its channel is full, newer changes are
//! merged into the pending map (latest value per key wins) so a slow
//! subscriber never blocks the others, never misses a key's final value,
//! and uses bounded memory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::hub;
use super::{ConfigurationError, ConfigurationItem, ConfigurationStore, Feature, Items};
use crate::metadata::{ComponentError, InitContext, Metadata};

/// Quiet period after a file event before the file is re-read.
const DEBOUNCE: Duration = Duration::from_millis(75);
/// Longest a burst of events can postpone a re-read.
const MAX_DEBOUNCE: Duration = Duration::from_millis(300);
/// How often the file's size/mtime/inode are checked as a fallback.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Name of the default file, created in the data directory.
pub const DEFAULT_FILE_NAME: &str = "configuration.yaml";

/// Contents written to the default file when it does not exist.
pub const DEFAULT_FILE_CONTENTS: &str = "\
# Weft configuration store (component type configuration.file).
#
# Each top-level key is a configuration item. A value is either a scalar:
#
#   greeting: hello
#
# or an object with an optional explicit version and metadata:
#
#   feature-x:
#     value: \"on\"
#     version: \"3\"
#     metadata:
#       owner: team-a
#
# Changes to this file are pushed to subscribers while the runtime runs.
greeting: hello
";

/// File syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// A configuration store backed by a watched YAML/JSON file.
pub struct FileStore {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
}

struct Inner {
    path: PathBuf,
    format: Format,
    /// The last good items.
    items: Mutex<Items>,
    /// Identity of the file when it was last read (None: missing).
    stamp: Mutex<Option<Stamp>>,
    /// Serializes reloads so diffs are computed against a consistent snapshot.
    reload: tokio::sync::Mutex<()>,
    /// Last error logged, to avoid repeating the same warning.
    last_error: Mutex<Option<String>>,
    hub: hub::Hub,
}

/// What the fallback poll compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

impl FileStore {
    /// Builds the store, reads the file and starts watching it.
    pub async fn from_metadata(md: &Metadata, ctx: &InitContext) -> Result<Self, ComponentError> {
        let (path, is_default) = match md.get("path") {
            // A relative path is relative to the runtime's working directory.
            Some(p) => (PathBuf::from(p.trim()), false),
            None => (ctx.data_dir.join(DEFAULT_FILE_NAME), true),
        };
        let format = match md.get("format").map(|f| f.trim().to_ascii_lowercase()) {
            None => match path.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
                _ => Format::Yaml,
            },
            Some(f) if f == "yaml" || f == "yml" => Format::Yaml,
            Some(f) if f == "json" => Format::Json,
            Some(f) => return Err(md.invalid("format", format!("'{f}' is not one of yaml, json"))),
        };

        if is_default && tokio::fs::metadata(&path).await.is_err() {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    md.init_error(format!("cannot create directory '{}': {e}", dir.display()))
                })?;
            }
            let contents = match format {
                Format::Yaml => DEFAULT_FILE_CONTENTS,
                Format::Json => "{\"greeting\": \"hello\"}\n",
            };
            write_new(&path, contents).await.map_err(|e| {
                md.init_error(format!(
                    "cannot create configuration file '{}': {e}",
                    path.display()
                ))
            })?;
            tracing::info!(file = %path.display(), "created default configuration file");
        }

        let stamp = stat(&path).await;
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            md.init_error(format!(
                "cannot read configuration file '{}': {e}",
                path.display()
            ))
        })?;
        let items = parse(&text, format).map_err(|e| {
            md.init_error(format!(
                "invalid configuration file '{}': {e}",
                path.display()
            ))
        })?;

        let inner = Arc::new(Inner {
            path,
            format,
            items: Mutex::new(items),
            stamp: Mutex::new(stamp),
            reload: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
            hub: hub::Hub::default(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(watch_loop(inner.clone(), shutdown_rx));
        Ok(Self { inner, shutdown })
    }

    /// The file this store reads.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.inner.hub.close();
    }
}

#[async_trait]
impl ConfigurationStore for FileStore {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Subscribe]
    }

    async fn get(&self, keys: &[String]) -> Result<Items, ConfigurationError> {
        self.inner.refresh(false).await;
        let items = lock(&self.inner.items);
        Ok(if keys.is_empty() {
            items.clone()
        } else {
            keys.iter()
                .filter_map(|k| items.get(k).map(|i| (k.clone(), i.clone())))
                .collect()
        })
    }

    async fn subscribe(
        &self,
        keys: &[String],
    ) -> Result<mpsc::Receiver<Items>, ConfigurationError> {
        if *self.shutdown.borrow() {
            return Err(ConfigurationError::Unavailable(
                "configuration store is closed".into(),
            ));
        }
        // Catch up with the file first, so a change made before this call
        // is not pushed, and one made after it is diffed against it.
        let _guard = self.inner.reload.lock().await;
        self.inner.refresh_locked(false).await;
        Ok(self.inner.hub.subscribe(keys))
    }

    async fn close(&self) {
        let _ = self.shutdown.send(true);
        self.inner.hub.close();
    }
}

impl Inner {
    /// Re-reads the file if it changed (or unconditionally when `force`),
    /// and pushes the differences to subscribers.
    async fn refresh(&self, force: bool) {
        let _guard = self.reload.lock().await;
        self.refresh_locked(force).await;
    }

    /// [`Inner::refresh`] for a caller holding `self.reload`.
    async fn refresh_locked(&self, force: bool) {
        let stamp = stat(&self.path).await;
        if !force && stamp == *lock(&self.stamp) {
            return;
        }
        *lock(&self.stamp) = stamp.clone();
        let parsed = match stamp {
            None => Err("the file does not exist".to_string()),
            Some(_) => match tokio::fs::read_to_string(&self.path).await {
                // Truncated by an in-place save that has not written yet.
                Ok(text) if text.is_empty() => Err(
                    "the file is empty (to remove every key, write `{}` or a comment)".to_string(),
                ),
                Ok(text) => parse(&text, self.format),
                Err(e) => Err(format!("cannot read it: {e}")),
            },
        };
        match parsed {
            Ok(new) => {
                *lock(&self.last_error) = None;
                let changes = {
                    let mut items = lock(&self.items);
                    let changes = diff(&items, &new);
                    *items = new;
                    changes
                };
                if !changes.is_empty() {
                    tracing::debug!(file = %self.path.display(), changed = changes.len(), "configuration file changed");
                    self.hub.publish(&changes);
                }
            }
            Err(error) => {
                let mut last = lock(&self.last_error);
                if last.as_deref() != Some(error.as_str()) {
                    tracing::warn!(
                        file = %self.path.display(),
                        %error,
                        "configuration file is invalid or unreadable; keeping the last good values"
                    );
                    *last = Some(error);
                }
            }
        }
    }
}

async fn watch_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    let _watcher = start_watcher(&inner.path, ev_tx);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            Some(()) = ev_rx.recv() => {
                let start = Instant::now();
                loop {
                    tokio::select! {
                        ev = ev_rx.recv() => {
                            if ev.is_none() || start.elapsed() >= MAX_DEBOUNCE { break }
                        }
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                inner.refresh(true).await;
            }
            _ = poll.tick() => inner.refresh(false).await,
        }
    }
    tracing::debug!(file = %inner.path.display(), "stopped watching configuration file");
}

/// Watches the file's directory; returns None (polling still works) when
/// the watcher cannot be created.
fn start_watcher(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{event::AccessKind, EventKind, RecursiveMode, Watcher};

    let name = path.file_name()?.to_os_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            // Our own reads produce open/close events: ignore accesses
            // except a close after writing.
            if let EventKind::Access(kind) = ev.kind {
                if !matches!(kind, AccessKind::Close(notify::event::AccessMode::Write)) {
                    return;
                }
            }
            let relevant = ev.paths.is_empty()
                || ev.need_rescan()
                || ev
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()));
            if relevant {
                // A full channel already holds a pending signal.
                let _ = tx.try_send(());
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "configuration file watcher error; polling continues");
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot watch configuration file; falling back to polling");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(file = %path.display(), error = %e, "cannot watch configuration file's directory; falling back to polling");
        return None;
    }
    Some(watcher)
}

async fn stat(path: &Path) -> Option<Stamp> {
    let m = tokio::fs::metadata(path).await.ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        ino,
    })
}

/// Creates `path` with `contents`, failing if it already exists.
async fn write_new(path: &Path, contents: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await?;
    f.write_all(contents.as_bytes()).await?;
    f.flush().await
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Items in `new` that differ from `old`, plus deletion markers for keys
/// only in `old`.
pub(super) fn diff(old: &Items, new: &Items) -> Items {
    let mut changes: Items = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for k in old.keys() {
        if !new.contains_key(k) {
            changes.insert(k.clone(), deleted_item());
        }
    }
    changes
}

/// The item pushed for a removed key.
pub(super) fn deleted_item() -> ConfigurationItem {
    ConfigurationItem {
        value: String::new(),
        version: String::new(),
        metadata: HashMap::from([(super::DELETED_METADATA_KEY.to_string(), "true".to_string())]),
    }
}

/// Parses file contents; errors carry the parser's line/column or name the
/// offending key.
pub fn parse(text: &str, format: Format) -> Result<Items, String> {
    let doc: serde_yaml::Value = match format {
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| format!("YAML error: {e}"))?,
        Format::Json => {
            if text.trim().is_empty() {
                serde_yaml::Value::Null
            } else {
                let json: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("JSON error: {e}"))?;
                serde_yaml::to_value(json).map_err(|e| format!("JSON error: {e}"))?
            }
        }
    };
    let map = match doc {
        serde_yaml::Value::Null => return Ok(Items::new()),
        serde_yaml::Value::Mapping(m) => m,
        other => {
            return Err(format!(
                "the top level must be a map of key to value, found {}",
                kind_name(&other)
            ))
        }
    };
    let mut items = Items::with_capacity(map.len());
    for (k, v) in map {
        let key = scalar(&k).ok_or_else(|| format!("key {} is not a string", describe(&k)))?;
        let item = parse_item(&v).map_err(|e| format!("key '{key}': {e}"))?;
        items.insert(key, item);
    }
    Ok(items)
}

fn parse_item(v: &serde_yaml::Value) -> Result<ConfigurationItem, String> {
    let (value, version, metadata) = match v {
        serde_yaml::Value::Mapping(m) => {
            let mut value = None;
            let mut version = None;
            let mut metadata = HashMap::new();
            for (field, fv) in m {
                match field.as_str() {
                    Some("value") => {
                        value = Some(scalar(fv).ok_or_else(|| {
                            format!(
                                "'value' must be a string, number or boolean, found {}",
                                kind_name(fv)
                            )
                        })?)
                    }
                    Some("version") => {
                        let s = scalar(fv).ok_or_else(|| {
                            format!(
                                "'version' must be a string or number, found {}",
                                kind_name(fv)
                            )
                        })?;
                        version = Some(s).filter(|s| !s.is_empty());
                    }
                    Some("metadata") => match fv {
                        serde_yaml::Value::Null => {}
                        serde_yaml::Value::Mapping(mm) => {
                            for (mk, mv) in mm {
                                let mk = scalar(mk).ok_or_else(|| {
                                    format!("metadata key {} is not a string", describe(mk))
                                })?;
                                let s = scalar(mv).ok_or_else(|| {
                                    format!("metadata '{mk}' must be a string, number or boolean, found {}", kind_name(mv))
                                })?;
                                metadata.insert(mk, s);
                            }
                        }
                        other => {
                            return Err(format!(
                                "'metadata' must be a map, found {}",
                                kind_name(other)
                            ))
                        }
                    },
                    _ => {
                        return Err(format!(
                        "unknown field {} (an item object has 'value', 'version' and 'metadata')",
                        describe(field)
                    ))
                    }
                }
            }
            let value = value.ok_or("an item object needs a 'value' field")?;
            (value, version, metadata)
        }
        other => {
            let value = scalar(other).ok_or_else(|| {
                format!(
                    "value must be a string, number, boolean or an object with 'value', found {}",
                    kind_name(other)
                )
            })?;
            (value, None, HashMap::new())
        }
    };
    let version = version.unwrap_or_else(|| derived_version(&value, &metadata));
    Ok(ConfigurationItem {
        value,
        version,
        metadata,
    })
}

/// The string form of a scalar; None for sequences, maps and tagged values.
fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::Null => Some(String::new()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn kind_name(v: &serde_yaml::Value) -> &'static str {
    match v {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a map",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

fn describe(v: &serde_yaml::Value) -> String {
    match scalar(v) {
        Some(s) => format!("'{s}'"),
        None => kind_name(v).to_string(),
    }
}

/// FNV-1a 64 of the value and the sorted metadata, as 16 hex digits.
pub fn derived_version(value: &str, metadata: &HashMap<String, String>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(value.as_bytes());
    let sorted: BTreeMap<_, _> = metadata.iter().collect();
    for (k, v) in sorted {
        // Separators that cannot be confused with content lengths.
        feed(&[0xff]);
        feed(&(k.len() as u64).to_le_bytes());
        feed(k.as_bytes());
        feed(&(v.len() as u64).to_le_bytes());
        feed(v.as_bytes());
    }
    format!("{h:016x}")
}

/// `configuration.file` in the [component registry](crate::registry).
pub const BACKEND: crate::registry::Backend = crate::registry::Backend {
    kind: "configuration.file",
    build: |md, ctx| {
        Box::pin(async move {
            use crate::registry::Component;
            use std::sync::Arc;
            Ok(Component::Configuration(Arc::new(
                FileStore::from_metadata(md, ctx).await?,
            )))
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scalars_and_objects() {
        let items = parse(
            "a: hello\nb: 3\nc: true\nd:\n  value: x\n  version: v9\n  metadata: {owner: me, n: 1}\ne: ~\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(items["a"].value, "hello");
        assert_eq!(items["b"].value, "3");
        assert_eq!(items["c"].value, "true");
        assert_eq!(items["d"].value, "x");
        assert_eq!(items["d"].version, "v9");
        assert_eq!(items["d"].metadata["n"], "1");
        assert_eq!(items["e"].value, "");
        assert_eq!(items["a"].version.len(), 16);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("a: [1, 2]\n", Format::Yaml).unwrap_err();
        assert!(e.contains("'a'") && e.contains("list"), "{e}");
        let e = parse("a:\n  vaule: 1\n", Format::Yaml).unwrap_err();
        assert!(e.contains("vaule"), "{e}");
        let e = parse("a: b: c\n", Format::Yaml).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = parse("{\"a\": }", Format::Json).unwrap_err();
        assert!(e.contains("line 1 column"), "{e}");
        let e = parse("- a\n", Format::Yaml).unwrap_err();
        assert!(e.contains("top level"), "{e}");
        assert!(parse("", Format::Yaml).unwrap().is_empty());
        assert!(parse("# only comments\n", Format::Yaml).unwrap().is_empty());
    }

    #[test]
    fn versions_follow_values() {
        let m = HashMap::new();
        assert_ne!(derived_version("a", &m), derived_version("b", &m));
        assert_eq!(derived_version("a", &m), derived_version("a", &m));
        let m2 = HashMap::from([("k".to_string(), "v".to_string())]);
        assert_ne!(derived_version("a", &m), derived_version("a", &m2));
    }

    #[test]
    fn diff_reports_changes_and_deletions() {
        let old = parse("a: 1\nb: 2\nc: 3\n", Format::Yaml).unwrap();
        let new = parse("a: 1\nb: 20\nd: 4\n", Format::Yaml).unwrap();
        let d = diff(&old, &new);
        assert_eq!(d.len(), 3);
        assert_eq!(d["b"].value, "20");
        assert_eq!(d["d"].value, "4");
        assert_eq!(
            d["c"].metadata[crate::configuration::DELETED_METADATA_KEY],
            "true"
        );
    }
}
