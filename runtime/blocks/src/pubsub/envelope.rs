//! CloudEvents 1.0 JSON envelopes: written on publish (straight to JSON,
//! in one pass), taken apart on delivery into Dapr's `TopicEventRequest`.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::value::RawValue;
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

/// The media type of a content type: parameters and surrounding space
/// removed (compared without regard to case, as media types are).
fn base_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

pub(super) fn is_cloudevent(content_type: &str) -> bool {
    base_type(content_type).eq_ignore_ascii_case(CLOUDEVENTS_JSON)
}

pub(super) fn is_json(content_type: &str) -> bool {
    let t = base_type(content_type);
    t.eq_ignore_ascii_case("application/json")
        || t.eq_ignore_ascii_case("text/json")
        || t.len()
            .checked_sub(5)
            .and_then(|at| t.get(at..))
            .is_some_and(|end| end.eq_ignore_ascii_case("+json"))
}

pub(super) fn is_binary(content_type: &str) -> bool {
    base_type(content_type).eq_ignore_ascii_case("application/octet-stream")
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

/// JSON text, borrowed from the input when it has no escapes.
type Text<'a> = Cow<'a, str>;

/// A JSON string, borrowed from the input when it has no escapes.
struct Str<'de>(Text<'de>);

impl<'de> serde::Deserialize<'de> for Str<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The string a raw JSON value holds; `None` when it is not a string.
fn raw_text(raw: &RawValue) -> Option<Text<'_>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str::<Str<'_>>(text).ok().map(|s| s.0)
}

/// A CloudEvents JSON envelope taken apart in one pass, where it lies:
/// attributes borrowed from the message (copied only when the JSON escapes
/// them), the data as its JSON text, the other attributes (extensions) as
/// their JSON text.
#[derive(Default)]
struct Envelope<'a> {
    spec_version: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    r#type: Option<&'a RawValue>,
    content_type: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    data_base64: Option<&'a RawValue>,
    extensions: Vec<(Text<'a>, &'a RawValue)>,
}

impl<'de> serde::Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CloudEvents JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Envelope<'de>, A::Error> {
                let mut e = Envelope::default();
                while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    let slot = match &*k {
                        "specversion" => &mut e.spec_version,
                        "id" => &mut e.id,
                        "source" => &mut e.source,
                        "type" => &mut e.r#type,
                        "datacontenttype" => &mut e.content_type,
                        "data" => &mut e.data,
                        "data_base64" => &mut e.data_base64,
                        _ => {
                            e.extensions.push((k, v));
                            continue;
                        }
                    };
                    *slot = Some(v);
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

/// The value of an extension attribute of a delivered event.
enum Ext<'a> {
    Text(Text<'a>),
    Number(f64),
    /// Any other JSON value of an envelope attribute.
    Json(&'a RawValue),
}

impl Ext<'_> {
    fn to_value(&self) -> prost_types::Value {
        match self {
            Ext::Text(s) => string_value(s),
            Ext::Number(n) => number_value(*n),
            Ext::Json(raw) => serde_json::from_str::<Value>(raw.get())
                .map(json_into_prost)
                .unwrap_or_default(),
        }
    }
}

/// A delivered message as Dapr's `TopicEventRequest` sees it, borrowed from
/// the message wherever it can be: what [`to_event`] builds and
/// [`encode_event`] writes.
struct EventParts<'a> {
    id: Text<'a>,
    source: Text<'a>,
    r#type: Text<'a>,
    spec_version: Text<'a>,
    content_type: Text<'a>,
    data: Cow<'a, [u8]>,
    /// One entry per name (a later source replaces an earlier one).
    extensions: Vec<(Text<'a>, Ext<'a>)>,
}

