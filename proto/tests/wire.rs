//! Pins field numbers and wire types of a few Dapr-compatible messages with
//! hand-computed encodings.

use prost::Message;
use weft_proto::common::{state_options, ConfigurationItem, Etag, StateItem, StateOptions};
use weft_proto::runtime::{
    GetStateRequest, SaveStateRequest, SubscribeConfigurationResponse, TopicEventRequest,
};

#[test]
fn get_state_request_layout() {
    let req = GetStateRequest {
        store_name: "s".into(),
        key: "k".into(),
        consistency: state_options::StateConsistency::ConsistencyStrong as i32,
        metadata: Default::default(),
    };
    let bytes = req.encode_to_vec();
    // 1:store_name (LEN), 2:key (LEN), 3:consistency (VARINT)
    assert_eq!(bytes, [0x0a, 0x01, b's', 0x12, 0x01, b'k', 0x18, 0x02]);
    assert_eq!(GetStateRequest::decode(bytes.as_slice()).unwrap(), req);
}

#[test]
fn save_state_request_layout() {
    let req = SaveStateRequest {
        store_name: "st".into(),
        states: vec![StateItem {
            key: "k".into(),
            value: b"v".to_vec(),
            etag: Some(Etag { value: "1".into() }),
            metadata: Default::default(),
            options: Some(StateOptions {
                concurrency: state_options::StateConcurrency::ConcurrencyFirstWrite as i32,
                consistency: state_options::StateConsistency::ConsistencyStrong as i32,
            }),
        }],
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 0x02, b's', b't',           // 1: store_name
        0x12, 0x11,                       // 2: states[0], 17 bytes
          0x0a, 0x01, b'k',               //   1: key
          0x12, 0x01, b'v',               //   2: value
          0x1a, 0x03, 0x0a, 0x01, b'1',   //   3: etag { 1: value }
          0x2a, 0x04, 0x08, 0x01, 0x10, 0x02, // 5: options { 1: concurrency, 2: consistency }
    ];
    let bytes = req.encode_to_vec();
    assert_eq!(bytes, expected);
    assert_eq!(SaveStateRequest::decode(bytes.as_slice()).unwrap(), req);
}

#[test]
fn subscribe_configuration_response_layout() {
    let mut resp = SubscribeConfigurationResponse {
        id: "id".into(),
        ..Default::default()
    };
    resp.items.insert(
        "a".into(),
        ConfigurationItem {
            value: "x".into(),
            version: "1".into(),
            metadata: Default::default(),
        },
    );
    #[rustfmt::skip]
    let expected = [
        0x0a, 0x02, b'i', b'd',           // 1: id
        0x12, 0x0b,                       // 2: items map entry, 11 bytes
          0x0a, 0x01, b'a',               //   key
          0x12, 0x06,                     //   value: ConfigurationItem
            0x0a, 0x01, b'x',             //     1: value
            0x12, 0x01, b'1',             //     2: version
    ];
    let bytes = resp.encode_to_vec();
    assert_eq!(bytes, expected);
    assert_eq!(
        SubscribeConfigurationResponse::decode(bytes.as_slice()).unwrap(),
        resp
    );
}

#[test]
fn topic_event_request_topic_and_data_numbers() {
    // Upstream numbers `topic` 6 and `data` 7 (out of declaration order).
    let ev = TopicEventRequest {
        topic: "t".into(),
        data: b"d".to_vec(),
        ..Default::default()
    };
    assert_eq!(ev.encode_to_vec(), [0x32, 0x01, b't', 0x3a, 0x01, b'd']);
}

#[test]
fn descriptor_set_lists_services() {
    let fds = prost_types::FileDescriptorSet::decode(weft_proto::FILE_DESCRIPTOR_SET).unwrap();
    let services: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "dapr.proto.runtime.v1")
        .flat_map(|f| f.service.iter().map(|s| s.name().to_owned()))
        .collect();
    for name in [
        "Dapr",
        "AppCallback",
        "AppCallbackHealthCheck",
        "AppCallbackAlpha",
    ] {
        assert!(services.iter().any(|s| s == name), "missing service {name}");
    }
}
