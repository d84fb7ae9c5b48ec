//! The Dubbo frame: a 16-byte header and a body, and an incremental decoder.
//!
//! # Header (big-endian)
//!
//! | bytes | field |
//! | --- | --- |
//! | 0–1 | magic `0xdabb` |
//! | 2 | flags: `0x80` request, `0x40` two-way, `0x20` event; low 5 bits the serialization id (2 = hessian2) |
//! | 3 | status (responses; requests carry 0) |
//! | 4–11 | request id (u64) |
//! | 12–15 | body length (u32) |
//!
//! A response echoes the request id of its request; requests of one
//! connection may be answered in any order. An *event* frame is either a
//! heartbeat (its body is the serialization's encoding of `null`, hessian2
//! `N`) or another event (the read-only event a provider sends before it
//! shuts down: the hessian2 string `"R"`). A heartbeat request is two-way
//! and answered by a response with the event flag, status 20, the same
//! request id, serialization id and body ([`Frame::heartbeat_response`]).
//! A response whose status is not 20 carries as its body a single string
//! (hessian2: [`crate::hessian::error_body`]) saying why.
//!
//! # Decoding
//!
//! [`Decoder::decode`] takes whole frames off the front of a read buffer:
//! `Ok(None)` while a frame is incomplete (partial reads), one frame per
//! call (loop to drain several frames of one read). It checks the magic as
//! soon as the first bytes are in and the declared body length against the
//! configured maximum as soon as the header is in, so a hostile peer never
//! makes it buffer more than `16 + max_body` bytes. After an error the
//! stream cannot be resynchronised: close the connection (Dubbo's own codec
//! falls back to its telnet handler on a bad magic; Weft does not speak
//! telnet). The decoder keeps no state between calls and never panics.
//!
//! The header's flag byte is kept bit for bit (the flags and the 5-bit
//! serialization id cover all 8 bits), so a frame decoded and encoded again
//! is byte-identical and can be forwarded as is.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The two magic bytes every frame starts with.
pub const MAGIC: u16 = 0xdabb;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Flag bit: the frame is a request (clear: a response).
pub const FLAG_REQUEST: u8 = 0x80;
/// Flag bit: the request expects a response.
pub const FLAG_TWO_WAY: u8 = 0x40;
/// Flag bit: an event (heartbeat or read-only notice), not a call.
pub const FLAG_EVENT: u8 = 0x20;
/// Mask of the serialization id in the flag byte.
pub const SERIALIZATION_MASK: u8 = 0x1f;
/// Dubbo's default `payload` limit (8 MiB), used as the default maximum body.
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

/// Serialization ids as Dubbo numbers them (flag byte, low 5 bits).
pub mod serialization {
    /// hessian2 (Dubbo's classic default; the only one Weft reads).
    pub const HESSIAN2: u8 = 2;
    /// Java built-in serialization.
    pub const JAVA: u8 = 3;
    /// Dubbo's compacted Java serialization.
    pub const COMPACTED_JAVA: u8 = 4;
    /// fastjson (1).
    pub const FASTJSON: u8 = 6;
    /// Native Java serialization.
    pub const NATIVE_JAVA: u8 = 7;
    /// Kryo.
    pub const KRYO: u8 = 8;
    /// FST.
    pub const FST: u8 = 9;
    /// Caucho's own hessian (not hessian-lite).
    pub const NATIVE_HESSIAN: u8 = 10;
    /// Avro.
    pub const AVRO: u8 = 11;
    /// protostuff.
    pub const PROTOSTUFF: u8 = 12;
    /// Gson.
    pub const GSON: u8 = 16;
    /// Jackson.
    pub const JACKSON: u8 = 18;
    /// protobuf as JSON.
    pub const PROTOBUF_JSON: u8 = 21;
    /// protobuf.
    pub const PROTOBUF: u8 = 22;
    /// fastjson2 (JSONB); Dubbo 3.2+ prefers it unless told otherwise.
    pub const FASTJSON2: u8 = 23;