impl<'a> EventParts<'a> {
    /// `id` replaces the CloudEvent's id when given; the envelope's own id
    /// is then the `cloudEventId` extension. The extensions are the
    /// message's headers, then the envelope's other attributes, then the
    /// delivery's partition, offset, attempt and key.
    fn of(m: &'a Message, id: Option<&'a str>) -> Self {
        let mut ext: Vec<(Text<'a>, Ext<'a>)> = Vec::with_capacity(m.headers.len() + 8);
        let mut set = |k: Text<'a>, v: Ext<'a>| match ext.iter_mut().find(|(have, _)| *have == k) {
            Some(slot) => slot.1 = v,
            None => ext.push((k, v)),
        };
        for (k, v) in &m.headers {
            set(Cow::Borrowed(k), Ext::Text(Cow::Borrowed(v)));
        }
        let envelope = serde_json::from_slice::<Envelope<'a>>(&m.data)
            .ok()
            .and_then(|ce| Some((ce.spec_version.and_then(raw_text)?, ce)));
        let text = |raw: Option<&'a RawValue>| raw.and_then(raw_text).unwrap_or_default();
        let mut parts = match envelope {
            Some((spec_version, ce)) => {
                let content_type = text(ce.content_type);
                let data = match (ce.data_base64.and_then(raw_text), ce.data) {
                    (Some(b), _) => {
                        Cow::Owned(base64_decode(&b).unwrap_or_else(|| b.into_owned().into_bytes()))
                    }
                    (_, None) => Cow::Borrowed(&[][..]),
                    (_, Some(d)) if d.get() == "null" => Cow::Borrowed(&[][..]),
                    (_, Some(d)) => match raw_text(d) {
                        Some(s) if !is_json(&content_type) => match s {
                            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
                        },
                        _ => json_data(d),
                    },
                };
                for (k, v) in ce.extensions {
                    let v = match raw_text(v) {
                        Some(s) => Ext::Text(s),
                        None => Ext::Json(v),
                    };
                    set(k, v);
                }
                let ce_id = text(ce.id);
                let id = match id {
                    Some(id) => {
                        set(Cow::Borrowed("cloudEventId"), Ext::Text(ce_id));
                        Cow::Borrowed(id)
                    }
                    None => ce_id,
                };
                EventParts {
                    id,
                    source: text(ce.source),
                    r#type: text(ce.r#type),
                    spec_version,
                    content_type,
                    data,
                    extensions: Vec::new(),
                }
            }
            None => EventParts {
                id: id.map_or_else(|| Cow::Owned(new_event_id()), Cow::Borrowed),
                source: Cow::Borrowed(""),
                r#type: Cow::Borrowed(EVENT_TYPE),
                spec_version: Cow::Borrowed("1.0"),
                content_type: Cow::Borrowed(
                    m.headers
                        .get("content-type")
                        .map_or("application/octet-stream", String::as_str),
                ),
                data: Cow::Borrowed(&m.data),
                extensions: Vec::new(),
            },
        };
        set(
            Cow::Borrowed("partition"),
            Ext::Number(f64::from(m.partition)),
        );
        set(Cow::Borrowed("offset"), Ext::Number(m.offset as f64));
        set(Cow::Borrowed("attempt"), Ext::Number(f64::from(m.attempt)));
        if let Some(k) = &m.key {
            set(Cow::Borrowed("partitionKey"), Ext::Text(Cow::Borrowed(k)));
        }
        parts.extensions = ext;
        parts
    }
}

/// The data of an envelope's JSON `data` attribute, as compact JSON: its
/// text as it stands when that has no whitespace (always so for envelopes
/// this runtime wrote), else written again.
fn json_data(d: &RawValue) -> Cow<'_, [u8]> {
    let text = d.get().as_bytes();
    if !text.iter().any(u8::is_ascii_whitespace) {
        return Cow::Borrowed(text);
    }
    serde_json::from_str::<Value>(d.get())
        .and_then(|v| serde_json::to_vec(&v))
        .map_or(Cow::Borrowed(text), Cow::Owned)
}

/// The event Dapr delivers for message `m` of a subscription to `pubsub`
/// (`path`: the route of a programmatic subscription). `id` replaces the
/// CloudEvent's id when given (see [`EventParts::of`]).
pub(super) fn to_event(
    m: &Message,
    pubsub: &str,
    path: &str,
    id: Option<String>,
) -> pb::TopicEventRequest {
    let p = EventParts::of(m, id.as_deref());
    pb::TopicEventRequest {
        id: p.id.into_owned(),
        source: p.source.into_owned(),
        r#type: p.r#type.into_owned(),
        spec_version: p.spec_version.into_owned(),
        data_content_type: p.content_type.into_owned(),
        data: p.data.into_owned(),
        topic: m.topic.clone(),
        pubsub_name: pubsub.to_string(),
        path: path.to_string(),
        extensions: Some(prost_types::Struct {
            fields: p
                .extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_value()))
                .collect(),
        }),
    }
}

