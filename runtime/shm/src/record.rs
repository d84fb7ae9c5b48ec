//! Record framing and the message envelope (docs/shm-protocol.md §4–5).
//! Pure functions over byte slices: no shared memory here, so everything is
//! safe and fuzzable.
//!
//! ```text
//! record:   i32 length (header + payload, not padded) | i32 type | payload | zero padding to 8
//! message:  u32 method | u32 flags | u64 correlation | u32 status | u32 reserved | body
//! ```

use std::fmt;

/// Record header: length and type.
pub const RECORD_HEADER_LEN: usize = 8;
/// Records start on multiples of this.
pub const ALIGNMENT: usize = 8;
/// Record type of a message (its payload is an envelope and a body).
pub const TYPE_MESSAGE: i32 = 1;
/// Record type of padding at the end of the ring (its payload is ignored).
pub const TYPE_PADDING: i32 = -1;
/// Length of the envelope that starts a message's payload.
pub const ENVELOPE_LEN: usize = 24;
/// Bytes a message record takes besides its body.
pub const MESSAGE_OVERHEAD: usize = RECORD_HEADER_LEN + ENVELOPE_LEN;

/// Envelope flags.
pub mod flags {
    /// Response direction: the last record of this call (unary response,
    /// stream end marker or error).
    pub const END: u32 = 1;
    /// Request direction: cancel the call with this correlation id.
    pub const CANCEL: u32 = 2;
    /// Request direction: do not answer (one-way; errors are dropped too).
    pub const NO_REPLY: u32 = 4;
    /// Request direction: a further message of the client stream of the
    /// bidirectional call with this correlation id (the first request
    /// record, without MORE, opened it). Added to v1 with method 12.
    pub const MORE: u32 = 8;
    /// Both directions: the body starts with a call context block (u32
    /// length, then a `weft.runtime.v1.CallContext`), §5.1. Only when the
    /// header's CONTEXT feature bit is set.
    pub const CONTEXT: u32 = 16;
    /// Every flag v1 defines; others must be zero.
    pub const ALL: u32 = END | CANCEL | NO_REPLY | MORE | CONTEXT;
}

/// Rounds a record length up to the alignment.
pub const fn align(len: usize) -> usize {
    (len + ALIGNMENT - 1) & !(ALIGNMENT - 1)
}

/// The fixed part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Which RPC (docs/shm-protocol.md §6; [`crate::method`]).
    pub method: u32,
    /// [`flags`].
    pub flags: u32,
    /// Chosen by the app per call; every response record repeats it.
    pub correlation: u64,
    /// gRPC status code; 0 on requests and successful responses. When not
    /// 0 the body is the UTF-8 error message.
    pub status: u32,
}

