//! The control connection on the runtime's Unix socket
//! (docs/shm-protocol.md §2): hello, welcome, mapped acknowledgement, then
//! wake-up bytes and, from the runtime, one goodbye frame before it closes.
//! All integers little-endian.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;

use crate::layout::PROTOCOL_VERSION;

/// Start of the app's hello.
pub const HELLO_MAGIC: [u8; 8] = *b"WEFTHELO";
/// Start of the runtime's welcome.
pub const WELCOME_MAGIC: [u8; 8] = *b"WEFTWLCM";
/// The app's acknowledgement that it has mapped the segment.
pub const MAPPED_MAGIC: [u8; 8] = *b"WEFTMAPD";
/// A wake-up byte (any byte but [`GOODBYE_BYTE`] wakes the peer).
pub const WAKE_BYTE: u8 = 0x01;
/// Starts the runtime's goodbye frame.
pub const GOODBYE_BYTE: u8 = 0xFF;
/// Fixed part of the hello.
pub const HELLO_FIXED_LEN: usize = 24;
/// Longest app id.
pub const MAX_APP_ID: usize = 255;
/// Longest API token.
pub const MAX_TOKEN: usize = 4096;
/// Longest welcome or goodbye text.
pub const MAX_TEXT: usize = 64 * 1024;

/// A malformed control frame.
#[derive(Debug)]
pub enum ControlError {
    Io(io::Error),
    BadMagic {
        expected: &'static str,
    },
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    NotUtf8(&'static str),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Io(e) => write!(f, "control socket: {e}"),
            ControlError::BadMagic { expected } => {
                write!(f, "control frame does not start with {expected}")
            }
            ControlError::TooLong { field, len, max } => {
                write!(f, "{field} of {len} bytes is longer than {max}")
            }
            ControlError::NotUtf8(field) => write!(f, "{field} is not UTF-8"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> Self {
        ControlError::Io(e)
    }
}

fn read_vec(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn utf8(v: Vec<u8>, field: &'static str) -> Result<String, ControlError> {
    String::from_utf8(v).map_err(|_| ControlError::NotUtf8(field))
}

/// The app's first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    /// Requested app→runtime ring size (0: the runtime's default).
    pub a2r_capacity: u32,
    /// Requested runtime→app ring size (0: the runtime's default).
    pub r2a_capacity: u32,
    pub app_id: String,
    /// The runtime's API token when it has one, else empty.
    pub token: String,
}

impl Hello {
    pub fn new(app_id: &str, token: &str, a2r_capacity: u32, r2a_capacity: u32) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            a2r_capacity,
            r2a_capacity,
            app_id: app_id.to_string(),
            token: token.to_string(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HELLO_FIXED_LEN + self.app_id.len() + self.token.len());
        b.extend_from_slice(&HELLO_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.a2r_capacity.to_le_bytes());
        b.extend_from_slice(&self.r2a_capacity.to_le_bytes());
        b.extend_from_slice(&(self.app_id.len() as u16).to_le_bytes());
        b.extend_from_slice(&(self.token.len() as u16).to_le_bytes());
        b.extend_from_slice(self.app_id.as_bytes());
        b.extend_from_slice(self.token.as_bytes());
        b
    }

    pub fn read_from(r: &mut impl Read) -> Result<Self, ControlError> {
        let mut f = [0u8; HELLO_FIXED_LEN];
        r.read_exact(&mut f)?;
        if f[0..8] != HELLO_MAGIC {
            return Err(ControlError::BadMagic {
                expected: "WEFTHELO",
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().expect("4 bytes"));
        let app_len = u16::from_le_bytes([f[20], f[21]]) as usize;
        let token_len = u16::from_le_bytes([f[22], f[23]]) as usize;
        if app_len > MAX_APP_ID {
            return Err(ControlError::TooLong {
                field: "app id",
                len: app_len,
                max: MAX_APP_ID,
            });
        }
        if token_len > MAX_TOKEN {
            return Err(ControlError::TooLong {
                field: "token",
                len: token_len,
                max: MAX_TOKEN,
            });
        }
        Ok(Self {
            version: u32_at(8),
            a2r_capacity: u32_at(12),
            r2a_capacity: u32_at(16),
            app_id: utf8(read_vec(r, app_len)?, "app id")?,
            token: utf8(read_vec(r, token_len)?, "token")?,
        })
    }
}

/// The runtime's answer to a hello: the segment path, or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u32,
    /// gRPC status code: 0 when the segment is ready.
    pub status: u32,
    /// The segment's path when `status` is 0, else the error message.
    pub text: String,
}

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + self.text.len());
        b.extend_from_slice(&WELCOME_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&(self.text.len() as u32).to_le_bytes());
        b.extend_from_slice(self.text.as_bytes());
        b
    }

    pub fn read_from(r: &mut impl Read) -> Result<Self, ControlError> {
        let mut f = [0u8; 20];
        r.read_exact(&mut f)?;
        if f[0..8] != WELCOME_MAGIC {
            return Err(ControlError::BadMagic {
                expected: "WEFTWLCM",
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().expect("4 bytes"));
        let len = u32_at(16) as usize;
        if len > MAX_TEXT {
            return Err(ControlError::TooLong {
                field: "welcome text",
                len,
                max: MAX_TEXT,
            });
        }
        Ok(Self {
            version: u32_at(8),
            status: u32_at(12),
            text: utf8(read_vec(r, len)?, "welcome text")?,
        })
    }
}

/// The runtime's last words on a session: why it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    pub code: u32,
    pub message: String,
}

