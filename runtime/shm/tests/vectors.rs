//! The test vectors of docs/shm-vectors/v1.json: every byte dump there is
//! what this implementation encodes, and decodes back to the same fields.
//! `WEFT_SHM_WRITE_VECTORS=1 cargo test -p weft-shm --test vectors`
//! rewrites the file (review the diff: the vectors are the spec).

use serde_json::{json, Value};
use weft_shm::control::{Goodbye, Hello, Welcome, MAPPED_MAGIC};
use weft_shm::layout::{Header, Layout};
use weft_shm::record::{decode_region, encode_message, encode_padding, flags, Decoded, Envelope};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `GetStateRequest { store_name: "statestore", key: "order-1" }`, encoded by hand
/// (field 1 and 2, wire type 2).
fn get_state_body() -> Vec<u8> {
    let mut b = vec![0x0a, 10];
    b.extend_from_slice(b"statestore");
    b.extend_from_slice(&[0x12, 7]);
    b.extend_from_slice(b"order-1");
    b
}

/// A length-delimited protobuf field (wire type 2) with a one-byte length.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut b = vec![number << 3 | 2, bytes.len() as u8];
    b.extend_from_slice(bytes);
    b
}

/// `weft.runtime.v1.Metadata { key, values: [value] }`.
fn metadata(key: &str, value: &str) -> Vec<u8> {
    [field(1, key.as_bytes()), field(2, value.as_bytes())].concat()
}

/// A body with a call context block: the 4-byte length, the context, the
/// message (docs/shm-protocol.md §5.1).
fn with_context(context: &[u8], message: &[u8]) -> Vec<u8> {
    [&(context.len() as u32).to_le_bytes()[..], context, message].concat()
}

/// `CallContext { timeout_micros: 250000, metadata: [traceparent] }` and
/// `InvokeServiceRequest { id: "orders", message: { method: "place" } }`.
fn context_request_body() -> Vec<u8> {
    // 250000 as a varint: 0x90 0xa1 0x0f.
    let context = [
        vec![0x08, 0x90, 0xa1, 0x0f],
        field(
            2,
            &metadata(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ),
    ]
    .concat();
    let request = [field(1, b"orders"), field(3, &field(1, b"place"))].concat();
    with_context(&context, &request)
}

/// `CallContext { metadata: [weft-error-origin: app], status_details:
/// google.rpc.Status { code: 9, message: "app says no" } }` and the UTF-8
/// error message.
fn context_error_body() -> Vec<u8> {
    let status = [vec![0x08, 9], field(2, b"app says no")].concat();
    let context = [
        field(2, &metadata("weft-error-origin", "app")),
        field(3, &status),
    ]
    .concat();
    with_context(&context, b"app says no")
}

fn message(name: &str, what: &str, env: Envelope, body: &[u8]) -> Value {
    let mut rec = Vec::new();
    encode_message(&env, body, &mut rec);
    json!({
        "name": name,
        "kind": "record",
        "description": what,
        "envelope": {"method": env.method, "flags": env.flags, "correlation": env.correlation, "status": env.status},
        "body_hex": hex(body),
        "hex": hex(&rec),
    })
}

fn vectors() -> Value {
    let layout = Layout::new(65536, 131072).unwrap();
    let header = Header {
        runtime_pid: 4242,
        app_pid: 4343,
        session_id: 7,
        layout,
    };
    let error_msg = "state store 'nope' is not found; configured state stores: statestore";
    json!({
        "protocol_version": 1,
        "note": "All integers little-endian. Each record's hex is the whole record as it sits in a ring, padding to 8 bytes included.",
        "vectors": [
            {
                "name": "segment_header",
                "kind": "segment_header",
                "description": "First 64 bytes of a segment header (bytes 64..512 are zero but for two words the runtime writes: the session state at 128, 0 while open, and the feature word at 132, 1 = CONTEXT in runtimes that serve call contexts).",
                "fields": {
                    "runtime_pid": 4242, "app_pid": 4343, "session_id": 7,
                    "a2r_offset": layout.a2r_offset, "a2r_capacity": layout.a2r_capacity,
                    "r2a_offset": layout.r2a_offset, "r2a_capacity": layout.r2a_capacity,
                    "total_len": layout.total_len()
                },
                "hex": hex(&header.encode()),
            },
            message("get_state_request", "GetState request (method 2), correlation 7, body GetStateRequest{store_name:\"statestore\", key:\"order-1\"}",
                Envelope { method: 2, flags: 0, correlation: 7, status: 0 }, &get_state_body()),
            message("get_state_response", "Its answer: END, status 0, body GetStateResponse{data:\"hi\", etag:\"1\"}",
                Envelope { method: 2, flags: flags::END, correlation: 7, status: 0 }, &[0x0a, 2, b'h', b'i', 0x12, 1, b'1']),
            {
                "name": "padding",
                "kind": "padding",
                "description": "Padding record filling the last 40 bytes of a ring (length 40, type -1; payload bytes are ignored, zero here).",
                "length": 40,
                "hex": hex(&encode_padding(40)),
            },
            message("error_response", "Error answer to GetState: END, status 3 (INVALID_ARGUMENT), body the UTF-8 message",
                Envelope { method: 2, flags: flags::END, correlation: 8, status: 3 }, error_msg.as_bytes()),
            message("stream_end", "End marker of a SubscribeConfiguration stream (method 19): END, status 0, empty body",
                Envelope { method: 19, flags: flags::END, correlation: 9, status: 0 }, &[]),
            message("cancel", "Cancel request for correlation 9",
                Envelope { method: 0, flags: flags::CANCEL, correlation: 9, status: 0 }, &[]),
            message("context_request", "InvokeService request (method 1) with a call context (flag CONTEXT, 0x10), correlation 10: u32 context length 76, CallContext{timeout_micros: 250000, metadata: [{key: \"traceparent\", values: [\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"]}]}, then InvokeServiceRequest{id: \"orders\", message: {method: \"place\"}}",
                Envelope { method: 1, flags: flags::CONTEXT, correlation: 10, status: 0 }, &context_request_body()),
            message("context_error_response", "Its error answer: END|CONTEXT, status 9 (FAILED_PRECONDITION); u32 context length 43, CallContext{metadata: [{key: \"weft-error-origin\", values: [\"app\"]}], status_details: google.rpc.Status{code: 9, message: \"app says no\"}}, then the UTF-8 message \"app says no\"",
                Envelope { method: 1, flags: flags::END | flags::CONTEXT, correlation: 10, status: 9 }, &context_error_body()),
            {
                "name": "hello",
                "kind": "hello",
                "description": "App's hello: version 1, rings 65536 and 131072, app id \"orders\", token \"t0k\"",
                "fields": {"version": 1, "a2r_capacity": 65536, "r2a_capacity": 131072, "app_id": "orders", "token": "t0k"},
                "hex": hex(&Hello::new("orders", "t0k", 65536, 131072).encode()),
            },
            {
                "name": "welcome",
                "kind": "welcome",
                "description": "Runtime's welcome: status 0, segment path",
                "fields": {"version": 1, "status": 0, "text": "/dev/shm/weft-4242-7-0000abcd"},
                "hex": hex(&Welcome { version: 1, status: 0, text: "/dev/shm/weft-4242-7-0000abcd".into() }.encode()),
            },
            {
                "name": "mapped",
                "kind": "mapped",
                "description": "App's acknowledgement that it mapped the segment",
                "hex": hex(&MAPPED_MAGIC),
            },
            {
                "name": "goodbye",
                "kind": "goodbye",
                "description": "Runtime's goodbye on the socket: 0xFF, code 3, message",
                "fields": {"code": 3, "message": "protocol error: unknown method id 999"},
                "hex": hex(&Goodbye { code: 3, message: "protocol error: unknown method id 999".into() }.encode()),
            }
        ]
    })
}

