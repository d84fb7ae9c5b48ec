//! Just enough hessian2 (serialization id 2) to route Dubbo calls.
//!
//! # What a Dubbo request body holds
//!
//! One hessian2 stream (class definitions, type names and references are
//! shared by everything in it), holding in order: the Dubbo protocol
//! version (a string, `"2.0.2"`), the service path (the interface name),
//! the service version (`"0.0.0"` when none is set), the method name, the
//! parameter-type descriptor (JVM descriptors run together:
//! `Ljava/lang/String;I[J`; empty when the method takes none), then one
//! value per parameter, then the attachments map (`path`, `interface`,
//! `version`, `group`, `timeout`, `remote.application`, …).
//!
//! [`read_request`] decodes the five strings, counts the parameters from the
//! descriptor, *skips* the arguments without building them (their byte range
//! is returned, so they pass through untouched), then decodes the
//! attachments. [`read_response`] does the same for a response body (a
//! result-type flag, the value or exception, optional attachments).
//!
//! # The skipper and its limits
//!
//! Every hessian2 form is understood: null, booleans, all int, long and
//! double encodings (compact one/two/three-byte forms, 0x5f "double as
//! milli-units"), both date forms, strings (short, medium, chunked `R`…`S`;
//! lengths count UTF-16 units, a 4-byte UTF-8 sequence counts as two),
//! binary (short, medium, chunked `A`…`B`), typed and untyped, fixed and
//! variable lists, typed and untyped maps, class definitions and object
//! instances (both forms), references, type references. It:
//!
//! * never panics and never reads past the body;
//! * allocates nothing sized by a declared length (only one small entry
//!   per class definition, bounded by [`Limits::max_class_defs`]);
//! * consumes at least one byte per value, so its work is linear in the
//!   body's size;
//! * refuses nesting deeper than [`Limits::max_depth`] (lists, maps and
//!   objects inside each other);
//! * is strict where framing depends on it (unknown codes, class or type
//!   references to definitions not seen, bad UTF-8 lead bytes, negative
//!   lengths) and lenient where it does not (a value reference `Q` is not
//!   checked against the values seen, continuation bytes of UTF-8 are not
//!   checked: Dubbo's hessian-lite does neither).
//!
//! Strings it *decodes* (the five prefix fields, attachment keys and
//! values) must be valid UTF-16 once assembled (surrogate pairs, written by
//! Java as two 3-byte sequences, are joined). Prefix fields may be hessian
//! `null` (read as empty, as Dubbo's `readUTF` gives null). Lengths inside
//! lists and objects are read as hessian ints only.
//!
//! # Writing
//!
//! [`Writer`] encodes the values the runtime produces (strings, ints,
//! longs, doubles, booleans, null, binary, untyped maps and lists) the way
//! hessian-lite's `Hessian2Output` does, [`error_body`] is the body of a
//! response whose status is not OK (a single string), [`NULL_BODY`] the
//! body of a heartbeat, and [`encode_request`] a whole request body (used by
//! tests and tools to call real Dubbo providers).

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

/// Body of a heartbeat request or response (hessian2 `null`).
pub const NULL_BODY: &[u8] = b"N";

/// Response flag: an exception follows.
pub const RESPONSE_WITH_EXCEPTION: i32 = 0;
/// Response flag: a value follows.
pub const RESPONSE_VALUE: i32 = 1;
/// Response flag: the result is null.
pub const RESPONSE_NULL_VALUE: i32 = 2;
/// Response flag: an exception, then attachments.
pub const RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS: i32 = 3;
/// Response flag: a value, then attachments (what Dubbo 2.0.2+ peers send).
pub const RESPONSE_VALUE_WITH_ATTACHMENTS: i32 = 4;
/// Response flag: null, then attachments.
pub const RESPONSE_NULL_VALUE_WITH_ATTACHMENTS: i32 = 5;

/// Bounds on what a body may make the reader do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of lists, maps and objects.
    pub max_depth: u32,
    /// Most class definitions in one body.
    pub max_class_defs: usize,
    /// Most attachments decoded from one body.
    pub max_attachments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 128,
            max_class_defs: 65_536,
            max_attachments: 4096,
        }
    }
}

// === errors ===

/// What was wrong in a hessian2 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body ended inside a value.
    Truncated,
    /// A byte that cannot start the expected item.
    UnexpectedCode {
        /// The byte.
        code: u8,
        /// What was expected there.
        expected: &'static str,
    },
    /// A UTF-8 lead byte hessian2 does not allow.
    BadUtf8 {
        /// The byte.
        byte: u8,
    },
    /// A decoded string is not valid UTF-16 (a lone surrogate).
    BadUtf16,
    /// Nesting over [`Limits::max_depth`].
    TooDeep {
        /// The limit.
        max: u32,
    },
    /// More class definitions than [`Limits::max_class_defs`].
    TooManyClassDefs {
        /// The limit.
        max: usize,
    },
    /// More attachments than [`Limits::max_attachments`].
    TooManyAttachments {
        /// The limit.
        max: usize,
    },
    /// An object refers to a class definition not seen.
    UnknownClass {
        /// The index used.
        index: i64,
        /// Definitions seen so far.
        defined: usize,
    },
    /// A type reference to a type name not seen.
    UnknownType {
        /// The index used.
        index: i64,
        /// Type names seen so far.
        defined: usize,
    },
    /// A negative length, count or reference.
    Negative {
        /// Of what.
        what: &'static str,
        /// The value.
        value: i64,
    },
    /// A field count larger than the rest of the body could hold.
    ImplausibleCount {
        /// Of what.
        what: &'static str,
        /// The value.
        value: i64,
    },
    /// The parameter-type descriptor is malformed.
    BadDescriptor {
        /// Why.
        reason: String,
    },
    /// An unknown response flag.
    BadResponseFlag {
        /// The flag read.
        flag: i64,
    },
    /// The attachments are not a map.
    NotAMap,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Truncated => write!(f, "body ends inside a value"),
            ErrorKind::UnexpectedCode { code, expected } => {
                write!(f, "unexpected code 0x{code:02x} (expected {expected})")
            }
            ErrorKind::BadUtf8 { byte } => write!(f, "invalid UTF-8 lead byte 0x{byte:02x}"),
            ErrorKind::BadUtf16 => write!(f, "string holds a lone UTF-16 surrogate"),
            ErrorKind::TooDeep { max } => write!(f, "values nested deeper than {max} levels"),
            ErrorKind::TooManyClassDefs { max } => {
                write!(f, "more than {max} class definitions")
            }
            ErrorKind::TooManyAttachments { max } => write!(f, "more than {max} attachments"),
            ErrorKind::UnknownClass { index, defined } => write!(
                f,
                "object of class definition #{index}, but only {defined} are defined"
            ),
            ErrorKind::UnknownType { index, defined } => write!(
                f,
                "type reference #{index}, but only {defined} type names were seen"
            ),
            ErrorKind::Negative { what, value } => write!(f, "negative {what} ({value})"),
            ErrorKind::ImplausibleCount { what, value } => {
                write!(f, "{what} of {value} does not fit in the rest of the body")
            }
            ErrorKind::BadDescriptor { reason } => {
                write!(f, "bad parameter-type descriptor: {reason}")
            }
            ErrorKind::BadResponseFlag { flag } => {
                write!(f, "unknown response flag {flag} (expected 0 to 5)")
            }
            ErrorKind::NotAMap => write!(f, "attachments are not a map"),
        }
    }
}