    /// A short name for logs and error messages.
    pub fn name(id: u8) -> &'static str {
        match id {
            HESSIAN2 => "hessian2",
            JAVA => "java",
            COMPACTED_JAVA => "compactedjava",
            FASTJSON => "fastjson",
            NATIVE_JAVA => "nativejava",
            KRYO => "kryo",
            FST => "fst",
            NATIVE_HESSIAN => "native-hessian",
            AVRO => "avro",
            PROTOSTUFF => "protostuff",
            GSON => "gson",
            JACKSON => "jackson",
            PROTOBUF_JSON => "protobuf-json",
            PROTOBUF => "protobuf",
            FASTJSON2 => "fastjson2",
            _ => "unknown",
        }
    }

    /// The body of a heartbeat in this serialization (its encoding of
    /// `null`), when known: hessian2 `N` (seen on the wire from Dubbo
    /// 3.3); fastjson2 a 4-byte length 1 and JSONB null `0xaf` (from
    /// Dubbo's source).
    pub fn null_body(id: u8) -> Option<&'static [u8]> {
        match id {
            HESSIAN2 => Some(b"N"),
            FASTJSON2 => Some(&[0, 0, 0, 1, 0xaf]),
            _ => None,
        }
    }
}

// === impl Status ===

/// The status byte of a response, with the codes Dubbo defines as constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u8);

impl Status {
    /// 20: the call completed (its result may still be an exception).
    pub const OK: Status = Status(20);
    /// 25: the body could not be serialized (e.g. over the payload limit).
    pub const SERIALIZATION_ERROR: Status = Status(25);
    /// 30: the consumer gave up waiting.
    pub const CLIENT_TIMEOUT: Status = Status(30);
    /// 31: the provider side gave up waiting.
    pub const SERVER_TIMEOUT: Status = Status(31);
    /// 35: the channel is inactive.
    pub const CHANNEL_INACTIVE: Status = Status(35);
    /// 40: the request could not be decoded.
    pub const BAD_REQUEST: Status = Status(40);
    /// 50: the response could not be encoded.
    pub const BAD_RESPONSE: Status = Status(50);
    /// 60: no such service (or no provider for it).
    pub const SERVICE_NOT_FOUND: Status = Status(60);
    /// 70: the service failed.
    pub const SERVICE_ERROR: Status = Status(70);
    /// 80: the provider side failed.
    pub const SERVER_ERROR: Status = Status(80);
    /// 90: the consumer side failed.
    pub const CLIENT_ERROR: Status = Status(90);
    /// 100: the provider's thread pool is exhausted.
    pub const SERVER_THREADPOOL_EXHAUSTED_ERROR: Status = Status(100);

    /// Dubbo's constant name for a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Status::OK => "OK",
            Status::SERIALIZATION_ERROR => "SERIALIZATION_ERROR",
            Status::CLIENT_TIMEOUT => "CLIENT_TIMEOUT",
            Status::SERVER_TIMEOUT => "SERVER_TIMEOUT",
            Status::CHANNEL_INACTIVE => "CHANNEL_INACTIVE",
            Status::BAD_REQUEST => "BAD_REQUEST",
            Status::BAD_RESPONSE => "BAD_RESPONSE",
            Status::SERVICE_NOT_FOUND => "SERVICE_NOT_FOUND",
            Status::SERVICE_ERROR => "SERVICE_ERROR",
            Status::SERVER_ERROR => "SERVER_ERROR",
            Status::CLIENT_ERROR => "CLIENT_ERROR",
            Status::SERVER_THREADPOOL_EXHAUSTED_ERROR => "SERVER_THREADPOOL_EXHAUSTED_ERROR",
            _ => return None,
        })
    }

    /// Whether this is 20 (OK).
    pub fn is_ok(self) -> bool {
        self == Status::OK
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} {n}", self.0),
            None => write!(f, "{} (unknown status)", self.0),
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({self})")
    }
}

// === impl Header ===

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Request (true) or response.
    pub request: bool,
    /// Two-way: a response is expected (requests only, by Dubbo's use).
    pub two_way: bool,
    /// An event (heartbeat, read-only notice) rather than a call.
    pub event: bool,
    /// Serialization id, 0–31 (see [`serialization`]).
    pub serialization: u8,
    /// Status byte (meaningful in responses; requests carry 0).
    pub status: Status,
    /// Request id; a response carries its request's.
    pub request_id: u64,
    /// Length of the body that follows the header.
    pub body_len: u32,
}

impl Header {
    /// The flag byte.
    pub fn flags(&self) -> u8 {
        let mut f = self.serialization & SERIALIZATION_MASK;
        if self.request {
            f |= FLAG_REQUEST;
        }
        if self.two_way {
            f |= FLAG_TWO_WAY;
        }
        if self.event {
            f |= FLAG_EVENT;
        }
        f
    }