impl Envelope {
    pub fn encode(&self) -> [u8; ENVELOPE_LEN] {
        let mut b = [0u8; ENVELOPE_LEN];
        b[0..4].copy_from_slice(&self.method.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.correlation.to_le_bytes());
        b[16..20].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    pub fn is_end(&self) -> bool {
        self.flags & flags::END != 0
    }
}

/// A payload that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    TooShort(usize),
    UnknownFlags(u32),
    ReservedNotZero(u32),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::TooShort(n) => write!(
                f,
                "message payload of {n} bytes is shorter than the {ENVELOPE_LEN}-byte envelope"
            ),
            EnvelopeError::UnknownFlags(x) => {
                write!(f, "envelope flags {x:#x} include bits v1 does not define")
            }
            EnvelopeError::ReservedNotZero(x) => {
                write!(f, "envelope reserved field is {x:#x}, not 0")
            }
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// Splits a message payload into its envelope and body.
pub fn decode_envelope(payload: &[u8]) -> Result<(Envelope, &[u8]), EnvelopeError> {
    if payload.len() < ENVELOPE_LEN {
        return Err(EnvelopeError::TooShort(payload.len()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(payload[o..o + 4].try_into().expect("4 bytes"));
    let env = Envelope {
        method: u32_at(0),
        flags: u32_at(4),
        correlation: u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes")),
        status: u32_at(16),
    };
    if env.flags & !flags::ALL != 0 {
        return Err(EnvelopeError::UnknownFlags(env.flags));
    }
    if u32_at(20) != 0 {
        return Err(EnvelopeError::ReservedNotZero(u32_at(20)));
    }
    Ok((env, &payload[ENVELOPE_LEN..]))
}

/// A context block (flag CONTEXT) that does not fit its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextError {
    /// The declared context length (or `None` when the body is shorter
    /// than the 4-byte length itself).
    pub declared: Option<u32>,
    pub body_len: usize,
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.declared {
            None => write!(
                f,
                "body of {} bytes is too short for the 4-byte call context length",
                self.body_len
            ),
            Some(n) => write!(
                f,
                "call context of {n} bytes does not fit the body of {} bytes",
                self.body_len
            ),
        }
    }
}

impl std::error::Error for ContextError {}

/// Splits the body of a record with flag CONTEXT into the encoded call
/// context and the message body (§5.1).
pub fn split_context(body: &[u8]) -> Result<(&[u8], &[u8]), ContextError> {
    let Some(len) = body.get(..4) else {
        return Err(ContextError {
            declared: None,
            body_len: body.len(),
        });
    };
    let n = u32::from_le_bytes(len.try_into().expect("4 bytes"));
    let rest = &body[4..];
    match usize::try_from(n) {
        Ok(n) if n <= rest.len() => Ok(rest.split_at(n)),
        _ => Err(ContextError {
            declared: Some(n),
            body_len: body.len(),
        }),
    }
}

/// The 4-byte length that precedes an encoded call context of `len` bytes.
pub fn context_prefix(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

/// A record header that cannot be accepted where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Length below the header size, beyond the end of the ring, beyond
    /// what the producer published, or beyond the largest record.
    BadLength { length: i32, at: u64, limit: u64 },
    /// A type other than message or padding.
    BadType { kind: i32, at: u64 },
    /// Padding that does not reach the end of the ring.
    BadPadding { length: i32, at: u64, to_end: u64 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength { length, at, limit } => {
                write!(f, "record at position {at} has length {length}, outside 8..={limit}")
            }
            FrameError::BadType { kind, at } => write!(f, "record at position {at} has unknown type {kind}"),
            FrameError::BadPadding { length, at, to_end } => write!(
                f,
                "padding record at position {at} has length {length} but the ring ends {to_end} bytes further"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// What a valid record header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A message whose payload is `length - 8` bytes; the next record is
    /// `advance` bytes further.
    Message { payload_len: usize, advance: u64 },
    /// Padding: skip to the start of the ring.
    Padding { advance: u64 },
}

/// Checks a record header read at ring position `at`.
///
/// * `to_end`: bytes from the record to the end of the ring's data area;
/// * `available`: bytes the producer has published from `at` on;
/// * `max_record`: the largest aligned record length allowed on this ring.
pub fn check_frame(
    length: i32,
    kind: i32,
    at: u64,
    to_end: u64,
    available: u64,
    max_record: u64,
) -> Result<Frame, FrameError> {
    let limit = to_end.min(available);
    if length < RECORD_HEADER_LEN as i32 || length as u64 > limit {
        return Err(FrameError::BadLength { length, at, limit });
    }
    let advance = align(length as usize) as u64;
    match kind {
        TYPE_PADDING if length as u64 == to_end => Ok(Frame::Padding { advance: to_end }),
        TYPE_PADDING => Err(FrameError::BadPadding { length, at, to_end }),
        TYPE_MESSAGE if advance <= limit && advance <= max_record => Ok(Frame::Message {
            payload_len: length as usize - RECORD_HEADER_LEN,
            advance,
        }),
        TYPE_MESSAGE => Err(FrameError::BadLength {
            length,
            at,
            limit: limit.min(max_record),
        }),
        other => Err(FrameError::BadType { kind: other, at }),
    }
}

/// Encodes a whole message record (header, envelope, body, zero padding
/// to 8 bytes) into `out`.
pub fn encode_message(env: &Envelope, body: &[u8], out: &mut Vec<u8>) {
    let length = MESSAGE_OVERHEAD + body.len();
    out.extend_from_slice(&(length as i32).to_le_bytes());
    out.extend_from_slice(&TYPE_MESSAGE.to_le_bytes());
    out.extend_from_slice(&env.encode());
    out.extend_from_slice(body);
    out.resize(out.len() + align(length) - length, 0);
}

/// Encodes a padding record header of `length` bytes (its payload is left
/// to the caller; zeros in the test vectors).
pub fn encode_padding(length: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&(length as i32).to_le_bytes());
    out.extend_from_slice(&TYPE_PADDING.to_le_bytes());
    out.resize(length, 0);
    out
}

/// One record decoded from a flat byte region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Message(Envelope, &'a [u8]),
    Padding,
}

/// Any error the decoder can report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated(usize),
    Frame(FrameError),
    Envelope(EnvelopeError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated(n) => write!(f, "{n} bytes left: too short for a record header"),
            DecodeError::Frame(e) => e.fmt(f),
            DecodeError::Envelope(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes every record of `region`, as if it were a ring's whole data area
/// starting at position 0 and fully published: the same checks the ring
/// consumer applies. The fuzz target and the random-bytes test drive this.
pub fn decode_region(region: &[u8], max_record: u64) -> Result<Vec<Decoded<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < region.len() {
        if region.len() - at < RECORD_HEADER_LEN {
            return Err(DecodeError::Truncated(region.len() - at));
        }
        let length = i32::from_le_bytes(region[at..at + 4].try_into().expect("4 bytes"));
        let kind = i32::from_le_bytes(region[at + 4..at + 8].try_into().expect("4 bytes"));
        let left = (region.len() - at) as u64;
        match check_frame(length, kind, at as u64, left, left, max_record)
            .map_err(DecodeError::Frame)?
        {
            Frame::Padding { advance } => {
                out.push(Decoded::Padding);
                at += advance as usize;
            }
            Frame::Message {
                payload_len,
                advance,
            } => {
                let payload = &region[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + payload_len];
                let (env, body) = decode_envelope(payload).map_err(DecodeError::Envelope)?;
                out.push(Decoded::Message(env, body));
                at += advance as usize;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_blocks_split_and_refuse_bad_lengths() {
        let mut body = context_prefix(3).to_vec();
        body.extend_from_slice(b"ctxmsg");
        assert_eq!(split_context(&body).unwrap(), (&b"ctx"[..], &b"msg"[..]));
        assert_eq!(split_context(&[0, 0, 0, 0]).unwrap(), (&b""[..], &b""[..]));
        assert_eq!(
            split_context(&[1, 0]).unwrap_err(),
            ContextError {
                declared: None,
                body_len: 2
            }
        );
        let e = split_context(&[9, 0, 0, 0, 1]).unwrap_err();
        assert_eq!(e.declared, Some(9));
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    use super::*;

    #[test]
    fn message_round_trip() {
        let env = Envelope {
            method: 2,
            flags: flags::END,
            correlation: 77,
            status: 0,
        };
        let mut buf = Vec::new();
        encode_message(&env, b"hello", &mut buf);
        assert_eq!(buf.len(), align(MESSAGE_OVERHEAD + 5));
        buf.extend(encode_padding(24));
        let got = decode_region(&buf, 1 << 20).unwrap();
        assert_eq!(got, vec![Decoded::Message(env, b"hello"), Decoded::Padding]);
    }

    #[test]
    fn frame_checks() {
        assert!(matches!(
            check_frame(4, TYPE_MESSAGE, 0, 64, 64, 64),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            check_frame(72, TYPE_MESSAGE, 0, 64, 64, 64),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            check_frame(40, TYPE_MESSAGE, 0, 64, 32, 64),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            check_frame(40, TYPE_MESSAGE, 0, 64, 64, 32),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            check_frame(8, 7, 0, 64, 64, 64),
            Err(FrameError::BadType { .. })
        ));
        assert!(matches!(
            check_frame(16, TYPE_PADDING, 0, 64, 64, 64),
            Err(FrameError::BadPadding { .. })
        ));
        assert_eq!(
            check_frame(64, TYPE_PADDING, 0, 64, 64, 64),
            Ok(Frame::Padding { advance: 64 })
        );
        assert_eq!(
            check_frame(33, TYPE_MESSAGE, 0, 64, 64, 64),
            Ok(Frame::Message {
                payload_len: 25,
                advance: 40
            })
        );
    }

    #[test]
    fn envelope_checks() {
        let mut p = Envelope::default().encode().to_vec();
        p[4] = 0x80;
        assert_eq!(decode_envelope(&p), Err(EnvelopeError::UnknownFlags(0x80)));
        let mut p = Envelope::default().encode().to_vec();
        p[20] = 1;
        assert_eq!(decode_envelope(&p), Err(EnvelopeError::ReservedNotZero(1)));
        assert_eq!(decode_envelope(&p[..10]), Err(EnvelopeError::TooShort(10)));
    }

    #[test]
    fn more_flag_is_defined() {
        assert_eq!(flags::MORE, 0x8);
        assert_eq!(flags::ALL & 0xF, 0xF, "END, CANCEL, NO_REPLY and MORE");
        assert_eq!(flags::CONTEXT, 0x10);
        assert_eq!(flags::ALL, 0x1F);
        let env = Envelope {
            method: 12,
            flags: flags::MORE,
            correlation: 9,
            status: 0,
        };
        let mut buf = Vec::new();
        encode_message(&env, b"ack", &mut buf);
        assert_eq!(
            decode_region(&buf, 1 << 20).unwrap(),
            vec![Decoded::Message(env, b"ack")]
        );
        let mut p = env.encode();
        let (got, body) = decode_envelope(&p).unwrap();
        assert_eq!((got.flags, body), (flags::MORE, &[][..]));
        // The bit after CONTEXT is still undefined.
        p[4] = 0x20;
        assert_eq!(decode_envelope(&p), Err(EnvelopeError::UnknownFlags(0x20)));
        p[4] = 0x28;
        assert_eq!(decode_envelope(&p), Err(EnvelopeError::UnknownFlags(0x28)));
    }
}