/// A hessian2 body could not be read: what, where, and in which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hessian2 {context}: {kind} at body offset {offset}")]
pub struct HessianError {
    /// What was wrong.
    pub kind: ErrorKind,
    /// Byte offset in the body.
    pub offset: usize,
    /// The field being read ("service path", "argument 2 of 3", …).
    pub context: String,
}

type Result<T, E = Fail> = std::result::Result<T, E>;

/// An error before its context is attached.
#[derive(Debug)]
struct Fail {
    kind: ErrorKind,
    offset: usize,
}

impl Fail {
    fn at(self, context: impl Into<String>) -> HessianError {
        HessianError {
            kind: self.kind,
            offset: self.offset,
            context: context.into(),
        }
    }
}

// === impl Reader ===

/// A cursor over one hessian2 stream, with the stream's shared state.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Field count of each class definition seen.
    class_defs: Vec<u32>,
    /// Number of type names seen.
    types: usize,
    limits: Limits,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], limits: Limits) -> Self {
        Reader {
            buf,
            pos: 0,
            class_defs: Vec::new(),
            types: 0,
            limits,
        }
    }

    fn fail(&self, kind: ErrorKind) -> Fail {
        Fail {
            kind,
            offset: self.pos,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.fail(ErrorKind::Truncated))
    }

    fn byte(&mut self) -> Result<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Fail {
                kind: ErrorKind::Truncated,
                offset: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    fn be_i32(&mut self) -> Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn be_i64(&mut self) -> Result<i64> {
        let b = self.take(8)?;
        Ok(i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// An int in any of its encodings.
    fn int(&mut self, expected: &'static str) -> Result<i32> {
        let start = self.pos;
        let code = self.byte()?;
        Ok(match code {
            0x80..=0xbf => code as i32 - 0x90,
            0xc0..=0xcf => ((code as i32 - 0xc8) << 8) | self.byte()? as i32,
            0xd0..=0xd7 => {
                let b = self.take(2)?;
                ((code as i32 - 0xd4) << 16) | ((b[0] as i32) << 8) | b[1] as i32
            }
            b'I' => self.be_i32()?,
            _ => {
                self.pos = start;
                return Err(self.fail(ErrorKind::UnexpectedCode { code, expected }));
            }
        })
    }

    /// A long in any of its encodings, or an int.
    fn long_or_int(&mut self) -> Result<Option<i64>> {
        let code = self.peek()?;
        Ok(Some(match code {
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => self.int("int")? as i64,
            0xd8..=0xef => {
                self.pos += 1;
                code as i64 - 0xe0
            }
            0xf0..=0xff => {
                self.pos += 1;
                ((code as i64 - 0xf8) << 8) | self.byte()? as i64
            }
            0x38..=0x3f => {
                self.pos += 1;
                let b = self.take(2)?;
                ((code as i64 - 0x3c) << 16) | ((b[0] as i64) << 8) | b[1] as i64
            }
            0x59 => {
                self.pos += 1;
                self.be_i32()? as i64
            }
            b'L' => {
                self.pos += 1;
                self.be_i64()?
            }
            _ => return Ok(None),
        }))
    }

    /// Walks one string's chunks starting at its first code, calling `unit`
    /// for each UTF-16 unit (or just skipping when `decode` is false).
    fn string_chunks(&mut self, mut out: Option<&mut Vec<u16>>) -> Result<()> {
        let mut code = self.byte()?;
        loop {
            let (last, len) = match code {
                0x00..=0x1f => (true, code as usize),
                0x30..=0x33 => (true, ((code as usize - 0x30) << 8) | self.byte()? as usize),
                b'S' | b'R' => {
                    let b = self.take(2)?;
                    (code == b'S', ((b[0] as usize) << 8) | b[1] as usize)
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.fail(ErrorKind::UnexpectedCode {
                        code,
                        expected: "a string chunk",
                    }));
                }
            };
            self.utf8_units(len, out.as_deref_mut())?;
            if last {
                return Ok(());
            }
            code = self.byte()?;
        }
    }

    /// Reads `units` UTF-16 units of hessian's UTF-8.
    fn utf8_units(&mut self, units: usize, mut out: Option<&mut Vec<u16>>) -> Result<()> {
        let mut left = units;
        while left > 0 {
            let lead = self.peek()?;
            let (n, count) = match lead {
                0x00..=0x7f => (1, 1),
                0xc0..=0xdf => (2, 1),
                0xe0..=0xef => (3, 1),
                0xf0..=0xf7 if left >= 2 => (4, 2),
                _ => return Err(self.fail(ErrorKind::BadUtf8 { byte: lead })),
            };
            let bytes = self.take(n)?;
            if let Some(out) = out.as_deref_mut() {
                match n {
                    1 => out.push(lead as u16),
                    2 => out.push((((lead & 0x1f) as u16) << 6) | (bytes[1] & 0x3f) as u16),
                    3 => out.push(
                        (((lead & 0x0f) as u16) << 12)
                            | (((bytes[1] & 0x3f) as u16) << 6)
                            | (bytes[2] & 0x3f) as u16,
                    ),
                    _ => {
                        let c = (((lead & 0x07) as u32) << 18)
                            | (((bytes[1] & 0x3f) as u32) << 12)
                            | (((bytes[2] & 0x3f) as u32) << 6)
                            | (bytes[3] & 0x3f) as u32;
                        match char::from_u32(c) {
                            Some(ch) => {
                                let mut buf = [0u16; 2];
                                out.extend_from_slice(ch.encode_utf16(&mut buf));
                            }
                            None => return Err(self.fail(ErrorKind::BadUtf8 { byte: lead })),
                        }
                    }
                }
            }
            left -= count;
        }
        Ok(())
    }

    fn is_string_start(code: u8) -> bool {
        matches!(code, 0x00..=0x1f | 0x30..=0x33 | b'R' | b'S')
    }

    /// A string (`Some`) or null (`None`).
    fn string_or_null(&mut self) -> Result<Option<String>> {
        let code = self.peek()?;
        if code == b'N' {
            self.pos += 1;
            return Ok(None);
        }
        if !Self::is_string_start(code) {
            return Err(self.fail(ErrorKind::UnexpectedCode {
                code,
                expected: "a string",
            }));
        }
        let start = self.pos;
        let mut units = Vec::new();
        self.string_chunks(Some(&mut units))?;
        String::from_utf16(&units).map(Some).map_err(|_| Fail {
            kind: ErrorKind::BadUtf16,
            offset: start,
        })
    }

    fn skip_string(&mut self) -> Result<()> {
        self.string_chunks(None)
    }

    fn skip_binary(&mut self) -> Result<()> {
        let mut code = self.byte()?;
        loop {
            let (last, len) = match code {
                0x20..=0x2f => (true, code as usize - 0x20),
                0x34..=0x37 => (true, ((code as usize - 0x34) << 8) | self.byte()? as usize),
                b'B' | b'A' => {
                    let b = self.take(2)?;
                    (code == b'B', ((b[0] as usize) << 8) | b[1] as usize)
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.fail(ErrorKind::UnexpectedCode {
                        code,
                        expected: "a binary chunk",
                    }));
                }
            };
            self.skip(len)?;
            if last {
                return Ok(());
            }
            code = self.byte()?;
        }
    }

    /// A list or map type: a type name (remembered) or a reference to one.
    fn skip_type(&mut self) -> Result<()> {
        let code = self.peek()?;
        if Self::is_string_start(code) {
            self.skip_string()?;
            self.types += 1;
            return Ok(());
        }
        let at = self.pos;
        let index = self.int("a type name or type reference")? as i64;
        if index < 0 || index as usize >= self.types {
            return Err(Fail {
                kind: ErrorKind::UnknownType {
                    index,
                    defined: self.types,
                },
                offset: at,
            });
        }
        Ok(())
    }

    fn length(&mut self, what: &'static str) -> Result<usize> {
        let at = self.pos;
        let n = self.int(what)?;
        if n < 0 {
            return Err(Fail {
                kind: ErrorKind::Negative {
                    what,
                    value: n as i64,
                },
                offset: at,
            });
        }
        Ok(n as usize)
    }

    fn enter(&self, depth: u32) -> Result<u32> {
        if depth >= self.limits.max_depth {
            return Err(self.fail(ErrorKind::TooDeep {
                max: self.limits.max_depth,
            }));
        }
        Ok(depth + 1)
    }

    fn skip_n(&mut self, n: usize, depth: u32) -> Result<()> {
        for _ in 0..n {
            self.skip_value(depth)?;
        }
        Ok(())
    }

    /// Values until the terminator `Z`.
    fn skip_until_end(&mut self, per_entry: usize, depth: u32) -> Result<()> {
        loop {
            if self.peek()? == b'Z' {
                self.pos += 1;
                return Ok(());
            }
            self.skip_n(per_entry, depth)?;
        }
    }

    fn class_def(&mut self) -> Result<()> {
        // 'C' already consumed.
        self.skip_string()?;
        let at = self.pos;
        let fields = self.length("field count")?;
        // Every field name takes at least one byte.
        if fields > self.remaining() {
            return Err(Fail {
                kind: ErrorKind::ImplausibleCount {
                    what: "a field count",
                    value: fields as i64,
                },
                offset: at,
            });
        }
        for _ in 0..fields {
            self.skip_string()?;
        }
        if self.class_defs.len() >= self.limits.max_class_defs {
            return Err(self.fail(ErrorKind::TooManyClassDefs {
                max: self.limits.max_class_defs,
            }));
        }
        self.class_defs.push(fields as u32);
        Ok(())
    }

    fn object(&mut self, index: i64, at: usize, depth: u32) -> Result<()> {
        let fields = match usize::try_from(index)
            .ok()
            .and_then(|i| self.class_defs.get(i))
        {
            Some(&n) => n as usize,
            None => {
                return Err(Fail {
                    kind: ErrorKind::UnknownClass {
                        index,
                        defined: self.class_defs.len(),
                    },
                    offset: at,
                })
            }
        };
        let depth = self.enter(depth)?;
        self.skip_n(fields, depth)
    }

    /// Skips one complete value.
    fn skip_value(&mut self, depth: u32) -> Result<()> {
        // Class definitions precede the value that uses them (a loop, not
        // recursion: a run of definitions must not grow the stack).
        while self.peek()? == b'C' {
            self.pos += 1;
            self.class_def()?;
        }
        let at = self.pos;
        let code = self.peek()?;
        match code {
            b'N' | b'T' | b'F' | 0x5b | 0x5c => self.skip(1),
            0x80..=0xbf | 0xd8..=0xef => self.skip(1),
            0xc0..=0xcf | 0xf0..=0xff | 0x5d => self.skip(2),
            0xd0..=0xd7 | 0x38..=0x3f | 0x5e => self.skip(3),
            b'I' | 0x59 | 0x5f | b'K' => self.skip(5),
            b'L' | b'D' | b'J' => self.skip(9),
            0x00..=0x1f | 0x30..=0x33 | b'R' | b'S' => self.skip_string(),
            0x20..=0x2f | 0x34..=0x37 | b'A' | b'B' => self.skip_binary(),
            b'O' => {
                self.pos += 1;
                let index = self.int("a class definition index")? as i64;
                self.object(index, at, depth)
            }
            0x60..=0x6f => {
                self.pos += 1;
                self.object((code - 0x60) as i64, at, depth)
            }
            b'Q' => {
                self.pos += 1;
                let r = self.int("a reference index")?;
                if r < 0 {
                    return Err(Fail {
                        kind: ErrorKind::Negative {
                            what: "reference",
                            value: r as i64,
                        },
                        offset: at,
                    });
                }
                Ok(())
            }
            // Variable-length typed list.
            0x55 => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_type()?;
                self.skip_until_end(1, depth)
            }
            // Variable-length untyped list.
            0x57 => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_until_end(1, depth)
            }
            // Fixed-length typed list.
            b'V' => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_type()?;
                let n = self.length("list length")?;
                self.skip_n(n, depth)
            }
            // Fixed-length untyped list.
            b'X' => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                let n = self.length("list length")?;
                self.skip_n(n, depth)
            }
            0x70..=0x77 => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_type()?;
                self.skip_n((code - 0x70) as usize, depth)
            }
            0x78..=0x7f => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_n((code - 0x78) as usize, depth)
            }
            b'M' => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_type()?;
                self.skip_until_end(2, depth)
            }
            b'H' => {
                self.pos += 1;
                let depth = self.enter(depth)?;
                self.skip_until_end(2, depth)
            }
            _ => Err(self.fail(ErrorKind::UnexpectedCode {
                code,
                expected: "a value",
            })),
        }
    }

    /// Reads a value meant to be an attachment value.
    fn attachment_value(&mut self) -> Result<AttachmentValue> {
        let start = self.pos;
        let code = self.peek()?;
        match code {
            b'N' => {
                self.pos += 1;
                return Ok(AttachmentValue::Null);
            }
            b'T' | b'F' => {
                self.pos += 1;
                return Ok(AttachmentValue::Bool(code == b'T'));
            }
            _ => {}
        }
        if Self::is_string_start(code) {
            let mut units = Vec::new();
            self.string_chunks(Some(&mut units))?;
            return Ok(match String::from_utf16(&units) {
                Ok(s) => AttachmentValue::String(s),
                Err(_) => AttachmentValue::Other(start..self.pos),
            });
        }
        if let Some(v) = self.long_or_int()? {
            return Ok(AttachmentValue::Int(v));
        }
        self.skip_value(0)?;
        Ok(AttachmentValue::Other(start..self.pos))
    }

    /// The attachments map (or null, or nothing left).
    fn attachments(&mut self) -> Result<Attachments> {
        let start = self.pos;
        let mut entries = Vec::new();
        if self.at_end() {
            return Ok(Attachments {
                range: start..start,
                entries,
            });
        }
        let code = self.byte()?;
        match code {
            b'N' => {
                return Ok(Attachments {
                    range: start..self.pos,
                    entries,
                })
            }
            b'H' => {}
            b'M' => self.skip_type()?,
            _ => {
                self.pos = start;
                return Err(self.fail(ErrorKind::NotAMap));
            }
        }
        loop {
            if self.peek()? == b'Z' {
                self.pos += 1;
                break;
            }
            let key_code = self.peek()?;
            let key = if Self::is_string_start(key_code) {
                self.string_or_null()?
            } else {
                self.skip_value(1)?;
                None
            };
            let value = self.attachment_value()?;
            if let Some(key) = key {
                if entries.len() >= self.limits.max_attachments {
                    return Err(self.fail(ErrorKind::TooManyAttachments {
                        max: self.limits.max_attachments,
                    }));
                }
                entries.push(Attachment { key, value });
            }
        }
        Ok(Attachments {
            range: start..self.pos,
            entries,
        })
    }
}

