//! Random inputs at the edges of a real `weft` on its embedded defaults:
//! every unary Dapr gRPC method (and weft's GetNextId) fed random but
//! well-typed requests — empty, long, odd and near-valid strings, extreme
//! numbers, random bytes and metadata — and raw random bytes on the gRPC
//! and HTTP ports. Each call must end in an answer (a value or an error
//! status), and afterwards the process must still be running and serving.
//! The generator is seeded (printed), so a failing case can be replayed
//! with `WEFT_RANDOM_SEED`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proto::common;
use weft_proto::runtime as pb;
use weft_tests::{http_status, Weft, WeftOptions};

/// xorshift64*: enough to vary inputs, seedable to replay them.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn text(&mut self) -> String {
        match self.below(9) {
            0 => String::new(),
            1 => [
                "statestore",
                "pubsub",
                "configstore",
                "lockstore",
                "sequencer",
                "secretstore",
            ][self.below(6) as usize]
                .to_string(),
            2 => "x".repeat(self.below(20_000) as usize),
            3 => "k||v||".repeat(self.below(5) as usize + 1),
            4 => "ключ\u{0}\u{1F600}\u{FFFD}".to_string(),
            5 => " \t\n".to_string(),
            6 => format!("{}", self.next() as i64),
            _ => (0..self.below(40))
                .map(|_| (b' ' + self.below(95) as u8) as char)
                .collect(),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        (0..self.below(2048)).map(|_| self.next() as u8).collect()
    }

    fn int(&mut self) -> i32 {
        match self.below(6) {
            0 => 0,
            1 => -1,
            2 => i32::MAX,
            3 => i32::MIN,
            4 => 1,
            _ => self.next() as i32,
        }
    }

    fn metadata(&mut self) -> HashMap<String, String> {
        let keys = [
            "ttlInSeconds",
            "partitionKey",
            "contentType",
            "rawPayload",
            "maxInFlight",
            "consumerGroup",
        ];
        (0..self.below(4))
            .map(|_| {
                let k = if self.below(2) == 0 {
                    keys[self.below(keys.len() as u64) as usize].to_string()
                } else {
                    self.text()
                };
                let v = match self.below(4) {
                    0 => "-1".to_string(),
                    1 => "99999999999999999999".to_string(),
                    2 => "true".to_string(),
                    _ => self.text(),
                };
                (k, v)
            })
            .collect()
    }

    fn item(&mut self) -> common::StateItem {
        common::StateItem {
            key: self.text(),
            value: self.bytes(),
            etag: (self.below(3) == 0).then(|| common::Etag { value: self.text() }),
            metadata: self.metadata(),
            options: (self.below(3) == 0).then(|| common::StateOptions {
                concurrency: self.int(),
                consistency: self.int(),
            }),
        }
    }
}

