//! CloudEvents 1.0 JSON envelopes: written on publish (straight to JSON,
//! in one pass), taken apart on delivery into Dapr's `TopicEventRequest`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Map, Value};
use weft_components::pubsub::Message;
use weft_proto::runtime as pb;

use super::publish::Md;
use super::{Inner, CLOUDEVENTS_JSON, EVENT_TYPE};
use crate::time::rfc3339;

/// Standard base64; padding optional when decoding (as CloudEvents
/// producers differ).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// Decodes standard base64 (padding optional); `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text.trim()).ok()
}

impl Inner {
    /// The CloudEvents envelope of `data`, written straight to JSON (the
    /// fields of [`fill_envelope`](Self::fill_envelope), in the same order).
    pub(super) fn envelope(
        &self,
        pubsub: &str,
        topic: &str,
        data: Vec<u8>,
        content_type: &str,
        metadata: Md<'_>,
        now: &str,
    ) -> Vec<u8> {
        let ct = if content_type.trim().is_empty() {
            "text/plain"
        } else {
            content_type
        };
        let over = |field: &str| metadata.get(field).filter(|v| !v.is_empty());
        let mut out = Vec::with_capacity(data.len() + 256);
        let (field, value) = embed_data(ct, data);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        json_write(&mut out, &value);
        out.extend_from_slice(b",\"datacontenttype\":");
        json_write(&mut out, ct);
        out.extend_from_slice(b",\"id\":");
        match over("cloudevent.id") {
            Some(id) => json_write(&mut out, id.as_str()),
            None => {
                out.push(b'"');
                out.extend_from_slice(new_event_id().as_bytes());
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"pubsubname\":");
        json_write(&mut out, pubsub);
        out.extend_from_slice(b",\"source\":");
        json_write(
            &mut out,
            over("cloudevent.source").map_or(self.app_id.as_str(), String::as_str),
        );
        out.extend_from_slice(b",\"specversion\":\"1.0\"");
        if let Some(subject) = over("cloudevent.subject") {
            out.extend_from_slice(b",\"subject\":");
            json_write(&mut out, subject.as_str());
        }
        out.extend_from_slice(b",\"time\":");
        json_write(&mut out, now);
        out.extend_from_slice(b",\"topic\":");
        json_write(&mut out, topic);
        if let Some((tp, ts)) = metadata.trace {
            out.extend_from_slice(b",\"traceparent\":");
            json_write(&mut out, tp.as_str());
            if let Some(ts) = ts {
                out.extend_from_slice(b",\"tracestate\":");
                json_write(&mut out, ts.as_str());
            }
        }
        out.extend_from_slice(b",\"type\":");
        json_write(
            &mut out,
            over("cloudevent.type").map_or(EVENT_TYPE, String::as_str),
        );
        out.push(b'}');
        out
    }

    pub(super) fn fill_envelope(
        &self,
        ce: &mut Map<String, Value>,
        pubsub: &str,
        topic: &str,
        metadata: Md<'_>,
        now: &str,
    ) {
        let fields = [
            ("id", "cloudevent.id"),
            ("source", "cloudevent.source"),
            ("type", "cloudevent.type"),
            ("specversion", "cloudevent.specversion"),
        ];
        for (field, key) in fields {
            let over = metadata.get(key).filter(|v| !v.is_empty());
            match over {
                Some(v) if field != "specversion" => {
                    ce.insert(field.into(), v.clone().into());
                }
                _ => {
                    if !matches!(ce.get(field), Some(Value::String(s)) if !s.is_empty()) {
                        let default = match field {
                            "id" => new_event_id(),
                            "source" => self.app_id.clone(),
                            "type" => EVENT_TYPE.to_string(),
                            _ => "1.0".to_string(),
                        };
                        ce.insert(field.into(), default.into());
                    }
                }
            }
        }
        if let Some(s) = metadata.get("cloudevent.subject").filter(|v| !v.is_empty()) {
            ce.insert("subject".into(), s.clone().into());
        }
        ce.insert("topic".into(), topic.into());
        ce.insert("pubsubname".into(), pubsub.into());
        if !ce.contains_key("time") {
            ce.insert("time".into(), now.into());
        }
        if let Some((tp, ts)) = metadata.trace {
            if !ce.contains_key("traceparent") {
                ce.insert("traceparent".into(), tp.clone().into());
                if let Some(ts) = ts {
                    ce.insert("tracestate".into(), ts.clone().into());
                }
            }
        }
    }
}

pub(super) fn base_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub(super) fn is_cloudevent(content_type: &str) -> bool {
    base_type(content_type) == CLOUDEVENTS_JSON
}

pub(super) fn is_json(content_type: &str) -> bool {
    let t = base_type(content_type);
    t == "application/json" || t == "text/json" || t.ends_with("+json")
}

pub(super) fn is_binary(content_type: &str) -> bool {
    base_type(content_type) == "application/octet-stream"
}

/// How Dapr embeds data in an envelope: JSON as JSON, binary as base64,
/// text as a string (base64 when it is not UTF-8).
pub(super) fn embed_data(content_type: &str, data: Vec<u8>) -> (&'static str, Value) {
    if is_json(content_type) {
        if let Ok(v) = serde_json::from_slice::<Value>(&data) {
            return ("data", v);
        }
    }
    if is_binary(content_type) {
        return ("data_base64", base64_encode(&data).into());
    }
    match String::from_utf8(data) {
        Ok(s) => ("data", s.into()),
        Err(e) => ("data_base64", base64_encode(e.as_bytes()).into()),
    }
}

/// Appends `v` as JSON.
fn json_write<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing JSON of strings and values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The current time as the envelope's `time` (RFC 3339, seconds), formatted
/// once per second per thread.
pub(super) fn now_rfc3339() -> String {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NOW.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != since.as_secs() {
            *c = (since.as_secs(), rfc3339(since));
        }
        c.1.clone()
    })
}

