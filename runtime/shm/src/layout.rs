//! The segment layout (docs/shm-protocol.md §3): a 512-byte header, then two
//! rings, each a 512-byte control block (tail, head and need-wakeup on their
//! own 128-byte lines) followed by its data area.

use std::fmt;

/// First 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WEFT-SHM";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Length of the segment header.
pub const HEADER_LEN: usize = 512;
/// Length of a ring's control block.
pub const RING_CONTROL_LEN: usize = 512;
/// Counters and flags each own a line this long (two x86 cache lines, so
/// the adjacent-line prefetcher does not couple them).
pub const LINE: usize = 128;
/// Offset of the producer's position (u64) in a ring's control block.
pub const TAIL_OFFSET: usize = 0;
/// Offset of the consumer's position (u64) in a ring's control block.
pub const HEAD_OFFSET: usize = LINE;
/// Offset of the consumer's need-wakeup flag (u32) in a ring's control block.
pub const NEED_WAKEUP_OFFSET: usize = 2 * LINE;
/// Offset of the session state (u32, written by the runtime) in the header.
pub const SESSION_STATE_OFFSET: usize = LINE;
/// Offset of the runtime's feature word (u32, written before WELCOME, never
/// changed) in the header.
pub const FEATURES_OFFSET: usize = LINE + 4;
/// Feature bits of the header's feature word (docs/shm-protocol.md §3.1).
pub mod features {
    /// Records may carry a call context (flag CONTEXT, §5.1).
    pub const CONTEXT: u32 = 0x1;
    /// Every feature this implementation serves.
    pub const ALL: u32 = CONTEXT;
}
/// Session state: open.
pub const SESSION_OPEN: u32 = 0;
/// Session state: the runtime has ended the session (the reason follows on
/// the socket).
pub const SESSION_CLOSED: u32 = 1;
/// Smallest ring data area.
pub const MIN_RING: u32 = 4096;
/// Largest ring data area.
pub const MAX_RING: u32 = 1 << 28;
/// Ring size used when the hello asks for 0.
pub const DEFAULT_RING: u32 = 1 << 20;

/// Which ring of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingId {
    /// Requests: the app produces, the runtime consumes.
    AppToRuntime,
    /// Responses and stream items: the runtime produces, the app consumes.
    RuntimeToApp,
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingId::AppToRuntime => "app->runtime",
            RingId::RuntimeToApp => "runtime->app",
        })
    }
}

/// A header that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    BadMagic,
    UnsupportedVersion(u32),
    BadHeaderLength(u32),
    BadRingSize {
        ring: RingId,
        size: u64,
    },
    BadOffset {
        ring: RingId,
        offset: u64,
        expected: u64,
    },
    LengthMismatch {
        header: u64,
        file: u64,
    },
    TooShort(usize),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::BadMagic => write!(f, "segment magic is not WEFT-SHM"),
            LayoutError::UnsupportedVersion(v) => {
                write!(f, "segment protocol version {v} is not supported (this side speaks {PROTOCOL_VERSION})")
            }
            LayoutError::BadHeaderLength(l) => {
                write!(f, "segment header length {l} is not {HEADER_LEN}")
            }
            LayoutError::BadRingSize { ring, size } => write!(
                f,
                "ring {ring} size {size} is not a power of two between {MIN_RING} and {MAX_RING}"
            ),
            LayoutError::BadOffset {
                ring,
                offset,
                expected,
            } => {
                write!(f, "ring {ring} offset {offset} is not {expected}")
            }
            LayoutError::LengthMismatch { header, file } => {
                write!(
                    f,
                    "segment header describes {header} bytes but the file has {file}"
                )
            }
            LayoutError::TooShort(n) => {
                write!(f, "segment of {n} bytes is shorter than its header")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

/// Checks a ring size: a power of two in `MIN_RING..=MAX_RING`.
pub fn check_ring_size(ring: RingId, size: u64) -> Result<u64, LayoutError> {
    if size.is_power_of_two() && size >= u64::from(MIN_RING) && size <= u64::from(MAX_RING) {
        Ok(size)
    } else {
        Err(LayoutError::BadRingSize { ring, size })
    }
}

/// Where the two rings live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub a2r_offset: u64,
    pub a2r_capacity: u64,
    pub r2a_offset: u64,
    pub r2a_capacity: u64,
}