// === descriptors ===

/// Counts the parameters of a JVM parameter-type descriptor
/// (`Ljava/lang/String;I[J` has three).
pub fn parameter_count(desc: &str) -> Result<usize, HessianError> {
    let bad = |reason: String| HessianError {
        kind: ErrorKind::BadDescriptor { reason },
        offset: 0,
        context: "parameter types".into(),
    };
    let b = desc.as_bytes();
    let mut i = 0;
    let mut count = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i] == b'[' {
            i += 1;
        }
        if i - start > 255 {
            return Err(bad(format!(
                "more than 255 array dimensions at character {start}"
            )));
        }
        match b.get(i) {
            Some(b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S') => i += 1,
            Some(b'L') => match b[i..].iter().position(|&c| c == b';') {
                Some(0) | None => {
                    return Err(bad(format!(
                        "class name at character {i} of '{desc}' has no closing ';'"
                    )))
                }
                Some(1) => return Err(bad(format!("empty class name at character {i}"))),
                Some(end) => i += end + 1,
            },
            Some(&c) => {
                return Err(bad(format!(
                    "'{}' at character {i} of '{desc}' is not a JVM type",
                    c as char
                )))
            }
            None => return Err(bad(format!("'{desc}' ends inside an array type"))),
        }
        count += 1;
    }
    Ok(count)
}