/// One random call of a random method: `Ok(name)` when the runtime
/// answered (with a value or an error status), `Err` when the connection
/// failed.
async fn one_call(
    c: &mut pb::dapr_client::DaprClient<tonic::transport::Channel>,
    seq: &mut weft_proto::sequencer::sequencer_client::SequencerClient<tonic::transport::Channel>,
    r: &mut Rng,
) -> Result<(&'static str, tonic::Code), tonic::Status> {
    fn req<T>(m: T) -> tonic::Request<T> {
        let mut q = tonic::Request::new(m);
        q.set_timeout(Duration::from_secs(5));
        q
    }
    macro_rules! call {
        ($name:literal, $fut:expr) => {
            match $fut.await {
                Ok(_) => Ok(($name, tonic::Code::Ok)),
                Err(s) if is_transport(&s) => Err(s),
                // A refusal must arrive as such (an error message too long
                // for its header used to turn into an HTTP/2 error).
                Err(s) if s.message().contains("h2 protocol error") => Err(s),
                Err(s) => Ok(($name, s.code())),
            }
        };
    }
    match r.below(16) {
        0 => call!(
            "GetState",
            c.get_state(req(pb::GetStateRequest {
                store_name: r.text(),
                key: r.text(),
                consistency: r.int(),
                metadata: r.metadata(),
            }))
        ),
        1 => {
            let states = (0..r.below(4)).map(|_| r.item()).collect();
            call!(
                "SaveState",
                c.save_state(req(pb::SaveStateRequest {
                    store_name: r.text(),
                    states,
                }))
            )
        }
        2 => call!(
            "DeleteState",
            c.delete_state(req(pb::DeleteStateRequest {
                store_name: r.text(),
                key: r.text(),
                etag: None,
                options: None,
                metadata: r.metadata(),
            }))
        ),
        3 => {
            let keys = (0..r.below(5)).map(|_| r.text()).collect();
            call!(
                "GetBulkState",
                c.get_bulk_state(req(pb::GetBulkStateRequest {
                    store_name: r.text(),
                    keys,
                    parallelism: r.int(),
                    metadata: r.metadata(),
                }))
            )
        }
        4 => {
            let operations = (0..r.below(4))
                .map(|_| pb::TransactionalStateOperation {
                    operation_type: ["upsert", "delete", "", "merge"][r.below(4) as usize].into(),
                    request: (r.below(4) != 0).then(|| r.item()),
                })
                .collect();
            call!(
                "ExecuteStateTransaction",
                c.execute_state_transaction(req(pb::ExecuteStateTransactionRequest {
                    store_name: r.text(),
                    operations,
                    metadata: r.metadata(),
                }))
            )
        }
        5 => call!(
            "PublishEvent",
            c.publish_event(req(pb::PublishEventRequest {
                pubsub_name: r.text(),
                topic: r.text(),
                data: r.bytes(),
                data_content_type: r.text(),
                metadata: r.metadata(),
            }))
        ),
        6 => {
            let entries = (0..r.below(4))
                .map(|_| pb::BulkPublishRequestEntry {
                    entry_id: r.text(),
                    event: r.bytes(),
                    content_type: r.text(),
                    metadata: r.metadata(),
                })
                .collect();
            call!(
                "BulkPublishEvent",
                c.bulk_publish_event(req(pb::BulkPublishRequest {
                    pubsub_name: r.text(),
                    topic: r.text(),
                    entries,
                    metadata: r.metadata(),
                }))
            )
        }
        7 => call!(
            "InvokeService",
            c.invoke_service(req(pb::InvokeServiceRequest {
                id: r.text(),
                message: (r.below(4) != 0).then(|| common::InvokeRequest {
                    method: r.text(),
                    data: Some(prost_types::Any {
                        type_url: r.text(),
                        value: r.bytes(),
                    }),
                    content_type: r.text(),
                    http_extension: None,
                }),
            }))
        ),
        8 => {
            let keys = (0..r.below(4)).map(|_| r.text()).collect();
            call!(
                "GetConfiguration",
                c.get_configuration(req(pb::GetConfigurationRequest {
                    store_name: r.text(),
                    keys,
                    metadata: r.metadata(),
                }))
            )
        }
        9 => call!(
            "GetSecret",
            c.get_secret(req(pb::GetSecretRequest {
                store_name: r.text(),
                key: r.text(),
                metadata: r.metadata(),
            }))
        ),
        10 => call!(
            "GetBulkSecret",
            c.get_bulk_secret(req(pb::GetBulkSecretRequest {
                store_name: r.text(),
                metadata: r.metadata(),
            }))
        ),
        11 => call!(
            "TryLockAlpha1",
            c.try_lock_alpha1(req(pb::TryLockRequest {
                store_name: r.text(),
                resource_id: r.text(),
                lock_owner: r.text(),
                expiry_in_seconds: r.int(),
            }))
        ),
        12 => call!(
            "UnlockAlpha1",
            c.unlock_alpha1(req(pb::UnlockRequest {
                store_name: r.text(),
                resource_id: r.text(),
                lock_owner: r.text(),
            }))
        ),
        13 => call!(
            "SetMetadata",
            c.set_metadata(req(pb::SetMetadataRequest {
                key: r.text(),
                value: r.text(),
            }))
        ),
        14 => call!(
            "GetNextId",
            seq.get_next_id(req(weft_proto::sequencer::GetNextIdRequest {
                store_name: r.text(),
                key: r.text(),
                options: (r.below(2) == 0)
                    .then(|| weft_proto::sequencer::SequencerOptions { increment: r.int() }),
                metadata: r.metadata(),
            }))
        ),
        _ => call!(
            "InvokeBinding",
            c.invoke_binding(req(pb::InvokeBindingRequest {
                name: r.text(),
                data: r.bytes(),
                metadata: r.metadata(),
                operation: r.text(),
            }))
        ),
    }
}