impl Goodbye {
    pub fn encode(&self) -> Vec<u8> {
        let msg = &self.message.as_bytes()[..self.message.len().min(MAX_TEXT)];
        let mut b = Vec::with_capacity(9 + msg.len());
        b.push(GOODBYE_BYTE);
        b.extend_from_slice(&self.code.to_le_bytes());
        b.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        b.extend_from_slice(msg);
        b
    }

    /// Parses the frame after its leading 0xFF byte.
    pub fn read_after_marker(r: &mut impl Read) -> Result<Self, ControlError> {
        let mut f = [0u8; 8];
        r.read_exact(&mut f)?;
        let code = u32::from_le_bytes(f[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(f[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_TEXT {
            return Err(ControlError::TooLong {
                field: "goodbye message",
                len,
                max: MAX_TEXT,
            });
        }
        let message = String::from_utf8_lossy(&read_vec(r, len)?).into_owned();
        Ok(Self { code, message })
    }
}

// === impl socket helpers ===

/// Writes one wake-up byte without blocking. A full socket buffer means a
/// wake-up is already pending, which is as good.
pub fn send_wake(sock: &UnixStream) -> io::Result<()> {
    let byte = WAKE_BYTE;
    // SAFETY: `sock` owns a valid open descriptor for the duration of the
    // call; the buffer is one byte on our stack, valid for reads of length 1.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&byte as *const u8).cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
        _ => Err(e),
    }
}

/// Whether the peer has closed its end: a non-blocking peek that reads
/// end-of-file. Pending bytes or an empty open socket answer `false`.
pub fn peer_closed(sock: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: valid descriptor as above; the buffer is one writable byte on
    // our stack; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    if n > 0 {
        return false;
    }
    !matches!(
        io::Error::last_os_error().kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// The effective user id of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let h = Hello::new("orders", "tok", 4096, 0);
        assert_eq!(Hello::read_from(&mut &h.encode()[..]).unwrap(), h);
        let w = Welcome {
            version: 1,
            status: 0,
            text: "/dev/shm/weft-1".into(),
        };
        assert_eq!(Welcome::read_from(&mut &w.encode()[..]).unwrap(), w);
        let g = Goodbye {
            code: 3,
            message: "bad".into(),
        };
        let b = g.encode();
        assert_eq!(b[0], GOODBYE_BYTE);
        assert_eq!(Goodbye::read_after_marker(&mut &b[1..]).unwrap(), g);
        let mut bad = h.encode();
        bad[0] = 0;
        assert!(matches!(
            Hello::read_from(&mut &bad[..]),
            Err(ControlError::BadMagic { .. })
        ));
    }

    #[test]
    fn wake_and_close_detection() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!peer_closed(&a));
        send_wake(&b).unwrap();
        assert!(!peer_closed(&a));
        drop(b);
        let mut a = a;
        let mut buf = [0u8; 4];
        assert_eq!(a.read(&mut buf).unwrap(), 1);
        assert!(peer_closed(&a));
    }
}