// === request and response ===

/// A decoded attachment value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentValue {
    /// A string.
    String(String),
    /// An int or long.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// null.
    Null,
    /// Anything else (its byte range in the body).
    Other(Range<usize>),
}

impl AttachmentValue {
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttachmentValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One attachment (non-string keys are skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Key.
    pub key: String,
    /// Value.
    pub value: AttachmentValue,
}

/// The attachments map of a body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Byte range of the whole map in the body (empty when absent).
    pub range: Range<usize>,
    /// The entries with string keys, in order.
    pub entries: Vec<Attachment>,
}

impl Attachments {
    /// The last value for `key`.
    pub fn get(&self, key: &str) -> Option<&AttachmentValue> {
        self.entries
            .iter()
            .rev()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }

    /// The last value for `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(AttachmentValue::as_str)
    }
}

/// What routing needs from a request body; arguments are left as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Dubbo protocol version (`2.0.2`).
    pub dubbo_version: String,
    /// Service path (the interface name).
    pub service_path: String,
    /// Service version (`0.0.0` when none).
    pub service_version: String,
    /// Method name.
    pub method: String,
    /// Parameter-type descriptor.
    pub parameter_types: String,
    /// Number of arguments (from the descriptor).
    pub argument_count: usize,
    /// Byte range of the arguments in the body.
    pub arguments: Range<usize>,
    /// The attachments.
    pub attachments: Attachments,
}