/// The generator for a test: seeded from `WEFT_RANDOM_SEED` (to replay a
/// failure) or the clock, the seed printed.
fn seeded() -> (u64, Rng) {
    let seed = std::env::var("WEFT_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("WEFT_RANDOM_SEED={seed}");
    (seed, Rng(seed))
}

/// A failure of the connection rather than an answer of the runtime.
fn is_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
        && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_and_bytes_never_stop_the_runtime() {
    let (seed, mut r) = seeded();
    let reg = tempfile::tempdir().unwrap();
    let mut w = Weft::start(WeftOptions::new("random-inputs").env(
        "WEFT_LOCAL_REGISTRY_DIR",
        &reg.path().join("registry").to_string_lossy(),
    ))
    .await
    .expect("start");
    let channel = w.channel().await;
    let mut c =
        pb::dapr_client::DaprClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut seq = weft_proto::sequencer::sequencer_client::SequencerClient::new(channel);

    let cases = 1500;
    let mut by_code: std::collections::BTreeMap<(&str, String), u32> = Default::default();
    for i in 0..cases {
        match one_call(&mut c, &mut seq, &mut r).await {
            Ok((name, code)) => *by_code.entry((name, format!("{code:?}"))).or_default() += 1,
            Err(s) => panic!(
                "call {i} (seed {seed}) lost its connection: {s:?}\nweft:\n{}",
                w.logs()
            ),
        }
    }
    // Raw bytes on the gRPC and HTTP ports: each connection is refused or
    // closed, the runtime stays.
    for port in [w.grpc_port, w.http_port] {
        for _ in 0..50 {
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let junk = r.bytes();
            let _ = s.write_all(&junk).await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await;
        }
    }
    assert!(w.is_running(), "weft exited (seed {seed}):\n{}", w.logs());
    assert_eq!(http_status(w.http_port, "/v1.0/healthz").await, Some(204));
    c.get_metadata(pb::GetMetadataRequest {})
        .await
        .expect("still serving");
    assert!(
        !w.logs().contains("panicked"),
        "a panic (seed {seed}):\n{}",
        w.logs()
    );
    eprintln!("random inputs: {cases} calls, crashes: 0; answers by method and code:");
    for ((m, code), n) in by_code {
        eprintln!("  {m} {code}: {n}");
    }
}

/// A random request body for shared-memory method `id`, and whether it is
/// a well-typed request: for the most used methods usually a request with
/// random fields, otherwise (and sometimes for those too) random bytes.
fn shm_body(r: &mut Rng, id: u32) -> (Vec<u8>, bool) {
    use prost::Message;
    use weft_shm::method as m;
    if r.below(4) == 0 {
        return (r.bytes(), false);
    }
    let typed = match id {
        m::GET_STATE => pb::GetStateRequest {
            store_name: r.text(),
            key: r.text(),
            consistency: r.int(),
            metadata: r.metadata(),
        }
        .encode_to_vec(),
        m::SAVE_STATE => pb::SaveStateRequest {
            store_name: r.text(),
            states: (0..r.below(4)).map(|_| r.item()).collect(),
        }
        .encode_to_vec(),
        m::DELETE_STATE => pb::DeleteStateRequest {
            store_name: r.text(),
            key: r.text(),
            etag: (r.below(2) == 0).then(|| common::Etag { value: r.text() }),
            options: None,
            metadata: r.metadata(),
        }
        .encode_to_vec(),
        m::PUBLISH_EVENT => pb::PublishEventRequest {
            pubsub_name: r.text(),
            topic: r.text(),
            data: r.bytes(),
            data_content_type: r.text(),
            metadata: r.metadata(),
        }
        .encode_to_vec(),
        m::INVOKE_SERVICE => pb::InvokeServiceRequest {
            id: r.text(),
            message: (r.below(4) != 0).then(|| common::InvokeRequest {
                method: r.text(),
                data: Some(prost_types::Any {
                    type_url: r.text(),
                    value: r.bytes(),
                }),
                content_type: r.text(),
                http_extension: None,
            }),
        }
        .encode_to_vec(),
        m::TRY_LOCK_ALPHA1 => pb::TryLockRequest {
            store_name: r.text(),
            resource_id: r.text(),
            lock_owner: r.text(),
            expiry_in_seconds: r.int(),
        }
        .encode_to_vec(),
        m::WEFT_GET_NEXT_ID => weft_proto::sequencer::GetNextIdRequest {
            store_name: r.text(),
            key: r.text(),
            options: (r.below(2) == 0)
                .then(|| weft_proto::sequencer::SequencerOptions { increment: r.int() }),
            metadata: r.metadata(),
        }
        .encode_to_vec(),
        m::GET_METADATA | m::WEFT_ECHO => Vec::new(),
        _ => return (r.bytes(), false),
    };
    (typed, true)
}

/// The same over shared memory: random unary method ids (every one the
/// protocol defines but Shutdown, and unknown ids) with randomly filled
/// requests or random bytes. A well-typed request is always answered on
/// its session (a value or a status); bytes that do not decode as the
/// method's request, and unknown ids, are protocol errors that end only
/// that session with a GOODBYE naming the cause (docs/shm-protocol.md §10),
/// after which the app connects again. The runtime keeps serving both
/// transports throughout.
#[test]
fn random_shared_memory_calls_never_stop_the_runtime() {
    use weft_shm::method::{self as m, Kind};
    let (seed, mut r) = seeded();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("random.shm");
    let mut w = rt
        .block_on(Weft::start(
            WeftOptions::new("random-shm")
                .arg("--shm-socket")
                .arg(&socket.to_string_lossy())
                .env(
                    "WEFT_LOCAL_REGISTRY_DIR",
                    &dir.path().join("registry").to_string_lossy(),
                ),
        ))
        .expect("start");
    let methods: Vec<u32> = m::ALL
        .iter()
        .filter(|x| x.kind == Kind::Unary && x.id != m::SHUTDOWN)
        .map(|x| x.id)
        .collect();
    let mut opts = weft_shm::ClientOptions::new("random-shm");
    opts.reconnect = false;
    opts.call_timeout = Duration::from_secs(20);
    let connect = || weft_shm::Client::connect(&socket, opts.clone()).expect("shm session");
    let mut c = connect();
    let cases = 2000;
    let mut sessions_ended = 0;
    let mut by_code: std::collections::BTreeMap<(String, u32), u32> = Default::default();
    for i in 0..cases {
        let id = if r.below(20) == 0 {
            r.next() as u32
        } else {
            methods[r.below(methods.len() as u64) as usize]
        };
        let (body, typed) = shm_body(&mut r, id);
        let known = m::by_id(id).is_some();
        let code = match c.call(id, &body) {
            Ok(_) => 0,
            Err(s) => match c.last_goodbye().cloned() {
                None => s.code,
                Some(bye) => {
                    assert!(
                        !(typed && known),
                        "call {i}: a well-typed {id:#x} request ended the session (seed {seed}): {bye:?}\nweft:\n{}",
                        w.logs()
                    );
                    assert!(
                        matches!(bye.code, 3 | 12) && bye.message.contains("protocol error"),
                        "call {i}: a session ends with a protocol error naming the cause (seed {seed}): {bye:?}"
                    );
                    sessions_ended += 1;
                    c = connect();
                    1000 + bye.code
                }
            },
        };
        let name = m::by_id(id).map_or("unknown".to_string(), |x| x.name.to_string());
        *by_code.entry((name, code)).or_default() += 1;
    }
    // The session and the runtime still serve.
    c.call(m::WEFT_ECHO, b"still here")
        .expect("echo after the random calls");
    assert!(w.is_running(), "weft exited (seed {seed}):\n{}", w.logs());
    rt.block_on(async {
        assert_eq!(http_status(w.http_port, "/v1.0/healthz").await, Some(204));
    });
    assert!(
        !w.logs().contains("panicked"),
        "a panic (seed {seed}):\n{}",
        w.logs()
    );
    eprintln!("random shared-memory calls: {cases} calls, {sessions_ended} sessions ended by a protocol error (and reopened), crashes: 0; answers by method and code (1000 + code: the session's GOODBYE):");
    for ((name, code), n) in by_code {
        eprintln!("  {name} {code}: {n}");
    }
}