/// [`to_event`] as a `SubscribeTopicEventsResponseAlpha1` carrying it,
/// written straight into `out` in protobuf form (no intermediate message:
/// the envelope's strings go from the message's bytes to the output).
pub(super) fn encode_event(m: &Message, pubsub: &str, path: &str, id: &str, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    fn field_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
    fn head(tag: u32, len: usize, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }
    fn bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        if !b.is_empty() {
            head(tag, b.len(), out);
            out.extend_from_slice(b);
        }
    }
    fn bytes_len(tag: u32, b: &[u8]) -> usize {
        if b.is_empty() {
            0
        } else {
            field_len(tag, b.len())
        }
    }
    // google.protobuf.Value: number_value = 2, string_value = 3.
    let value_len = |v: &Ext<'_>, json: Option<&prost_types::Value>| match v {
        Ext::Text(s) => field_len(3, s.len()),
        Ext::Number(_) => key_len(2) + 8,
        Ext::Json(_) => json.map_or(0, prost::Message::encoded_len),
    };

    let p = EventParts::of(m, Some(id));
    // Extension values that are JSON beyond strings and numbers (rare) go
    // through prost's own Value (by index; none: no allocation).
    let json: Vec<Option<prost_types::Value>> =
        if p.extensions.iter().any(|(_, v)| matches!(v, Ext::Json(_))) {
            p.extensions
                .iter()
                .map(|(_, v)| matches!(v, Ext::Json(_)).then(|| v.to_value()))
                .collect()
        } else {
            Vec::new()
        };
    let json = |i: usize| json.get(i).and_then(Option::as_ref);
    // Struct { map<string, Value> fields = 1 }; an entry is { key = 1, value = 2 }.
    let entry_len = |i: usize| {
        let (k, v) = &p.extensions[i];
        field_len(1, k.len()) + field_len(2, value_len(v, json(i)))
    };
    let struct_len: usize = (0..p.extensions.len())
        .map(|i| field_len(1, entry_len(i)))
        .sum();
    let event_len = bytes_len(1, p.id.as_bytes())
        + bytes_len(2, p.source.as_bytes())
        + bytes_len(3, p.r#type.as_bytes())
        + bytes_len(4, p.spec_version.as_bytes())
        + bytes_len(5, p.content_type.as_bytes())
        + bytes_len(6, m.topic.as_bytes())
        + bytes_len(7, &p.data)
        + bytes_len(8, pubsub.as_bytes())
        + bytes_len(9, path.as_bytes())
        + field_len(10, struct_len);
    out.reserve(field_len(2, event_len));
    // SubscribeTopicEventsResponseAlpha1.event_message = 2.
    head(2, event_len, out);
    bytes(1, p.id.as_bytes(), out);
    bytes(2, p.source.as_bytes(), out);
    bytes(3, p.r#type.as_bytes(), out);
    bytes(4, p.spec_version.as_bytes(), out);
    bytes(5, p.content_type.as_bytes(), out);
    bytes(6, m.topic.as_bytes(), out);
    bytes(7, &p.data, out);
    bytes(8, pubsub.as_bytes(), out);
    bytes(9, path.as_bytes(), out);
    head(10, struct_len, out);
    for (i, (k, v)) in p.extensions.iter().enumerate() {
        head(1, entry_len(i), out);
        head(1, k.len(), out);
        out.extend_from_slice(k.as_bytes());
        head(2, value_len(v, json(i)), out);
        match v {
            Ext::Text(s) => {
                head(3, s.len(), out);
                out.extend_from_slice(s.as_bytes());
            }
            Ext::Number(n) => {
                encode_key(2, WireType::SixtyFourBit, out);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Ext::Json(_) => {
                if let Some(j) = json(i) {
                    prost::Message::encode_raw(j, out);
                }
            }
        }
    }
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