impl Request {
    /// The interface: the `interface` attachment, else the service path.
    pub fn interface(&self) -> &str {
        self.attachments
            .get_str("interface")
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.service_path)
    }

    /// The group (`group` attachment), empty when none.
    pub fn group(&self) -> &str {
        self.attachments.get_str("group").unwrap_or("")
    }

    /// The version: the `version` attachment, else the prefix's service
    /// version; empty when both are absent or `0.0.0` (Dubbo's "none").
    pub fn version(&self) -> &str {
        let v = self
            .attachments
            .get_str("version")
            .unwrap_or(&self.service_version);
        if v == "0.0.0" {
            ""
        } else {
            v
        }
    }

    /// The `timeout` attachment (milliseconds, string or number), if valid.
    pub fn timeout(&self) -> Option<Duration> {
        let ms = match self.attachments.get("timeout")? {
            AttachmentValue::Int(n) => *n,
            AttachmentValue::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        (ms > 0).then(|| Duration::from_millis(ms as u64))
    }
}

/// Reads a request body's prefix and attachments, skipping the arguments.
pub fn read_request(body: &[u8]) -> Result<Request, HessianError> {
    read_request_with(body, Limits::default())
}

/// [`read_request`] with explicit limits.
pub fn read_request_with(body: &[u8], limits: Limits) -> Result<Request, HessianError> {
    let mut r = Reader::new(body, limits);
    let field = |r: &mut Reader<'_>, name: &'static str| {
        r.string_or_null()
            .map(Option::unwrap_or_default)
            .map_err(|e| e.at(name))
    };
    let dubbo_version = field(&mut r, "dubbo version")?;
    let service_path = field(&mut r, "service path")?;
    let service_version = field(&mut r, "service version")?;
    let method = field(&mut r, "method name")?;
    let parameter_types = field(&mut r, "parameter types")?;
    let argument_count = parameter_count(&parameter_types).map_err(|mut e| {
        e.context = format!("parameter types of method '{method}'");
        e
    })?;
    let args_start = r.pos;
    for i in 0..argument_count {
        r.skip_value(0)
            .map_err(|e| e.at(format!("argument {} of {argument_count}", i + 1)))?;
    }
    let arguments = args_start..r.pos;
    let attachments = r.attachments().map_err(|e| e.at("attachments"))?;
    Ok(Request {
        dubbo_version,
        service_path,
        service_version,
        method,
        parameter_types,
        argument_count,
        arguments,
        attachments,
    })
}

/// The result kind of a response body (status OK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultKind {
    /// The method returned a value.
    Value,
    /// The method returned null.
    Null,
    /// The method threw (the value is the exception object).
    Exception,
}

/// A decoded response body (status OK, not an event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The flag read (0–5).
    pub flag: i32,
    /// What the result is.
    pub kind: ResultKind,
    /// Byte range of the value or exception (empty for null).
    pub value: Range<usize>,
    /// Attachments (flags 3–5; empty otherwise).
    pub attachments: Attachments,
}

/// Reads a response body: flag, value (skipped), attachments.
pub fn read_response(body: &[u8]) -> Result<Response, HessianError> {
    let mut r = Reader::new(body, Limits::default());
    let flag = r
        .int("a response flag")
        .map_err(|e| e.at("response flag"))?;
    let kind = match flag {
        RESPONSE_WITH_EXCEPTION | RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS => ResultKind::Exception,
        RESPONSE_VALUE | RESPONSE_VALUE_WITH_ATTACHMENTS => ResultKind::Value,
        RESPONSE_NULL_VALUE | RESPONSE_NULL_VALUE_WITH_ATTACHMENTS => ResultKind::Null,
        other => {
            return Err(HessianError {
                kind: ErrorKind::BadResponseFlag { flag: other as i64 },
                offset: 0,
                context: "response flag".into(),
            })
        }
    };
    let start = r.pos;
    if kind != ResultKind::Null {
        r.skip_value(0).map_err(|e| e.at("response value"))?;
    }
    let value = start..r.pos;
    let attachments = if flag >= RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS {
        r.attachments().map_err(|e| e.at("response attachments"))?
    } else {
        Attachments {
            range: r.pos..r.pos,
            entries: Vec::new(),
        }
    };
    Ok(Response {
        flag,
        kind,
        value,
        attachments,
    })
}

