//! The segment file (a /dev/shm file of mode 0600) and its mapping.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{
    Header, Layout, LayoutError, RingId, FEATURES_OFFSET, HEADER_FIELDS_LEN, HEADER_LEN,
    SESSION_STATE_OFFSET,
};
use crate::ring::{Consumer, Producer};

/// Prefix of every segment file name: `weft-<runtime pid>-<session>-<nonce>`.
pub const NAME_PREFIX: &str = "weft-";

/// Directory segments are created in: /dev/shm when it exists, else the
/// temporary directory.
pub fn default_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A mapped segment. Rings borrow it through an `Arc`, so the mapping
/// outlives every producer and consumer.
pub struct Segment {
    map: MmapRaw,
    path: PathBuf,
}

/// Why a segment could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    Layout(LayoutError),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "{e}"),
            OpenError::Layout(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl Segment {
    /// Creates `dir/name` (it must not exist; symlinks are not followed),
    /// mode 0600, sized for `header.layout`, maps it and writes the header.
    pub fn create(dir: &Path, name: &str, header: &Header) -> io::Result<Arc<Self>> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let setup = || -> io::Result<Arc<Self>> {
            file.set_len(header.layout.total_len())?;
            let seg = Self::map(&file, path.clone())?;
            seg.write_bytes(0, &header.encode());
            Ok(seg)
        };
        setup().inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    /// Opens and maps an existing segment and checks its header.
    pub fn open(path: &Path) -> Result<(Arc<Self>, Header), OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(OpenError::Io)?;
        let len = file.metadata().map_err(OpenError::Io)?.len();
        if len < HEADER_LEN as u64 {
            return Err(OpenError::Layout(LayoutError::TooShort(len as usize)));
        }
        let seg = Self::map(&file, path.to_path_buf()).map_err(OpenError::Io)?;
        let header = Header::decode(&seg.read_bytes(0, HEADER_FIELDS_LEN), len)
            .map_err(OpenError::Layout)?;
        Ok((seg, header))
    }

    fn map(file: &File, path: PathBuf) -> io::Result<Arc<Self>> {
        let map = MmapOptions::new().map_raw(file)?;
        Ok(Arc::new(Self { map, path }))
    }

    /// The file's path (it may already be unlinked).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file; the mapping stays valid.
    pub fn unlink(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Base address of the mapping (page-aligned).
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Copies `len` bytes at `offset` out of the segment (clamped to its end).
    pub fn read_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let start = offset.min(self.len());
        let len = len.min(self.len() - start);
        let mut out = vec![0u8; len];
        // SAFETY: `start + len <= self.len()`, so the source lies inside the
        // live mapping, which `self` keeps alive; `out` is a fresh buffer
        // that cannot overlap it. The peer may write these bytes
        // concurrently: we copy them out once and only ever inspect the copy.
        unsafe { std::ptr::copy_nonoverlapping(self.base().add(start), out.as_mut_ptr(), len) };
        out
    }

    /// Writes bytes at `offset` (clamped to the segment's end). Used for the
    /// header, and by tests that play a hostile peer.
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        let start = offset.min(self.len());
        let len = bytes.len().min(self.len() - start);
        // SAFETY: the destination range lies inside the live writable
        // mapping (clamped above); the source is a caller's slice, which
        // cannot overlap a mapping we never hand out references to.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base().add(start), len) };
    }

    fn header_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset + 4 <= HEADER_LEN && offset.is_multiple_of(4));
        // SAFETY: the offset is inside the header of the mapping (asserted),
        // 4-aligned on a page-aligned base, and the mapping lives as long as
        // the returned reference (tied to `&self`). Both processes only ever
        // access this word atomically.
        unsafe { AtomicU32::from_ptr(self.base().add(offset).cast()) }
    }

    /// The session state word (0 open, 1 closed by the runtime).
    pub fn session_state(&self) -> u32 {
        self.header_u32(SESSION_STATE_OFFSET)
            .load(Ordering::Acquire)
    }

    pub fn set_session_state(&self, state: u32) {
        self.header_u32(SESSION_STATE_OFFSET)
            .store(state, Ordering::Release)
    }

    /// The runtime's feature word (§3.1; 0 for runtimes from before it).
    pub fn features(&self) -> u32 {
        self.header_u32(FEATURES_OFFSET).load(Ordering::Acquire)
    }

    /// Written by the runtime before it sends WELCOME.
    pub fn set_features(&self, features: u32) {
        self.header_u32(FEATURES_OFFSET)
            .store(features, Ordering::Release)
    }

    /// The producer end of a ring.
    pub fn producer(self: &Arc<Self>, layout: &Layout, ring: RingId) -> Producer {
        Producer::new(self.clone(), layout, ring)
    }

    /// The consumer end of a ring.
    pub fn consumer(self: &Arc<Self>, layout: &Layout, ring: RingId) -> Consumer {
        Consumer::new(self.clone(), layout, ring)
    }
}

/// A segment name for a runtime pid and session number.
pub fn segment_name(runtime_pid: u32, session: u64) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{NAME_PREFIX}{runtime_pid}-{session}-{nonce:08x}")
}

/// The runtime pid a segment name carries.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn pid_alive(pid: u32) -> bool {
    // Without /proc we cannot tell: assume alive and keep the file.
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes `weft-<pid>-…` files in `dir` that belong to this user and whose
/// runtime pid is no longer running. Returns what was removed.
pub fn sweep_stale(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let uid = crate::control::current_uid();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        let Ok(md) = entry.metadata() else { continue };
        if md.is_file()
            && md.uid() == uid
            && !pid_alive(pid)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_open_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(4096, 4096).unwrap();
        let header = Header {
            runtime_pid: std::process::id(),
            app_pid: 0,
            session_id: 1,
            layout,
        };
        let seg = Segment::create(dir.path(), "weft-1-1-0", &header).unwrap();
        let md = std::fs::metadata(seg.path()).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(md.len(), layout.total_len());
        assert!(
            Segment::create(dir.path(), "weft-1-1-0", &header).is_err(),
            "must not reuse a file"
        );
        let (_seg2, got) = Segment::open(seg.path()).unwrap();
        assert_eq!(got, header);

        // A segment whose runtime pid is dead is swept; ours is kept.
        let dead = dir.path().join("weft-4000000000-1-0");
        std::fs::write(&dead, b"x").unwrap();
        let ours = dir.path().join(segment_name(std::process::id(), 2));
        std::fs::write(&ours, b"x").unwrap();
        let removed = sweep_stale(dir.path()).unwrap();
        assert_eq!(removed, vec![dead.clone()]);
        assert!(ours.exists());
        assert_eq!(owner_pid("weft-12-3-abc"), Some(12));
        assert_eq!(owner_pid("other-12"), None);
    }
}
