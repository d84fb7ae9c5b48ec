//! What the SQLite stores shared by a machine's runtimes (`lock.sqlite`,
//! `sequencer.sqlite`) have in common: a file beside the local registry,
//! created mode 0600 and refused when another user owns it, opened with
//! a busy timeout, and busy errors told apart from the rest.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::{ComponentError, Metadata};

/// `<local registry dir><suffix>`, beside the local name-resolution
/// registry, so runtimes that find each other share the file.
pub(crate) fn beside_registry(suffix: &str) -> PathBuf {
    let registry = crate::nameresolution::local::default_dir();
    let mut name = registry
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "weft-registry".into());
    name.push(suffix);
    registry.with_file_name(name)
}

/// The database of a component: `databasePath` (default `default`),
/// `busyTimeout` (default 5 s), opened and prepared with `schema`.
pub(crate) fn open_from(
    md: &Metadata,
    default: impl FnOnce() -> PathBuf,
    schema: &str,
) -> Result<(Connection, PathBuf), ComponentError> {
    let path = md
        .get("databasePath")
        .map(PathBuf::from)
        .unwrap_or_else(default);
    let busy = md
        .duration("busyTimeout")?
        .unwrap_or(Duration::from_secs(5));
    let conn = open(&path, busy, schema).map_err(|reason| md.invalid("databasePath", reason))?;
    Ok((conn, path))
}

/// Opens (creating) the shared database at `path` and runs `schema`
/// (pragmas and `CREATE TABLE IF NOT EXISTS`).
pub(crate) fn open(path: &Path, busy: Duration, schema: &str) -> Result<Connection, String> {
    create_shared_file(path)?;
    let conn =
        Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(busy)
        .and_then(|_| conn.execute_batch(schema))
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
    Ok(conn)
}

/// Whether `e` is another process holding the database (worth a retry).
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
    if matches!(
        f.code,
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
    ))
}

/// Creates `path` (and its directory) mode 0600 unless it exists; an
/// existing file must belong to this user: a file planted by another user
/// is not trusted.
fn create_shared_file(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.uid() != crate::nameresolution::local::current_uid() {
                return Err(format!(
                    "{} belongs to another user (uid {}): refusing to share it",
                    path.display(),
                    meta.uid()
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}