/// A random (version 4) UUID for a CloudEvent id, from a per-thread pool of
/// OS randomness refilled 4 KiB at a time (one read per 256 ids instead of
/// a system call per id).
pub(super) fn new_event_id() -> String {
    const POOL: usize = 4096;
    struct Pool {
        bytes: Box<[u8; POOL]>,
        used: usize,
        source: Option<std::fs::File>,
    }
    thread_local! {
        static RANDOM: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool {
            bytes: Box::new([0; POOL]),
            used: POOL,
            source: std::fs::File::open("/dev/urandom").ok(),
        });
    }
    let random = RANDOM.with(|p| {
        let mut p = p.borrow_mut();
        if p.used + 16 > POOL {
            let Pool { bytes, source, .. } = &mut *p;
            let filled = source
                .as_mut()
                .is_some_and(|f| std::io::Read::read_exact(f, &mut bytes[..]).is_ok());
            if !filled {
                return None;
            }
            p.used = 0;
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&p.bytes[p.used..p.used + 16]);
        p.used += 16;
        Some(b)
    });
    let uuid = match random {
        Some(b) => uuid::Builder::from_random_bytes(b).into_uuid(),
        None => uuid::Uuid::new_v4(),
    };
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut buf).to_string()
}

/// A JSON object key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A CloudEvents JSON envelope taken apart in one pass: the attributes with
/// their own field in `TopicEventRequest`, the data, and the rest (which
/// become extensions). Attributes that are not strings read as empty.
#[derive(Default)]
struct Envelope {
    /// `Some` only when `specversion` is a string (else it is no envelope).
    spec_version: Option<String>,
    id: String,
    source: String,
    r#type: String,
    content_type: String,
    data: Option<Value>,
    data_base64: Option<Value>,
    extensions: Vec<(String, prost_types::Value)>,
}

impl<'de> serde::Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CloudEvents JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Envelope, A::Error> {
                let text = |v: Value| match v {
                    Value::String(s) => s,
                    _ => String::new(),
                };
                let mut e = Envelope::default();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    match &*k {
                        "specversion" => {
                            e.spec_version = match map.next_value::<Value>()? {
                                Value::String(s) => Some(s),
                                _ => None,
                            }
                        }
                        "id" => e.id = text(map.next_value()?),
                        "source" => e.source = text(map.next_value()?),
                        "type" => e.r#type = text(map.next_value()?),
                        "datacontenttype" => e.content_type = text(map.next_value()?),
                        "data" => e.data = Some(map.next_value()?),
                        "data_base64" => e.data_base64 = Some(map.next_value()?),
                        _ => {
                            let v = json_into_prost(map.next_value()?);
                            e.extensions.push((k.into_owned(), v));
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn to_event(
    m: &Message,
    pubsub: &str,
    path: &str,
    id: Option<String>,
) -> pb::TopicEventRequest {
    let mut ext: BTreeMap<String, prost_types::Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), string_value(v)))
        .collect();
    let envelope = serde_json::from_slice::<Envelope>(&m.data)
        .ok()
        .filter(|ce| ce.spec_version.is_some());
    let mut ev = match envelope {
        Some(ce) => {
            let data = match (ce.data_base64, ce.data) {
                (Some(Value::String(b)), _) => base64_decode(&b).unwrap_or_else(|| b.into_bytes()),
                (_, None | Some(Value::Null)) => Vec::new(),
                (_, Some(Value::String(s))) if !is_json(&ce.content_type) => s.into_bytes(),
                (_, Some(v)) => serde_json::to_vec(&v).unwrap_or_default(),
            };
            ext.extend(ce.extensions);
            let event_id = match id {
                Some(id) => {
                    ext.insert("cloudEventId".into(), string_value(&ce.id));
                    id
                }
                None => ce.id,
            };
            pb::TopicEventRequest {
                id: event_id,
                source: ce.source,
                r#type: ce.r#type,
                spec_version: ce.spec_version.unwrap_or_default(),
                data_content_type: ce.content_type,
                data,
                ..Default::default()
            }
        }
        None => pb::TopicEventRequest {
            id: id.unwrap_or_else(new_event_id),
            r#type: EVENT_TYPE.into(),
            spec_version: "1.0".into(),
            data_content_type: m
                .headers
                .get("content-type")
                .cloned()
                .unwrap_or_else(|| "application/octet-stream".into()),
            data: m.data.clone(),
            ..Default::default()
        },
    };
    ext.insert("partition".into(), number_value(f64::from(m.partition)));
    ext.insert("offset".into(), number_value(m.offset as f64));
    ext.insert("attempt".into(), number_value(f64::from(m.attempt)));
    if let Some(k) = &m.key {
        ext.insert("partitionKey".into(), string_value(k));
    }
    ev.topic = m.topic.clone();
    ev.pubsub_name = pubsub.to_string();
    ev.path = path.to_string();
    ev.extensions = Some(prost_types::Struct { fields: ext });
    ev
}

pub(super) fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    }
}

pub(super) fn number_value(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

pub(super) fn json_into_prost(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_into_prost).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .into_iter()
                .map(|(k, v)| (k, json_into_prost(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
