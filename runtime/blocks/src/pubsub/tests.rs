use super::envelope::*;
use super::publish::*;
use super::subscription::*;
use super::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;
use weft_components::pubsub::{Message, PubSub, PublishRequest};

use crate::context::CallContext;
use crate::error::Code;
use weft_components::pubsub::embedded::EmbeddedBroker;
use weft_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as ReqType;
use weft_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as RespType;
use weft_proto::runtime::topic_event_response::TopicEventResponseStatus as Status;

fn block() -> PubSubBlock {
    let (_tx, rx) = watch::channel(false);
    let mut components: BTreeMap<String, Arc<dyn PubSub>> = BTreeMap::new();
    components.insert(
        "pubsub".into(),
        Arc::new(EmbeddedBroker::new("pubsub", 4, 1000, 1 << 20)),
    );
    PubSubBlock::new("app-1", components, rx)
}

fn envelope(
    b: &PubSubBlock,
    data: &[u8],
    ct: &str,
    md: &[(&str, &str)],
) -> (PublishRequest, Map<String, Value>) {
    let md: HashMap<String, String> = md
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let m = b
        .inner
        .message(
            "pubsub",
            "orders",
            data.to_vec(),
            ct,
            (&md).into(),
            None,
            &now_rfc3339(),
        )
        .unwrap();
    let ce = serde_json::from_slice(&m.data).unwrap();
    (m, ce)
}

#[test]
fn json_data_is_embedded_as_json() {
    let (m, ce) = envelope(
        &block(),
        br#"{"a":1}"#,
        "application/json",
        &[("partitionKey", "k1"), ("x", "y")],
    );
    assert_eq!(ce["data"], serde_json::json!({"a": 1}));
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["source"], "app-1");
    assert_eq!(ce["type"], EVENT_TYPE);
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["topic"], "orders");
    assert_eq!(ce["pubsubname"], "pubsub");
    assert!(ce["time"].as_str().unwrap().ends_with('Z'));
    assert!(uuid::Uuid::parse_str(ce["id"].as_str().unwrap()).is_ok());
    assert_eq!(m.key.as_deref(), Some("k1"));
    assert_eq!(
        m.headers,
        HashMap::from([("x".to_string(), "y".to_string())])
    );
}

#[test]
fn text_binary_and_default_content_types() {
    let b = block();
    let (_, ce) = envelope(&b, b"hello", "", &[]);
    assert_eq!(
        (ce["data"].as_str(), ce["datacontenttype"].as_str()),
        (Some("hello"), Some("text/plain"))
    );
    let (_, ce) = envelope(&b, b"not json", "application/json", &[]);
    assert_eq!(ce["data"], "not json");
    let (_, ce) = envelope(&b, &[0, 1, 255], "application/octet-stream", &[]);
    assert_eq!(ce["data_base64"], "AAH/");
    assert!(ce.get("data").is_none());
    let (_, ce) = envelope(&b, &[0xff, 0xfe], "text/plain", &[]);
    assert_eq!(ce["data_base64"], "//4=");
}

#[test]
fn cloudevent_passthrough_fills_missing_fields_and_overrides_apply() {
    let b = block();
    let (_, ce) = envelope(
        &b,
        br#"{"id":"mine","data":{"v":2},"myext":"e"}"#,
        "application/cloudevents+json",
        &[],
    );
    assert_eq!(ce["id"], "mine");
    assert_eq!(ce["myext"], "e");
    assert_eq!(ce["source"], "app-1");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["topic"], "orders");
    let (m, ce) = envelope(
        &b,
        b"x",
        "text/plain",
        &[("cloudevent.id", "fixed"), ("cloudevent.type", "t.x")],
    );
    assert_eq!(
        (ce["id"].as_str(), ce["type"].as_str()),
        (Some("fixed"), Some("t.x"))
    );
    assert!(m.headers.is_empty());
    let md = HashMap::from([("x".to_string(), "y".to_string())]);
    let err = b
        .inner
        .message(
            "pubsub",
            "t",
            b"nope".to_vec(),
            CLOUDEVENTS_JSON,
            (&md).into(),
            None,
            &now_rfc3339(),
        )
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[test]
fn raw_payload_is_published_as_is() {
    let b = block();
    let md = HashMap::from([(RAW_PAYLOAD.to_string(), "true".to_string())]);
    let m = b
        .inner
        .message(
            "pubsub",
            "t",
            vec![1, 2],
            "application/x",
            (&md).into(),
            None,
            &now_rfc3339(),
        )
        .unwrap();
    assert_eq!(m.data, vec![1, 2]);
    assert_eq!(
        m.headers.get("content-type").map(String::as_str),
        Some("application/x")
    );
    let md = HashMap::from([(RAW_PAYLOAD.to_string(), "maybe".to_string())]);
    let err = b
        .inner
        .message(
            "pubsub",
            "t",
            vec![],
            "",
            (&md).into(),
            Some(3),
            &now_rfc3339(),
        )
        .unwrap_err();
    assert!(
        err.message().contains("entries[3].metadata.rawPayload"),
        "{}",
        err.message()
    );
}