impl Layout {
    /// The layout for two ring sizes (each a power of two within bounds).
    pub fn new(a2r_capacity: u64, r2a_capacity: u64) -> Result<Self, LayoutError> {
        let a2r_capacity = check_ring_size(RingId::AppToRuntime, a2r_capacity)?;
        let r2a_capacity = check_ring_size(RingId::RuntimeToApp, r2a_capacity)?;
        let a2r_offset = HEADER_LEN as u64;
        Ok(Self {
            a2r_offset,
            a2r_capacity,
            r2a_offset: a2r_offset + RING_CONTROL_LEN as u64 + a2r_capacity,
            r2a_capacity,
        })
    }

    /// Total segment length in bytes.
    pub fn total_len(&self) -> u64 {
        self.r2a_offset + RING_CONTROL_LEN as u64 + self.r2a_capacity
    }

    /// Offset of a ring's control block and its capacity.
    pub fn ring(&self, ring: RingId) -> (u64, u64) {
        match ring {
            RingId::AppToRuntime => (self.a2r_offset, self.a2r_capacity),
            RingId::RuntimeToApp => (self.r2a_offset, self.r2a_capacity),
        }
    }
}

/// The segment header (the first 128 bytes; the rest of the 512 are zero
/// apart from the session state at offset 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub runtime_pid: u32,
    pub app_pid: u32,
    pub session_id: u64,
    pub layout: Layout,
}

/// Bytes of the header that [`Header::encode`] writes.
pub const HEADER_FIELDS_LEN: usize = 64;

impl Header {
    /// The header's fields, little-endian (docs/shm-protocol.md §3.1).
    pub fn encode(&self) -> [u8; HEADER_FIELDS_LEN] {
        let mut b = [0u8; HEADER_FIELDS_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.runtime_pid.to_le_bytes());
        b[20..24].copy_from_slice(&self.app_pid.to_le_bytes());
        b[24..32].copy_from_slice(&self.session_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.layout.a2r_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.layout.a2r_capacity.to_le_bytes());
        b[48..56].copy_from_slice(&self.layout.r2a_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.layout.r2a_capacity.to_le_bytes());
        b
    }

    /// Parses and checks a header against the length of the file it came
    /// from.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Self, LayoutError> {
        if b.len() < HEADER_FIELDS_LEN || file_len < HEADER_LEN as u64 {
            return Err(LayoutError::TooShort(b.len().min(file_len as usize)));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if b[0..8] != SEGMENT_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if u32_at(8) != PROTOCOL_VERSION {
            return Err(LayoutError::UnsupportedVersion(u32_at(8)));
        }
        if u32_at(12) != HEADER_LEN as u32 {
            return Err(LayoutError::BadHeaderLength(u32_at(12)));
        }
        let expected = Layout::new(u64_at(40), u64_at(56))?;
        let got = Layout {
            a2r_offset: u64_at(32),
            a2r_capacity: u64_at(40),
            r2a_offset: u64_at(48),
            r2a_capacity: u64_at(56),
        };
        if got.a2r_offset != expected.a2r_offset {
            return Err(LayoutError::BadOffset {
                ring: RingId::AppToRuntime,
                offset: got.a2r_offset,
                expected: expected.a2r_offset,
            });
        }
        if got.r2a_offset != expected.r2a_offset {
            return Err(LayoutError::BadOffset {
                ring: RingId::RuntimeToApp,
                offset: got.r2a_offset,
                expected: expected.r2a_offset,
            });
        }
        if expected.total_len() != file_len {
            return Err(LayoutError::LengthMismatch {
                header: expected.total_len(),
                file: file_len,
            });
        }
        Ok(Self {
            runtime_pid: u32_at(16),
            app_pid: u32_at(20),
            session_id: u64_at(24),
            layout: expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let layout = Layout::new(4096, 8192).unwrap();
        assert_eq!(layout.a2r_offset, 512);
        assert_eq!(layout.r2a_offset, 512 + 512 + 4096);
        assert_eq!(layout.total_len(), 512 + 512 + 4096 + 512 + 8192);
        let h = Header {
            runtime_pid: 10,
            app_pid: 20,
            session_id: 3,
            layout,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b, layout.total_len()).unwrap(), h);
        assert!(matches!(
            Header::decode(&b, layout.total_len() + 1),
            Err(LayoutError::LengthMismatch { .. })
        ));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(
            Header::decode(&bad, layout.total_len()),
            Err(LayoutError::BadMagic)
        );
        let mut bad = b;
        bad[8] = 2;
        assert_eq!(
            Header::decode(&bad, layout.total_len()),
            Err(LayoutError::UnsupportedVersion(2))
        );
        assert!(Layout::new(3000, 4096).is_err());
        assert!(Layout::new(4096, 1 << 29).is_err());
    }
}