    /// Parses 16 header bytes; only the magic can be wrong.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let magic = u16::from_be_bytes([bytes[0], bytes[1]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let flags = bytes[2];
        Ok(Header {
            request: flags & FLAG_REQUEST != 0,
            two_way: flags & FLAG_TWO_WAY != 0,
            event: flags & FLAG_EVENT != 0,
            serialization: flags & SERIALIZATION_MASK,
            status: Status(bytes[3]),
            request_id: u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
            body_len: u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")),
        })
    }

    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2] = self.flags();
        out[3] = self.status.0;
        out[4..12].copy_from_slice(&self.request_id.to_be_bytes());
        out[12..16].copy_from_slice(&self.body_len.to_be_bytes());
        out
    }
}

// === impl Frame ===

/// What an event frame is, judged from its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A heartbeat (body: the serialization's `null`).
    Heartbeat,
    /// The read-only notice (hessian2 string `"R"`): the provider is going away.
    ReadOnly,
    /// Any other event body.
    Other,
}

/// A whole frame: header and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The header; `body_len` always equals `body.len()` for frames built
    /// here or decoded.
    pub header: Header,
    /// The body, untouched.
    pub body: Bytes,
}

impl Frame {
    fn new(mut header: Header, body: Bytes) -> Frame {
        header.body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        Frame { header, body }
    }

    /// A call (not an event).
    pub fn request(request_id: u64, serialization: u8, two_way: bool, body: Bytes) -> Frame {
        Frame::new(
            Header {
                request: true,
                two_way,
                event: false,
                serialization,
                status: Status(0),
                request_id,
                body_len: 0,
            },
            body,
        )
    }

    /// A response to call `request_id`.
    pub fn response(request_id: u64, serialization: u8, status: Status, body: Bytes) -> Frame {
        Frame::new(
            Header {
                request: false,
                two_way: false,
                event: false,
                serialization,
                status,
                request_id,
                body_len: 0,
            },
            body,
        )
    }

    /// A response with a status other than OK and a hessian2 string body
    /// saying why, as Dubbo's own codec writes it (e.g. 60
    /// SERVICE_NOT_FOUND when no provider is known). Always hessian2, the
    /// serialization every Dubbo consumer can read.
    pub fn error_response(request_id: u64, status: Status, message: &str) -> Frame {
        Frame::response(
            request_id,
            serialization::HESSIAN2,
            status,
            crate::hessian::error_body(message),
        )
    }

    /// A two-way hessian2 heartbeat request.
    pub fn heartbeat_request(request_id: u64) -> Frame {
        let mut f = Frame::request(
            request_id,
            serialization::HESSIAN2,
            true,
            Bytes::from_static(crate::hessian::NULL_BODY),
        );
        f.header.event = true;
        f
    }

    /// For an event request, what it is; `None` for other frames.
    pub fn event_kind(&self) -> Option<EventKind> {
        if !self.header.event {
            return None;
        }
        if serialization::null_body(self.header.serialization) == Some(&self.body[..]) {
            return Some(EventKind::Heartbeat);
        }
        if self.header.serialization == serialization::HESSIAN2 && &self.body[..] == b"\x01R" {
            return Some(EventKind::ReadOnly);
        }
        Some(EventKind::Other)
    }

    /// Whether this is a heartbeat (request or response).
    pub fn is_heartbeat(&self) -> bool {
        self.event_kind() == Some(EventKind::Heartbeat)
    }

    /// The answer to a two-way heartbeat request, as Dubbo gives it:
    /// a response with the event flag, status OK, the same request id,
    /// serialization and (null) body. `None` when `self` is not a two-way
    /// heartbeat request (a one-way heartbeat gets no answer).
    pub fn heartbeat_response(&self) -> Option<Frame> {
        if !(self.header.request && self.header.two_way && self.is_heartbeat()) {
            return None;
        }
        let mut f = Frame::response(
            self.header.request_id,
            self.header.serialization,
            Status::OK,
            self.body.clone(),
        );
        f.header.event = true;
        Some(f)
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut header = self.header;
        header.body_len = u32::try_from(self.body.len()).unwrap_or(u32::MAX);
        dst.reserve(HEADER_LEN + self.body.len());
        dst.put_slice(&header.to_bytes());
        dst.put_slice(&self.body);
    }

    /// The encoded frame.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        self.encode(&mut b);
        b.freeze()
    }
}

// === impl Decoder ===