#[test]
fn event_decoding_round_trips() {
    let b = block();
    let (m, _) = envelope(
        &b,
        br#"{"a":1}"#,
        "application/json",
        &[("partitionKey", "k"), ("h", "v")],
    );
    let msg = Message {
        topic: "orders".into(),
        partition: 2,
        offset: 7,
        key: m.key,
        data: m.data,
        headers: m.headers,
        attempt: 1,
    };
    let ev = to_event(&msg, "pubsub", "/p", Some("d-1".into()));
    assert_eq!(ev.id, "d-1");
    assert_eq!(ev.data, br#"{"a":1}"#);
    assert_eq!(ev.data_content_type, "application/json");
    assert_eq!(
        (ev.topic.as_str(), ev.pubsub_name.as_str(), ev.path.as_str()),
        ("orders", "pubsub", "/p")
    );
    let ext = ev.extensions.unwrap().fields;
    assert_eq!(ext["partition"], number_value(2.0));
    assert_eq!(ext["offset"], number_value(7.0));
    assert_eq!(ext["partitionKey"], string_value("k"));
    assert_eq!(ext["h"], string_value("v"));
    assert!(ext.contains_key("cloudEventId") && ext.contains_key("time"));

    let raw = Message {
        data: vec![9, 9],
        headers: HashMap::new(),
        key: None,
        ..msg
    };
    let ev = to_event(&raw, "pubsub", "", None);
    assert_eq!(
        (ev.data, ev.data_content_type.as_str()),
        (vec![9, 9], "application/octet-stream")
    );
}

/// The event written straight to protobuf (the shared-memory stream's
/// form) decodes to the event `to_event` builds, for every shape a message
/// takes: envelopes this runtime wrote, envelopes an app wrote (escaped and
/// non-string attributes, extensions of every JSON type, pretty-printed
/// data, base64 data), headers an envelope attribute overrides, and raw
/// payloads without an envelope.
#[test]
fn encoded_event_decodes_to_the_built_event() {
    use prost::Message as _;
    let b = block();
    let mut messages = Vec::new();
    for (data, ct) in [
        (
            &br#"{"b":[1,2.5,"x"],"a":{"k":null}}"#[..],
            "application/json",
        ),
        (b"plain text", "text/plain"),
        (&[0, 159, 146, 150][..], "application/octet-stream"),
        (b"", "text/plain"),
    ] {
        let (m, _) = envelope(&b, data, ct, &[("partitionKey", "k1"), ("h", "v")]);
        messages.push((m.data, m.headers, m.key));
    }
    let app_written = [
        r#"{"specversion":"1.0","id":"e\"1\u00e9","source":"s","type":"t","datacontenttype":"application/json","data":{ "z": 1,  "y": "a b" },"n":3,"o":{"p":[true,null]},"s":"x\ny","h":"from-envelope","nul":null}"#,
        r#"{"specversion":"1.0","id":"e2","data_base64":"AAEC","datacontenttype":"application/octet-stream"}"#,
        r#"{"specversion":"1.0","id":7,"source":null,"data":"text \u0041","datacontenttype":"text/plain"}"#,
        r#"{"specversion":"1.0","data":"\"quoted\"","datacontenttype":"application/json"}"#,
        r#"{"specversion":"1.0","data_base64":"not base64!","data":"ignored"}"#,
        r#"{"specversion":1,"id":"not an envelope"}"#,
        r#"[1,2,3]"#,
        r#"{"specversion":"1.0","data":null}"#,
    ];
    for text in app_written {
        let headers = HashMap::from([
            ("h".to_string(), "from-header".to_string()),
            ("content-type".to_string(), "application/x".to_string()),
        ]);
        messages.push((text.as_bytes().to_vec(), headers, None));
    }
    messages.push((vec![1, 2, 3], HashMap::new(), Some("k2".into())));
    for (i, (data, headers, key)) in messages.into_iter().enumerate() {
        let m = Message {
            topic: "orders".into(),
            partition: 3,
            offset: 41 + i as i64,
            key,
            data,
            headers,
            attempt: 2,
        };
        let built = to_event(&m, "pubsub", "/route", Some(format!("d-{i}")));
        let mut encoded = Vec::new();
        encode_event(&m, "pubsub", "/route", &format!("d-{i}"), &mut encoded);
        let decoded = weft_proto::runtime::SubscribeTopicEventsResponseAlpha1::decode(&encoded[..])
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        let want = weft_proto::runtime::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(RespType::EventMessage(built.clone())),
        };
        assert_eq!(
            decoded,
            want,
            "message {i}: {}",
            String::from_utf8_lossy(&m.data)
        );
        let ext = built.extensions.unwrap().fields;
        assert_eq!(ext["offset"], number_value(41.0 + i as f64), "message {i}");
        assert_eq!(ext["attempt"], number_value(2.0), "message {i}");
    }
}