/// Decodes a body (or a value's bytes) that is one string or null.
pub fn read_string(bytes: &[u8]) -> Result<Option<String>, HessianError> {
    Reader::new(bytes, Limits::default())
        .string_or_null()
        .map_err(|e| e.at("string"))
}

/// Skips one value at the start of `bytes`, returning its length.
pub fn value_len(bytes: &[u8]) -> Result<usize, HessianError> {
    let mut r = Reader::new(bytes, Limits::default());
    r.skip_value(0).map_err(|e| e.at("value"))?;
    Ok(r.pos)
}

// === impl Writer ===

/// A hessian2 encoder for the values the runtime writes itself.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// null.
    pub fn null(&mut self) -> &mut Self {
        self.buf.push(b'N');
        self
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.push(if v { b'T' } else { b'F' });
        self
    }

    /// An int, in its shortest form.
    pub fn int(&mut self, v: i32) -> &mut Self {
        match v {
            -0x10..=0x2f => self.buf.push((v + 0x90) as u8),
            -0x800..=0x7ff => self
                .buf
                .extend_from_slice(&[((v >> 8) + 0xc8) as u8, v as u8]),
            -0x40000..=0x3ffff => {
                self.buf
                    .extend_from_slice(&[((v >> 16) + 0xd4) as u8, (v >> 8) as u8, v as u8])
            }
            _ => {
                self.buf.push(b'I');
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
        self
    }

    /// A long, in its shortest form.
    pub fn long(&mut self, v: i64) -> &mut Self {
        match v {
            -0x08..=0x0f => self.buf.push((v + 0xe0) as u8),
            -0x800..=0x7ff => self
                .buf
                .extend_from_slice(&[((v >> 8) + 0xf8) as u8, v as u8]),
            -0x40000..=0x3ffff => {
                self.buf
                    .extend_from_slice(&[((v >> 16) + 0x3c) as u8, (v >> 8) as u8, v as u8])
            }
            _ if i32::try_from(v).is_ok() => {
                self.buf.push(0x59);
                self.buf.extend_from_slice(&(v as i32).to_be_bytes());
            }
            _ => {
                self.buf.push(b'L');
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
        self
    }

    /// A double (compact forms for 0, 1 and small whole numbers).
    pub fn double(&mut self, v: f64) -> &mut Self {
        let whole = v.fract() == 0.0 && !(v == 0.0 && v.is_sign_negative());
        if whole && v == 0.0 {
            self.buf.push(0x5b);
        } else if whole && v == 1.0 {
            self.buf.push(0x5c);
        } else if whole && (-128.0..=127.0).contains(&v) {
            self.buf.extend_from_slice(&[0x5d, v as i8 as u8]);
        } else if whole && (-32768.0..=32767.0).contains(&v) {
            self.buf.push(0x5e);
            self.buf.extend_from_slice(&(v as i16).to_be_bytes());
        } else {
            self.buf.push(b'D');
            self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        self
    }

    /// A string, in chunks of at most 0x8000 UTF-16 units as hessian-lite
    /// writes them (a chunk never ends between the two halves of a
    /// surrogate pair; each half is written as its own 3-byte sequence).
    pub fn string(&mut self, s: &str) -> &mut Self {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut rest = &units[..];
        while rest.len() > 0x8000 {
            let mut n = 0x8000;
            if (0xd800..=0xdbff).contains(&rest[n - 1]) {
                n -= 1;
            }
            self.buf.push(b'R');
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
            self.utf8(&rest[..n]);
            rest = &rest[n..];
        }
        let n = rest.len();
        if n <= 0x1f {
            self.buf.push(n as u8);
        } else if n <= 0x3ff {
            self.buf
                .extend_from_slice(&[0x30 + (n >> 8) as u8, n as u8]);
        } else {
            self.buf.push(b'S');
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        }
        self.utf8(rest);
        self
    }

    fn utf8(&mut self, units: &[u16]) {
        for &u in units {
            match u {
                0..=0x7f => self.buf.push(u as u8),
                0x80..=0x7ff => self
                    .buf
                    .extend_from_slice(&[0xc0 | (u >> 6) as u8, 0x80 | (u & 0x3f) as u8]),
                _ => self.buf.extend_from_slice(&[
                    0xe0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3f) as u8,
                    0x80 | (u & 0x3f) as u8,
                ]),
            }
        }
    }

    /// Binary data (chunks of at most 0x8000 bytes).
    pub fn binary(&mut self, data: &[u8]) -> &mut Self {
        let mut rest = data;
        while rest.len() > 0x8000 {
            self.buf.push(b'A');
            self.buf.extend_from_slice(&0x8000u16.to_be_bytes());
            self.buf.extend_from_slice(&rest[..0x8000]);
            rest = &rest[0x8000..];
        }
        let n = rest.len();
        if n <= 0x0f {
            self.buf.push(0x20 + n as u8);
        } else if n <= 0x3ff {
            self.buf
                .extend_from_slice(&[0x34 + (n >> 8) as u8, n as u8]);
        } else {
            self.buf.push(b'B');
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        }
        self.buf.extend_from_slice(rest);
        self
    }

    /// Starts an untyped map (`H`); write keys and values, then [`Self::end`].
    pub fn map_begin(&mut self) -> &mut Self {
        self.buf.push(b'H');
        self
    }

    /// Starts an untyped fixed-length list of `len` values.
    pub fn list_begin(&mut self, len: usize) -> &mut Self {
        if len <= 7 {
            self.buf.push(0x78 + len as u8);
        } else {
            self.buf.push(b'X');
            self.int(i32::try_from(len).unwrap_or(i32::MAX));
        }
        self
    }

    /// Ends a map (`Z`).
    pub fn end(&mut self) -> &mut Self {
        self.buf.push(b'Z');
        self
    }

    /// A map of strings to strings.
    pub fn string_map<'s>(
        &mut self,
        entries: impl IntoIterator<Item = (&'s str, &'s str)>,
    ) -> &mut Self {
        self.map_begin();
        for (k, v) in entries {
            self.string(k).string(v);
        }
        self.end()
    }

    /// Bytes that already hold encoded values.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }
}

/// The body of a response whose status is not OK: one hessian2 string, as
/// Dubbo's codec writes (`writeUTF(errorMessage)`) and reads it.
pub fn error_body(message: &str) -> Bytes {
    let mut w = Writer::new();
    w.string(message);
    Bytes::from(w.into_bytes())
}

/// What goes in a request body; see [`encode_request`].
#[derive(Clone, Debug)]
pub struct RequestSpec<'a> {
    /// Dubbo protocol version, `2.0.2`.
    pub dubbo_version: &'a str,
    /// Service path (the interface).
    pub service_path: &'a str,
    /// Service version (`0.0.0` for none).
    pub service_version: &'a str,
    /// Method name.
    pub method: &'a str,
    /// Parameter-type descriptor.
    pub parameter_types: &'a str,
    /// The arguments, already encoded one after the other.
    pub arguments: &'a [u8],
    /// String attachments.
    pub attachments: &'a [(&'a str, &'a str)],
}

/// Encodes a request body.
pub fn encode_request(spec: &RequestSpec<'_>) -> Bytes {
    let mut w = Writer::new();
    w.string(spec.dubbo_version)
        .string(spec.service_path)
        .string(spec.service_version)
        .string(spec.method)
        .string(spec.parameter_types)
        .raw(spec.arguments)
        .string_map(spec.attachments.iter().copied());
    Bytes::from(w.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::new();
        f(&mut w);
        w.into_bytes()
    }

    #[test]
    fn ints_and_longs_use_hessian_lites_forms() {
        for (v, bytes) in [
            (0, vec![0x90]),
            (-16, vec![0x80]),
            (47, vec![0xbf]),
            (48, vec![0xc8, 0x30]),
            (-2048, vec![0xc0, 0x00]),
            (2047, vec![0xcf, 0xff]),
            (-262144, vec![0xd0, 0x00, 0x00]),
            (262143, vec![0xd7, 0xff, 0xff]),
            (262144, vec![b'I', 0, 4, 0, 0]),
        ] {
            assert_eq!(
                enc(|w| {
                    w.int(v);
                }),
                bytes,
                "int {v}"
            );
            let mut r = Reader::new(&bytes, Limits::default());
            assert_eq!(r.int("int").unwrap(), v);
            assert!(r.at_end());
        }
        for (v, bytes) in [
            (0i64, vec![0xe0]),
            (-8, vec![0xd8]),
            (15, vec![0xef]),
            (16, vec![0xf8, 0x10]),
            (-2048, vec![0xf0, 0x00]),
            (262143, vec![0x3f, 0xff, 0xff]),
            (-262144, vec![0x38, 0x00, 0x00]),
            (1 << 30, vec![0x59, 0x40, 0, 0, 0]),
            (1 << 40, vec![b'L', 0, 0, 1, 0, 0, 0, 0, 0]),
        ] {
            assert_eq!(
                enc(|w| {
                    w.long(v);
                }),
                bytes,
                "long {v}"
            );
            let mut r = Reader::new(&bytes, Limits::default());
            assert_eq!(r.long_or_int().unwrap(), Some(v));
            assert!(r.at_end());
        }
    }

    #[test]
    fn strings_round_trip_including_chunks_and_surrogates() {
        for s in [
            String::new(),
            "a".repeat(31),
            "b".repeat(32),
            "c".repeat(1023),
            "d".repeat(1024),
            "é中😀".repeat(20),
            "x".repeat(0x8000 * 2 + 5),
            // A surrogate pair straddling the 0x8000 boundary.
            format!("{}😀tail", "y".repeat(0x7fff)),
        ] {
            let bytes = enc(|w| {
                w.string(&s);
            });
            assert_eq!(read_string(&bytes).unwrap().as_deref(), Some(&s[..]));
            assert_eq!(value_len(&bytes).unwrap(), bytes.len());
        }
        assert_eq!(
            enc(|w| {
                w.string("hi");
            }),
            b"\x02hi"
        );
        // Java writes a supplementary character as two 3-byte sequences.
        assert_eq!(
            enc(|w| {
                w.string("😀");
            }),
            [0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]
        );
        // A 4-byte UTF-8 sequence is accepted as two units.
        assert_eq!(
            read_string(&[0x02, 0xf0, 0x9f, 0x98, 0x80])
                .unwrap()
                .as_deref(),
            Some("😀")
        );
        assert_eq!(read_string(b"N").unwrap(), None);
    }

    #[test]
    fn binaries_doubles_and_containers_are_skipped_whole() {
        let samples: Vec<Vec<u8>> = vec![
            enc(|w| {
                w.binary(&[]);
            }),
            enc(|w| {
                w.binary(&[7; 15]);
            }),
            enc(|w| {
                w.binary(&[7; 16]);
            }),
            enc(|w| {
                w.binary(&[7; 1024]);
            }),
            enc(|w| {
                w.binary(&vec![7; 0x8000 * 2 + 1]);
            }),
            enc(|w| {
                w.double(0.0);
            }),
            enc(|w| {
                w.double(1.0);
            }),
            enc(|w| {
                w.double(-5.0);
            }),
            enc(|w| {
                w.double(1000.0);
            }),
            enc(|w| {
                w.double(0.1);
            }),
            vec![0x5f, 0, 0, 0, 1],
            vec![b'J', 0, 0, 0, 0, 0, 0, 0, 1],
            vec![b'K', 0, 0, 0, 1],
            enc(|w| {
                w.list_begin(3).int(1).string("x").null();
            }),
            enc(|w| {
                w.list_begin(9);
                for i in 0..9 {
                    w.int(i);
                }
            }),
            enc(|w| {
                w.string_map([("a", "b"), ("c", "d")]);
            }),
            // Typed variable list, typed fixed list with a type reference.
            [&[0x55, 0x04][..], b"[int", &[0x91, 0x92, b'Z']].concat(),
            [&[b'V', 0x04][..], b"[int", &[0x92, 0x91, 0x92]].concat(),
            // Typed map.
            [&[b'M', 0x03][..], b"Map", &[0x91, 0x92, b'Z']].concat(),
            // Class definition, then instances in both forms.
            [
                &[b'C', 0x03][..],
                b"Foo",
                &[0x92, 0x01, b'a', 0x01, b'b', 0x60, 0x91, 0x01, b'x'],
            ]
            .concat(),
            vec![b'Q', 0x90],
        ];
        for bytes in samples {
            assert_eq!(value_len(&bytes).unwrap(), bytes.len(), "{bytes:02x?}");
        }
        // Several values in one stream share class definitions.
        let mut r = Reader::new(
            &[
                b'C', 0x01, b'F', 0x91, 0x01, b'v', 0x60, 0x90, b'O', 0x90, 0x91,
            ],
            Limits::default(),
        );
        r.skip_value(0).unwrap();
        r.skip_value(0).unwrap();
        assert!(r.at_end());
        // And type names.
        let mut r = Reader::new(
            &[0x71, 0x01, b't', 0x90, 0x71, 0x90, 0x91],
            Limits::default(),
        );
        r.skip_value(0).unwrap();
        r.skip_value(0).unwrap();
        assert!(r.at_end());
    }

    #[test]
    fn descriptors() {
        for (d, n) in [
            ("", 0),
            ("I", 1),
            ("Ljava/lang/String;", 1),
            ("Ljava/lang/String;I[J[[Ljava/util/Map;Z", 5),
            ("ZBCDFIJS", 8),
        ] {
            assert_eq!(parameter_count(d).unwrap(), n, "{d}");
        }
        for d in ["Ljava/lang/String", "[", "V", "L;", "Q", "I;"] {
            let e = parameter_count(d).unwrap_err();
            assert!(e.to_string().contains("descriptor"), "{d}: {e}");
        }
    }

    fn sample_request() -> Bytes {
        let args = enc(|w| {
            w.string("world").int(5);
        });
        encode_request(&RequestSpec {
            dubbo_version: "2.0.2",
            service_path: "dev.weft.test.Greeter",
            service_version: "1.0",
            method: "greet",
            parameter_types: "Ljava/lang/String;I",
            arguments: &args,
            attachments: &[
                ("path", "dev.weft.test.Greeter"),
                ("interface", "dev.weft.test.Greeter"),
                ("group", "g1"),
                ("version", "1.0"),
                ("timeout", "1500"),
            ],
        })
    }

    #[test]
    fn request_prefix_arguments_and_attachments() {
        let body = sample_request();
        let req = read_request(&body).unwrap();
        assert_eq!(req.dubbo_version, "2.0.2");
        assert_eq!(req.service_path, "dev.weft.test.Greeter");
        assert_eq!(req.method, "greet");
        assert_eq!(req.argument_count, 2);
        assert_eq!(&body[req.arguments.clone()], b"\x05world\x95");
        assert_eq!(req.interface(), "dev.weft.test.Greeter");
        assert_eq!(req.group(), "g1");
        assert_eq!(req.version(), "1.0");
        assert_eq!(req.timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(req.attachments.range.end, body.len());
        assert_eq!(req.attachments.entries.len(), 5);
    }

    #[test]
    fn request_without_attachments_or_with_odd_values() {
        // Nothing after the arguments: no attachments.
        let mut w = Writer::new();
        w.string("2.0.2")
            .string("a.B")
            .null()
            .string("m")
            .string("");
        let req = read_request(w.as_bytes()).unwrap();
        assert_eq!(req.service_version, "");
        assert_eq!(req.version(), "");
        assert!(req.attachments.entries.is_empty());
        // Numeric timeout, non-string key, a nested value.
        w.map_begin()
            .string("timeout")
            .int(250)
            .int(7)
            .string("ignored key")
            .string("obj")
            .list_begin(1)
            .int(1)
            .end();
        let req = read_request(w.as_bytes()).unwrap();
        assert_eq!(req.timeout(), Some(Duration::from_millis(250)));
        assert_eq!(req.attachments.entries.len(), 2);
        assert!(matches!(
            req.attachments.get("obj"),
            Some(AttachmentValue::Other(_))
        ));
    }

    #[test]
    fn errors_name_the_field() {
        let body = sample_request();
        let req = read_request(&body).unwrap();
        // Cut inside the arguments.
        let e = read_request(&body[..req.arguments.start + 2]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Truncated);
        assert!(e.context.starts_with("argument 1 of 2"), "{e}");
        // A method name that is not a string.
        let mut w = Writer::new();
        w.string("2.0.2").string("a.B").string("").int(3);
        let e = read_request(w.as_bytes()).unwrap_err();
        assert_eq!(e.context, "method name");
        assert!(e.to_string().contains("expected a string"), "{e}");
        // Attachments that are not a map.
        let mut w = Writer::new();
        w.string("2.0.2")
            .string("a.B")
            .string("")
            .string("m")
            .string("")
            .int(1);
        let e = read_request(w.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotAMap);
    }

    #[test]
    fn responses() {
        let mut w = Writer::new();
        w.int(RESPONSE_VALUE_WITH_ATTACHMENTS)
            .string("Hello")
            .string_map([("dubbo", "2.0.2")]);
        let body = w.into_bytes();
        let r = read_response(&body).unwrap();
        assert_eq!(r.kind, ResultKind::Value);
        assert_eq!(
            read_string(&body[r.value.clone()]).unwrap().as_deref(),
            Some("Hello")
        );
        assert_eq!(r.attachments.get_str("dubbo"), Some("2.0.2"));
        let r = read_response(&[0x92]).unwrap();
        assert_eq!((r.kind, r.value.len()), (ResultKind::Null, 0));
        let e = read_response(&[0x99]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponseFlag { flag: 9 });
        assert_eq!(&error_body("why")[..], b"\x03why");
    }
}