/// Why a byte stream is not a Dubbo frame stream. Close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not `0xdabb`.
    #[error("not a Dubbo frame: bad magic 0x{found:04x} (expected 0xdabb)")]
    BadMagic {
        /// The two bytes found (a single byte read so far is shown as its high byte).
        found: u16,
    },
    /// The declared body length is over the limit.
    #[error(
        "Dubbo frame (request id {request_id}) declares a body of {len} bytes, over the limit of {max} bytes"
    )]
    BodyTooLarge {
        /// Declared length.
        len: u32,
        /// Configured maximum.
        max: usize,
        /// The frame's request id (to answer it, when it is a request).
        request_id: u64,
    },
}

/// Incremental frame decoder with a maximum body size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoder {
    max_body: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_BODY)
    }
}

impl Decoder {
    /// A decoder refusing bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> Decoder {
        Decoder { max_body }
    }

    /// The maximum body size.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Looks at the front of `buf`: `Ok(None)` while fewer than 16 bytes are
    /// in (after checking what magic bytes there are), else the header,
    /// checked against the limit. Consumes nothing.
    pub fn peek_header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let magic = MAGIC.to_be_bytes();
        if let Some(&b0) = buf.first() {
            if b0 != magic[0] {
                let found = u16::from_be_bytes([b0, buf.get(1).copied().unwrap_or(0)]);
                return Err(FrameError::BadMagic { found });
            }
        }
        if let Some(&b1) = buf.get(1) {
            if b1 != magic[1] {
                return Err(FrameError::BadMagic {
                    found: u16::from_be_bytes([buf[0], b1]),
                });
            }
        }
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let header = Header::parse(head.try_into().expect("16 bytes"))?;
        if header.body_len as usize > self.max_body {
            return Err(FrameError::BodyTooLarge {
                len: header.body_len,
                max: self.max_body,
                request_id: header.request_id,
            });
        }
        Ok(Some(header))
    }

    /// Takes the next whole frame off the front of `buf`; `Ok(None)` when
    /// more bytes are needed (then reserves room for the rest of the frame,
    /// at most `16 + max_body`).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.peek_header(buf)? else {
            return Ok(None);
        };
        let total = HEADER_LEN + header.body_len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(header.body_len as usize).freeze();
        Ok(Some(Frame { header, body }))
    }

    /// Decodes every whole frame at the front of `bytes` (tests, tools):
    /// the frames and the number of bytes they used.
    pub fn decode_all(&self, bytes: &[u8]) -> Result<(Vec<Frame>, usize), FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = self.decode(&mut buf)? {
            frames.push(f);
        }
        Ok((frames, bytes.len() - buf.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame::request(0x0102_0304_0506_0708, 2, true, Bytes::from_static(b"hello"))
    }

    #[test]
    fn header_layout_is_dubbos() {
        let bytes = sample().to_bytes();
        assert_eq!(
            &bytes[..HEADER_LEN],
            &[0xda, 0xbb, 0xc2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 5]
        );
        assert_eq!(&bytes[HEADER_LEN..], b"hello");
        let hb = Frame::heartbeat_request(9).to_bytes();
        assert_eq!(hb[2], 0xe2, "request | two-way | event | hessian2");
        assert_eq!(&hb[HEADER_LEN..], b"N");
        let err = Frame::error_response(7, Status::SERVICE_NOT_FOUND, "no").to_bytes();
        assert_eq!(err[2], 0x02);
        assert_eq!(err[3], 60);
        assert_eq!(&err[HEADER_LEN..], b"\x02no");
    }

    #[test]
    fn every_flag_byte_round_trips() {
        for flags in 0..=255u8 {
            let mut raw = sample().to_bytes().to_vec();
            raw[2] = flags;
            raw[3] = flags.wrapping_mul(7);
            let (frames, used) = Decoder::default().decode_all(&raw).unwrap();
            assert_eq!(used, raw.len());
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].header.flags(), flags);
            assert_eq!(&frames[0].to_bytes()[..], &raw[..], "flags {flags:#x}");
        }
    }

    #[test]
    fn partial_reads_and_several_frames_per_read() {
        let a = sample();
        let b = Frame::response(5, 2, Status::OK, Bytes::from_static(b"\x91\x05world"));
        let c = Frame::heartbeat_request(6);
        let mut all = BytesMut::new();
        for f in [&a, &b, &c] {
            f.encode(&mut all);
        }
        let all = all.freeze();
        let d = Decoder::default();
        // Every split point, fed in two pieces.
        for cut in 0..=all.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            buf.extend_from_slice(&all[..cut]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![a.clone(), b.clone(), c.clone()], "cut at {cut}");
            assert!(buf.is_empty());
        }
        // One byte at a time.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in all.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn bad_magic_is_named_from_the_first_byte() {
        let d = Decoder::default();
        for (input, found) in [
            (&b"G"[..], 0x4700),
            (&b"GET / HTTP/1.1\r\n"[..], 0x4745),
            (&[0xda, 0x00][..], 0xda00),
            (&[0xbb, 0xda, 0, 0][..], 0xbbda),
        ] {
            let mut buf = BytesMut::from(input);
            let err = d.decode(&mut buf).unwrap_err();
            assert_eq!(err, FrameError::BadMagic { found });
            assert!(err.to_string().contains("bad magic"), "{err}");
        }
        // A lone correct first byte is not an error yet.
        assert_eq!(d.decode(&mut BytesMut::from(&[0xda][..])).unwrap(), None);
    }

    #[test]
    fn oversized_bodies_are_refused_before_buffering() {
        let d = Decoder::new(1024);
        let mut f = sample();
        f.body = Bytes::from(vec![0u8; 1024]);
        assert!(
            d.decode_all(&f.to_bytes()).is_ok(),
            "exactly the limit is fine"
        );
        let mut header = f.header;
        header.body_len = 1025;
        let mut buf = BytesMut::from(&header.to_bytes()[..]);
        let err = d.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::BodyTooLarge {
                len: 1025,
                max: 1024,
                request_id: f.header.request_id
            }
        );
        assert!(err.to_string().contains("1025"), "{err}");
        // A declared 4 GiB body: refused, and nothing was reserved for it.
        header.body_len = u32::MAX;
        let mut buf = BytesMut::from(&header.to_bytes()[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::BodyTooLarge { .. })
        ));
        assert!(buf.capacity() < 4096);
    }

    #[test]
    fn heartbeats_are_recognised_and_answered() {
        let hb = Frame::heartbeat_request(42);
        assert_eq!(hb.event_kind(), Some(EventKind::Heartbeat));
        let resp = hb.heartbeat_response().unwrap();
        assert!(!resp.header.request && resp.header.event);
        assert_eq!(resp.header.status, Status::OK);
        assert_eq!(resp.header.request_id, 42);
        assert_eq!(&resp.body[..], b"N");
        assert_eq!(
            resp.heartbeat_response(),
            None,
            "responses are not answered"
        );
        // One-way heartbeats get no answer.
        let mut one_way = hb.clone();
        one_way.header.two_way = false;
        assert_eq!(one_way.heartbeat_response(), None);
        // fastjson2's null.
        let mut fj = hb.clone();
        fj.header.serialization = serialization::FASTJSON2;
        fj.body = Bytes::from_static(&[0, 0, 0, 1, 0xaf]);
        assert_eq!(fj.heartbeat_response().unwrap().body, fj.body);
        // The read-only event and others.
        let mut ro = hb.clone();
        ro.header.two_way = false;
        ro.body = Bytes::from_static(b"\x01R");
        assert_eq!(ro.event_kind(), Some(EventKind::ReadOnly));
        let mut other = hb.clone();
        other.body = Bytes::from_static(b"\x01X");
        assert_eq!(other.event_kind(), Some(EventKind::Other));
        assert_eq!(other.heartbeat_response(), None);
        assert_eq!(sample().event_kind(), None);
    }

    #[test]
    fn status_names() {
        assert_eq!(
            Status::SERVICE_NOT_FOUND.to_string(),
            "60 SERVICE_NOT_FOUND"
        );
        assert_eq!(Status(33).to_string(), "33 (unknown status)");
        for (code, name) in [
            (20, "OK"),
            (30, "CLIENT_TIMEOUT"),
            (31, "SERVER_TIMEOUT"),
            (40, "BAD_REQUEST"),
            (50, "BAD_RESPONSE"),
            (60, "SERVICE_NOT_FOUND"),
            (70, "SERVICE_ERROR"),
            (80, "SERVER_ERROR"),
            (90, "CLIENT_ERROR"),
            (100, "SERVER_THREADPOOL_EXHAUSTED_ERROR"),
        ] {
            assert_eq!(Status(code).name(), Some(name));
        }
    }
}