/// What `to_event` makes of envelopes an app wrote itself.
#[test]
fn app_written_envelopes_as_delivered() {
    let m = |data: &str| Message {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: None,
        data: data.as_bytes().to_vec(),
        headers: HashMap::from([("h".to_string(), "from-header".to_string())]),
        attempt: 0,
    };
    let ev = to_event(
        &m(
            r#"{"specversion":"1.0","id":"e\"1","data":{ "z": 1, "y": "a b" },"datacontenttype":"application/json","h":"from-envelope","n":3}"#,
        ),
        "p",
        "",
        Some("d".into()),
    );
    assert_eq!(
        ev.data, br#"{"y":"a b","z":1}"#,
        "pretty-printed JSON data is compacted"
    );
    let ext = ev.extensions.unwrap().fields;
    assert_eq!(ext["cloudEventId"], string_value("e\"1"));
    assert_eq!(
        ext["h"],
        string_value("from-envelope"),
        "the envelope overrides a header"
    );
    assert_eq!(ext["n"], number_value(3.0));
    let ev = to_event(
        &m(r#"{"specversion":"1.0","data":"text \u0041","datacontenttype":"text/plain"}"#),
        "p",
        "",
        None,
    );
    assert_eq!(ev.data, b"text A");
    let ev = to_event(
        &m(r#"{"specversion":"1.0","data_base64":"AAEC"}"#),
        "p",
        "",
        None,
    );
    assert_eq!(ev.data, vec![0, 1, 2]);
    let ev = to_event(
        &m(r#"{"specversion":"1.0","data":"\"q\"","datacontenttype":"application/json"}"#),
        "p",
        "",
        None,
    );
    assert_eq!(ev.data, br#""\"q\"""#, "a JSON string stays JSON");
    let ev = to_event(
        &m(r#"{"specversion":2,"data":"x"}"#),
        "p",
        "",
        Some("d".into()),
    );
    assert_eq!(
        (ev.id.as_str(), ev.data.as_slice()),
        ("d", br#"{"specversion":2,"data":"x"}"#.as_slice()),
        "no string specversion: no envelope, the payload as it is"
    );
}

/// The envelope as the map-based path builds it (what `envelope`
/// writes directly).
fn envelope_via_map(
    b: &PubSubBlock,
    data: &[u8],
    ct: &str,
    md: &HashMap<String, String>,
    now: &str,
) -> Value {
    let ct = if ct.trim().is_empty() {
        "text/plain"
    } else {
        ct
    };
    let mut ce = Map::new();
    ce.insert("datacontenttype".into(), ct.into());
    let (field, value) = embed_data(ct, data.to_vec());
    ce.insert(field.into(), value);
    b.inner
        .fill_envelope(&mut ce, "pub\"sub", "tö\\pic", md.into(), now);
    Value::Object(ce)
}

#[test]
fn direct_envelope_matches_the_map_based_one() {
    let b = block();
    let now = now_rfc3339();
    /// Data, content type, request metadata.
    type Case<'a> = (&'a [u8], &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case; 8] = [
        (b"hello \"world\"\n", "", &[]),
        (br#"{"a":[1,2.5,"x"],"b":null}"#, "application/json", &[]),
        (b"not json", "application/json", &[]),
        (&[0, 1, 255], "application/octet-stream", &[]),
        (&[0xff, 0xfe], "text/plain", &[]),
        (
            b"x",
            "text/plain; charset=utf-8",
            &[("cloudevent.subject", "s\u{e9}")],
        ),
        (
            b"y",
            "text/plain",
            &[
                ("cloudevent.id", "fixed"),
                ("cloudevent.source", "src"),
                ("cloudevent.type", "t.x"),
                ("cloudevent.specversion", "9.9"),
            ],
        ),
        (b"z", "text/plain", &[("cloudevent.id", ""), ("h", "v")]),
    ];
    for (data, ct, md) in cases {
        let md: HashMap<String, String> = md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let direct = b
            .inner
            .envelope("pub\"sub", "tö\\pic", data.to_vec(), ct, (&md).into(), &now);
        let mut direct: Value = serde_json::from_slice(&direct)
            .unwrap_or_else(|e| panic!("{ct}: not JSON: {e}: {direct:?}"));
        let mut expected = envelope_via_map(&b, data, ct, &md, &now);
        let ids = (direct["id"].take(), expected["id"].take());
        match md.get("cloudevent.id").filter(|v| !v.is_empty()) {
            Some(id) => assert_eq!(
                (ids.0.as_str(), ids.1.as_str()),
                (Some(id.as_str()), Some(id.as_str()))
            ),
            None => {
                let id = ids.0.as_str().expect("id is a string");
                let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
                assert_eq!(parsed.get_version_num(), 4, "{id}");
            }
        }
        assert_eq!(direct, expected, "{ct} {md:?}");
    }
    // Ids are unique.
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_event_id()).collect();
    assert_eq!(ids.len(), 1000);
}

#[tokio::test]
async fn bulk_entry_metadata_overrides_the_request_metadata() {
    let b = block();
    let base = HashMap::from([
        ("partitionKey".to_string(), "req-key".to_string()),
        ("shared".to_string(), "from-request".to_string()),
        ("only-request".to_string(), "r".to_string()),
    ]);
    let entry = HashMap::from([
        ("partitionKey".to_string(), "entry-key".to_string()),
        ("shared".to_string(), "from-entry".to_string()),
    ]);
    let md = Md {
        base: &base,
        entry: Some(&entry),
        trace: None,
    };
    let m = b
        .inner
        .message(
            "pubsub",
            "t",
            b"x".to_vec(),
            "",
            md,
            Some(0),
            &now_rfc3339(),
        )
        .unwrap();
    assert_eq!(m.key.as_deref(), Some("entry-key"));
    assert_eq!(
        m.headers,
        HashMap::from([
            ("shared".to_string(), "from-entry".to_string()),
            ("only-request".to_string(), "r".to_string()),
        ])
    );
}

#[test]
fn in_flight_per_partition_is_validated() {
    let req = |v: &str| SubscriptionRequest {
        pubsub_name: "pubsub".into(),
        topic: "t".into(),
        metadata: HashMap::from([(MAX_IN_FLIGHT_PER_PARTITION.to_string(), v.to_string())]),
        ..Default::default()
    };
    assert_eq!(
        subscribe_options(&req("16"), "app")
            .unwrap()
            .max_in_flight_per_partition,
        16
    );
    let strict = SubscriptionRequest {
        metadata: HashMap::new(),
        ..req("1")
    };
    assert_eq!(
        subscribe_options(&strict, "app")
            .unwrap()
            .max_in_flight_per_partition,
        1,
        "strict by default"
    );
    for bad in ["0", "-1", "x", "1025"] {
        let err = subscribe_options(&req(bad), "app").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains(MAX_IN_FLIGHT_PER_PARTITION) && err.message().contains("1024"),
            "{}",
            err.message()
        );
    }
}

#[test]
fn base64_round_trip() {
    for data in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0, 255, 128, 7, 9]] {
        assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
    }
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert!(base64_decode("!!").is_none());
}

#[tokio::test]
async fn validation_names_the_field() {
    let b = block();
    let err = b
        .publish_event(
            &CallContext::app(),
            pb::PublishEventRequest {
                pubsub_name: "nope".into(),
                topic: "t".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("pub/sub 'nope' is not found; configured pub/subs: pubsub"),
        "{}",
        err.message()
    );
    let err = b
        .publish_event(
            &CallContext::app(),
            pb::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.message().contains("topic"), "{}", err.message());
    let entry = |id: &str| pb::BulkPublishRequestEntry {
        entry_id: id.into(),
        event: b"x".to_vec(),
        ..Default::default()
    };
    let bulk = |entries| pb::BulkPublishRequest {
        pubsub_name: "pubsub".into(),
        topic: "t".into(),
        entries,
        ..Default::default()
    };
    let err = b
        .bulk_publish_event(&CallContext::app(), bulk(vec![entry("a"), entry("")]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("entries[1].entry_id"),
        "{}",
        err.message()
    );
    let err = b
        .bulk_publish_event(&CallContext::app(), bulk(vec![entry("a"), entry("a")]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("entries[1].entry_id 'a'"),
        "{}",
        err.message()
    );
    let ok = b
        .bulk_publish_event(&CallContext::app(), bulk(vec![entry("a"), entry("b")]))
        .await
        .unwrap();
    assert!(ok.failed_entries.is_empty());
    let req = SubscriptionRequest {
        pubsub_name: "pubsub".into(),
        topic: "t".into(),
        metadata: HashMap::from([(MAX_IN_FLIGHT.to_string(), "0".to_string())]),
        ..Default::default()
    };
    let err = b
        .subscribe(req, SubscriptionKind::Streaming)
        .await
        .err()
        .unwrap();
    assert!(err.message().contains(MAX_IN_FLIGHT), "{}", err.message());
}

#[tokio::test]
async fn streaming_subscription_acks_and_rejects_unknown_ids() {
    let b = block();
    let (req_tx, req_rx) = mpsc::channel(8);
    let mut out = b.subscribe_topic_events(
        &CallContext::app(),
        tokio_stream::wrappers::ReceiverStream::new(req_rx),
    );
    let initial = |topic: &str| pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: topic.into(),
                ..Default::default()
            },
        )),
    };
    req_tx.send(Ok(initial("s"))).await.unwrap();
    let first = out.recv().await.unwrap().unwrap();
    assert!(matches!(
        first.subscribe_topic_events_response_type,
        Some(RespType::InitialResponse(_))
    ));
    assert_eq!(b.subscriptions().len(), 1);
    b.publish_event(
        &CallContext::app(),
        pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "s".into(),
            data: b"hi".to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let Some(RespType::EventMessage(ev)) = out
        .recv()
        .await
        .unwrap()
        .unwrap()
        .subscribe_topic_events_response_type
    else {
        panic!("expected an event");
    };
    assert_eq!(ev.data, b"hi");
    let processed = |id: &str| pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(ReqType::EventProcessed(
            pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                id: id.into(),
                status: Some(pb::TopicEventResponse {
                    status: Status::Success as i32,
                }),
            },
        )),
    };
    req_tx.send(Ok(processed(&ev.id))).await.unwrap();
    req_tx.send(Ok(processed("bogus"))).await.unwrap();
    let err = out.recv().await.unwrap().unwrap_err();
    assert!(err.message().contains("'bogus'"), "{}", err.message());
    assert!(out.recv().await.is_none());

    // A first message that is not initial_request.
    let (req_tx, req_rx) = mpsc::channel(8);
    let mut out = b.subscribe_topic_events(
        &CallContext::app(),
        tokio_stream::wrappers::ReceiverStream::new(req_rx),
    );
    req_tx.send(Ok(processed("x"))).await.unwrap();
    let err = out.recv().await.unwrap().unwrap_err();
    assert!(
        err.message().contains("initial_request"),
        "{}",
        err.message()
    );
}

#[test]
fn content_types_are_compared_without_case_or_parameters() {
    for ct in [
        "application/json",
        " Application/JSON ; charset=utf-8",
        "text/json",
        "application/vnd.api+JSON",
    ] {
        assert!(is_json(ct), "{ct}");
    }
    for ct in ["", "json", "application/jsonx", "text/plain; a=+json"] {
        assert!(!is_json(ct), "{ct}");
    }
    assert!(is_binary("APPLICATION/octet-stream;x=1"));
    assert!(!is_binary("application/octet"));
    assert!(is_cloudevent("application/CloudEvents+json; charset=utf-8"));
    assert!(!is_cloudevent("application/json"));
}