#[test]
fn vectors_match_the_spec_file() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/shm-vectors/v1.json");
    let ours = vectors();
    if std::env::var_os("WEFT_SHM_WRITE_VECTORS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&ours).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        file, ours,
        "docs/shm-vectors/v1.json differs from what weft-shm encodes"
    );

    // And decoding each dump gives the fields back.
    for v in file["vectors"].as_array().unwrap() {
        let bytes = unhex(v["hex"].as_str().unwrap());
        match v["kind"].as_str().unwrap() {
            "segment_header" => {
                let f = &v["fields"];
                let h = Header::decode(&bytes, f["total_len"].as_u64().unwrap()).unwrap();
                assert_eq!(u64::from(h.runtime_pid), f["runtime_pid"].as_u64().unwrap());
                assert_eq!(h.layout.r2a_offset, f["r2a_offset"].as_u64().unwrap());
            }
            "record" => {
                let got = decode_region(&bytes, 1 << 20).unwrap();
                let e = &v["envelope"];
                let Decoded::Message(env, body) = &got[0] else {
                    panic!("not a message")
                };
                assert_eq!(u64::from(env.method), e["method"].as_u64().unwrap());
                assert_eq!(u64::from(env.flags), e["flags"].as_u64().unwrap());
                assert_eq!(env.correlation, e["correlation"].as_u64().unwrap());
                assert_eq!(u64::from(env.status), e["status"].as_u64().unwrap());
                assert_eq!(hex(body), v["body_hex"].as_str().unwrap());
                assert_eq!(bytes.len() % 8, 0);
            }
            "padding" => assert_eq!(
                decode_region(&bytes, 1 << 20).unwrap(),
                vec![Decoded::Padding]
            ),
            "hello" => {
                let h = Hello::read_from(&mut &bytes[..]).unwrap();
                assert_eq!(h.app_id, v["fields"]["app_id"].as_str().unwrap());
            }
            "welcome" => {
                let w = Welcome::read_from(&mut &bytes[..]).unwrap();
                assert_eq!(w.text, v["fields"]["text"].as_str().unwrap());
            }
            "goodbye" => {
                let g = Goodbye::read_after_marker(&mut &bytes[1..]).unwrap();
                assert_eq!(g.message, v["fields"]["message"].as_str().unwrap());
            }
            "mapped" => assert_eq!(bytes, MAPPED_MAGIC),
            other => panic!("unknown vector kind {other}"),
        }
    }
}

/// The decoder never panics on arbitrary bytes (the in-suite stand-in for
/// the cargo-fuzz target in fuzz/).
#[test]
fn decoder_survives_random_bytes() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut valid = Vec::new();
    encode_message(
        &Envelope {
            method: 2,
            flags: 0,
            correlation: 1,
            status: 0,
        },
        &get_state_body(),
        &mut valid,
    );
    for round in 0..200_000 {
        let len = (next() % 256) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Mutate a valid record instead: reaches deeper checks.
            buf = valid.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % buf.len();
                buf[i] = next() as u8;
            }
        }
        let _ = decode_region(&buf, 1 + next() % 512);
    }
}
