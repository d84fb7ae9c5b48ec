//! GetState over shared memory without allocating: the request is read
//! where it lies in the ring's record (borrowed strings), and the response
//! is written to the response ring from the store's own bytes.
//!
//! Only the plain form takes this path; anything else (request metadata,
//! an unknown field, a malformed message) goes to the ordinary decoder,
//! which answers exactly as gRPC does — the two paths cannot disagree on
//! an error because this one never produces a decode error.

use std::collections::HashMap;

use prost::encoding::{decode_key, decode_varint, encode_varint, WireType};
use prost::Message;
use weft_proto::runtime as pb;

/// A `GetStateRequest` read in place.
#[derive(Debug, PartialEq, Eq)]
pub struct GetStateRef<'a> {
    pub store_name: &'a str,
    pub key: &'a str,
    pub consistency: i32,
}

impl<'a> GetStateRef<'a> {
    /// Reads the plain form of the message: `None` when it carries
    /// metadata, fields this reader does not know, or is not valid (the
    /// caller then decodes it the ordinary way).
    pub fn read(mut body: &'a [u8]) -> Option<Self> {
        let mut out = GetStateRef {
            store_name: "",
            key: "",
            consistency: 0,
        };
        while !body.is_empty() {
            let (tag, wire) = decode_key(&mut body).ok()?;
            match (tag, wire) {
                (1 | 2, WireType::LengthDelimited) => {
                    let len = usize::try_from(decode_varint(&mut body).ok()?).ok()?;
                    if len > body.len() {
                        return None;
                    }
                    let (s, rest) = body.split_at(len);
                    body = rest;
                    let s = std::str::from_utf8(s).ok()?;
                    if tag == 1 {
                        out.store_name = s;
                    } else {
                        out.key = s;
                    }
                }
                (3, WireType::Varint) => {
                    // An enum is an int32 on the wire (negative: ten bytes).
                    out.consistency = decode_varint(&mut body).ok()? as i32;
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

/// The bytes that go before a length-delimited field's value: its key and
/// its length, at most 1 + 10 bytes.
pub struct FieldHead {
    buf: [u8; 11],
    len: usize,
}

impl FieldHead {
    pub fn new(tag: u8, value_len: usize) -> Self {
        let mut buf = [0u8; 11];
        buf[0] = (tag << 3) | WireType::LengthDelimited as u8;
        let mut rest = &mut buf[1..];
        encode_varint(value_len as u64, &mut rest);
        let len = 11 - rest.len();
        Self { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The parts of an encoded `GetStateResponse` (data = 1, etag = 2,
/// metadata = 3) around the store's bytes, in field order, empty fields
/// left out as proto3 does; `metadata` is the already encoded map field.
pub struct GetStateParts<'a> {
    data_head: FieldHead,
    data: &'a [u8],
    etag_head: FieldHead,
    etag: &'a [u8],
    metadata: &'a [u8],
}

impl<'a> GetStateParts<'a> {
    pub fn new(data: &'a [u8], etag: &'a str, metadata: &'a [u8]) -> Self {
        Self {
            data_head: FieldHead::new(1, data.len()),
            data,
            etag_head: FieldHead::new(2, etag.len()),
            etag: etag.as_bytes(),
            metadata,
        }
    }

    /// The message as slices to write one after the other.
    pub fn slices(&self) -> [&[u8]; 5] {
        fn head<'h>(h: &'h FieldHead, v: &[u8]) -> &'h [u8] {
            if v.is_empty() {
                &[]
            } else {
                h.as_bytes()
            }
        }
        [
            head(&self.data_head, self.data),
            self.data,
            head(&self.etag_head, self.etag),
            self.etag,
            self.metadata,
        ]
    }
}

/// The encoded metadata field (3) of a `GetStateResponse`; empty (no
/// allocation) for an empty map, the common case.
pub fn metadata_field(metadata: HashMap<String, String>) -> Vec<u8> {
    if metadata.is_empty() {
        return Vec::new();
    }
    pb::GetStateResponse {
        metadata,
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_prost_writes() {
        for (store, key, consistency) in [
            ("statestore", "k", 0),
            ("", "", 0),
            ("s", "ключ", 2),
            ("s", "k", -1),
        ] {
            let body = pb::GetStateRequest {
                store_name: store.into(),
                key: key.into(),
                consistency,
                metadata: HashMap::new(),
            }
            .encode_to_vec();
            assert_eq!(
                GetStateRef::read(&body),
                Some(GetStateRef {
                    store_name: store,
                    key,
                    consistency
                })
            );
        }
    }

    #[test]
    fn leaves_what_it_does_not_read_to_the_decoder() {
        let with_metadata = pb::GetStateRequest {
            store_name: "s".into(),
            key: "k".into(),
            consistency: 0,
            metadata: HashMap::from([("a".into(), "b".into())]),
        }
        .encode_to_vec();
        assert_eq!(GetStateRef::read(&with_metadata), None);
        // Truncated length, invalid UTF-8, wrong wire type, unknown field.
        assert_eq!(GetStateRef::read(&[0x0a, 0x05, b'a']), None);
        assert_eq!(GetStateRef::read(&[0x12, 0x02, 0xc3, 0x28]), None);
        assert_eq!(GetStateRef::read(&[0x08, 0x01]), None);
        assert_eq!(GetStateRef::read(&[0x2a, 0x00]), None);
        assert_eq!(GetStateRef::read(&[0x80]), None);
    }

    #[test]
    fn writes_what_prost_reads() {
        let big = vec![7u8; 300];
        let mut metadata = HashMap::new();
        metadata.insert(
            "ttlExpireTime".to_string(),
            "2030-01-01T00:00:00Z".to_string(),
        );
        let encoded_metadata = metadata_field(metadata.clone());
        assert!(metadata_field(HashMap::new()).is_empty());
        for (data, etag, meta) in [
            (&b"value"[..], "etag-1", &[][..]),
            (&[][..], "", &[][..]),
            (&big[..], "e", &encoded_metadata[..]),
        ] {
            let parts = GetStateParts::new(data, etag, meta);
            let bytes = parts.slices().concat();
            let expected = pb::GetStateResponse {
                data: data.to_vec(),
                etag: etag.into(),
                metadata: if meta.is_empty() {
                    HashMap::new()
                } else {
                    metadata.clone()
                },
            };
            assert_eq!(pb::GetStateResponse::decode(&bytes[..]).unwrap(), expected);
            if meta.is_empty() {
                assert_eq!(bytes, expected.encode_to_vec());
            }
        }
    }
}
